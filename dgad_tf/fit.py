"""`python -m dgad_tf.fit`: train (or load) a robust teacher, distil a student, evaluate, report.

Usage:
    python -m dgad_tf.fit --config configs/quickstart.yaml
    python -m dgad_tf.fit --config configs/quickstart.yaml --set method.name=adaad \\
        --set output.dir=runs/quickstart_adaad
    python -m dgad_tf.fit --config configs/cifar10_resnet18_dgad.yaml --print-config
    python -m dgad_tf.fit --config configs/cifar10_resnet18_ard.yaml --print-lr

A bad config, data path or teacher exits with code 2 and a message naming the problem, before
anything is written. Re-running the same command after an interruption resumes after the last
completed epoch.
"""

from __future__ import annotations

import pathlib
import sys

from dgad_tf import cli
from dgad_tf.selection import SELECTION_RULES, is_leaky


def main(argv=None) -> int:
    parser = cli.parser("python -m dgad_tf.fit", __doc__)
    cli.add_config_arguments(parser, "YAML file of overrides (default: built-in defaults)")
    parser.add_argument(
        "--print-config", action="store_true", help="print the resolved config and exit"
    )
    parser.add_argument(
        "--print-lr",
        action="store_true",
        help="print the learning rate of every student epoch (counted from 1) and exit",
    )
    args = parser.parse_args(argv)

    from dgad_tf.config import ConfigError, load_config

    try:
        cfg = load_config(args.config, cli.config_overrides(args))
    except ConfigError as err:
        return cli.error(str(err))
    if args.print_lr or args.print_config:
        cli.start(args.verbose)  # the schedule is computed by TensorFlow; quiet its start-up
    if args.print_lr:
        for epoch, rate in enumerate(student_learning_rates(cfg), start=1):
            print(f"{epoch} {rate:.6g}")
        return 0
    if args.print_config:
        print("".join(f"# {line}\n" for line in run_summary(cfg)) + cfg.to_yaml(), end="")
        return 0

    from dgad_tf import rundir

    try:  # the input files, before TensorFlow loads (a mistyped path is refused at once)
        rundir.check_data_path(cfg)
        if cfg.method.loss.needs_teacher:
            rundir.check_teacher_file(cfg, pathlib.Path(cfg.output.dir))
    except rundir.RunError as err:
        return cli.error(str(err))
    cli.start(args.verbose)
    from dgad_tf.run import run

    refused, report = cli.run_work(run, cfg, command=cli.command_line("dgad_tf.fit", argv))
    if refused is not None:
        return refused
    student = report["student"]
    selection = student["selection"]
    summary = [
        f"student ({cfg.model.student}, {cfg.method.name}, {student['path']}, "
        f"train.select={selection['rule']}): clean {student['clean_accuracy']:.4f}"
    ]
    summary += [
        f"{name} {entry['robust_accuracy']:.4f}"
        for name, entry in student["attacks"].items()
        if name != "clean"
    ]
    if not selection["same_as_last"]:
        last = report["student_last"]
        summary.append(f"| last epoch: clean {last['clean_accuracy']:.4f}")
        summary += [
            f"{name} {entry['robust_accuracy']:.4f}"
            for name, entry in last["attacks"].items()
            if name != "clean"
        ]
    if "teacher" in report:
        teacher = report["teacher"]
        summary.append(f"| teacher: clean {teacher['clean_accuracy']:.4f}")
        summary += [
            f"{name} {entry['robust_accuracy']:.4f}"
            for name, entry in teacher["attacks"].items()
            if name != "clean"
        ]
    print(" ".join(summary))
    if is_leaky(selection["rule"]):
        print(f"note: the student checkpoint was {selection['note']}")
    print(f"run directory: {cfg.output.dir}")
    return 0


# Training-split sizes of the TFDS datasets the paper recipes use (for --print-config).
_TFDS_TRAIN_SIZES = {"cifar10": 50_000, "cifar100": 50_000}


def student_learning_rates(cfg) -> list[float]:
    """The learning rate of each student epoch (index 0 is epoch 1 of `log.csv`)."""
    from dgad_tf.optim import epoch_learning_rates

    o = cfg.optimizer
    return epoch_learning_rates(
        o.lr, epochs=cfg.train.epochs, schedule=o.schedule, milestones=o.milestones, gamma=o.gamma
    )


def describe_learning_rates(rates) -> str:
    """Runs of equal rates as "0.1 in epochs 1-100, 0.01 in epochs 101-200" (epochs from 1)."""
    runs = []
    for epoch, rate in enumerate(rates, start=1):
        if runs and f"{rate:.6g}" == runs[-1][0]:
            runs[-1][2] = epoch
        else:
            runs.append([f"{rate:.6g}", epoch, epoch])
    if len(runs) > 6:  # a cosine schedule: every epoch differs
        return f"{runs[0][0]} in epoch 1 ... {runs[-1][0]} in epoch {runs[-1][2]} (--print-lr)"
    return ", ".join(
        f"{rate} in epoch{'s' if first != last else ''} "
        + (f"{first}-{last}" if first != last else f"{first}")
        for rate, first, last in runs
    )


def run_summary(cfg) -> list[str]:
    """What a run of `cfg` trains on, which checkpoint it reports and with which attacks."""
    d, t = cfg.data, cfg.train
    size = _TFDS_TRAIN_SIZES.get(d.name) if d.source == "tfds" else None
    if d.train_limit is not None:
        images = f"the first {d.train_limit:,}"
    elif d.val_fraction == 0:
        images = f"all {size:,}" if size else "all"
    else:
        images = (
            f"{round(size * (1 - d.val_fraction)):,} of {size:,}"
            if size
            else f"{1 - d.val_fraction:.0%}"
        ) + f" (data.val_fraction {d.val_fraction} held out)"
    where = f"{d.name}'s train split" if d.source == "tfds" else f"the {d.source} training split"
    batches = "dropped" if t.drop_remainder else "kept"
    columns = {"pgd10": "pgd10 (the reference's PGD)", "cw_l2": "cw_l2 (the reference's CW)"}
    attacks = ", ".join(columns.get(a, a) for a in cfg.eval.attacks)
    o = cfg.optimizer
    warmup = f", warmed up over {o.warmup_epochs} epochs" if o.warmup_epochs else ""
    return [
        f"training images: {images} of {where}; last partial batch {batches}",
        f"checkpoint reported: train.select={t.select}: {SELECTION_RULES.get(t.select).summary}",
        f"final report: {attacks} on the first {cfg.eval.n:,} test images",
        f"learning rate (epochs counted from 1, as log.csv): "
        f"{describe_learning_rates(student_learning_rates(cfg))}{warmup}",
    ]


if __name__ == "__main__":
    sys.exit(main())

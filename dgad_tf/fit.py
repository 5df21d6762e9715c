"""`python -m dgad_tf.fit`: train (or load) a robust teacher, distil a student, evaluate, report.

Usage:
    python -m dgad_tf.fit --config configs/quickstart.yaml
    python -m dgad_tf.fit --config configs/quickstart.yaml --set method.name=adaad \\
        --set output.dir=runs/quickstart_adaad
    python -m dgad_tf.fit --config configs/cifar10_resnet18_dgad.yaml --print-config

A bad config, data path or teacher exits with code 2 and a message naming the problem, before
anything is written. Re-running the same command after an interruption resumes after the last
completed epoch.
"""

from __future__ import annotations

import shlex
import sys

from dgad_tf import cli


def main(argv=None) -> int:
    parser = cli.parser("python -m dgad_tf.fit", __doc__)
    cli.add_config_arguments(parser, "YAML file of overrides (default: built-in defaults)")
    parser.add_argument(
        "--print-config", action="store_true", help="print the resolved config and exit"
    )
    args = parser.parse_args(argv)

    from dgad_tf.config import ConfigError, load_config

    overrides = list(args.set) + (["output.quiet=true"] if args.quiet else [])
    try:
        cfg = load_config(args.config, overrides)
    except ConfigError as err:
        return cli.error(str(err))
    if args.print_config:
        print("".join(f"# {line}\n" for line in run_summary(cfg)) + cfg.to_yaml(), end="")
        return 0

    cli.start(args.verbose)
    from dgad_tf.run import RunError, run
    from dgad_tf.rundir import FolderBusy

    command = shlex.join(
        ["python", "-m", "dgad_tf.fit"] + list(sys.argv[1:] if argv is None else argv)
    )
    try:
        report = run(cfg, command=command)
    except (RunError, ConfigError, FolderBusy) as err:
        return cli.error(str(err))
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
    if selection["rule"] == "best_test":
        print(f"note: the student checkpoint was {selection['note']}")
    print(f"run directory: {cfg.output.dir}")
    return 0


# Training-split sizes of the TFDS datasets the paper recipes use (for --print-config).
_TFDS_TRAIN_SIZES = {"cifar10": 50_000, "cifar100": 50_000}
_SELECTION = {
    "last": "the last epoch's checkpoint",
    "best_val": "best val_robust_accuracy on the validation split",
    "best_test": "best test_robust_accuracy on the TEST split (the reference's rule; "
    "leaky, a reproduction mode)",
}


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
    return [
        f"training images: {images} of {where}; last partial batch {batches}",
        f"checkpoint reported: train.select={t.select}: {_SELECTION[t.select]}",
        f"final report: {attacks} on the first {cfg.eval.n:,} test images",
    ]


if __name__ == "__main__":
    sys.exit(main())

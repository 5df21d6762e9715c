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
    parser.add_argument("--config", help="YAML file of overrides (default: built-in defaults)")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override one value; repeatable")
    parser.add_argument("--print-config", action="store_true",
                        help="print the resolved config and exit")
    parser.add_argument("--quiet", action="store_true", help="log lines only, no progress bars")
    args = parser.parse_args(argv)

    from dgad_tf.config import ConfigError, load_config

    overrides = list(args.set) + (["output.quiet=true"] if args.quiet else [])
    try:
        cfg = load_config(args.config, overrides)
    except ConfigError as err:
        return cli.error(str(err))
    if args.print_config:
        print(cfg.to_yaml(), end="")
        return 0

    cli.start(args.verbose)
    from dgad_tf.rundir import FolderBusy
    from dgad_tf.run import RunError, run

    command = shlex.join(["python", "-m", "dgad_tf.fit"] + list(sys.argv[1:] if argv is None
                                                               else argv))
    try:
        report = run(cfg, command=command)
    except (RunError, ConfigError, FolderBusy) as err:
        return cli.error(str(err))
    student = report["student"]
    selection = student["selection"]
    summary = [f"student ({cfg.model.student}, {cfg.method.name}, {student['path']}, "
               f"train.select={selection['rule']}): clean {student['clean_accuracy']:.4f}"]
    summary += [f"{name} {entry['robust_accuracy']:.4f}"
                for name, entry in student["attacks"].items() if name != "clean"]
    if not selection["same_as_last"]:
        last = report["student_last"]
        summary.append(f"| last epoch: clean {last['clean_accuracy']:.4f}")
        summary += [f"{name} {entry['robust_accuracy']:.4f}"
                    for name, entry in last["attacks"].items() if name != "clean"]
    if "teacher" in report:
        teacher = report["teacher"]
        summary.append(f"| teacher: clean {teacher['clean_accuracy']:.4f}")
        summary += [f"{name} {entry['robust_accuracy']:.4f}"
                    for name, entry in teacher["attacks"].items() if name != "clean"]
    print(" ".join(summary))
    if selection["rule"] == "best_test":
        print(f"note: the student checkpoint was {selection['note']}")
    print(f"run directory: {cfg.output.dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

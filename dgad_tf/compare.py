"""`python -m dgad_tf.compare`: methods x seeds, one teacher, one protocol (`dgad_tf.study`).

Usage:
    python -m dgad_tf.compare --config configs/compare_quickstart.yaml
    python -m dgad_tf.compare --plan --config configs/compare_cifar10_resnet18_paper.yaml
    python -m dgad_tf.compare --config configs/compare_quickstart.yaml \\
        --set study.seeds=[0,1] --set output.dir=runs/compare_two_seeds

The study file is a config (the base of every cell) with a `study:` section: the methods (each
optionally with its own `set:` overrides), the seeds, the reference method and the evaluation
protocol (attacks, n, eps). `--set section.key=value` overrides the base, `--set study.key=value`
the study. One teacher serves every cell: loaded (once) from `model.teacher_path`, or trained once
in the study folder. Every cell is an ordinary `fit` run folder under `<output.dir>/cells/`,
evaluated with the protocol on the same first n test images. The study folder then holds
results.csv, summary.md, summary.json and two PNG figures (with matplotlib: pip install
"dgad_tf[plot]").

Re-running the same command resumes: finished cells are never retrained. Adding seeds or
methods to the study file grows the study: only the new cells train. A different study in the
same folder (other data, teacher, training or protocol), or a second writer, is refused. A bad
study file exits with code 2 naming the key, before anything is written.
"""

from __future__ import annotations

import sys

from dgad_tf import cli


def main(argv=None) -> int:
    parser = cli.parser("python -m dgad_tf.compare", __doc__)
    cli.add_config_arguments(parser, "study file: a config with a `study:` section")
    parser.add_argument(
        "--plan",
        action="store_true",
        help="print the cells, what they share and an estimated cost from a short timed probe "
        "on this machine; train nothing, write nothing",
    )
    args = parser.parse_args(argv)
    if not args.config:
        return cli.error("--config is required: a study file with a `study:` section")

    from dgad_tf import rundir
    from dgad_tf.config import ConfigError
    from dgad_tf.study import load_study

    try:
        study = load_study(args.config, cli.config_overrides(args))
        # The input files, before TensorFlow loads (a mistyped path is refused at once).
        rundir.check_data_path(study.base)
        # A plan times a freshly built teacher when the file is not there yet (and says so).
        if study.needs_teacher and not (args.plan and not study.teacher_path.exists()):
            rundir.check_teacher_file(study.base, study.folder)
    except (ConfigError, rundir.RunError) as err:
        return cli.error(str(err))

    cli.start(args.verbose)
    if args.plan:
        from dgad_tf.rundir import RunError
        from dgad_tf.study_plan import plan_text

        try:
            print(plan_text(study), end="")
        except RunError as err:
            return cli.error(str(err))
        return 0
    from dgad_tf.study import run_study
    from dgad_tf.study_report import SUMMARY_MD

    refused, result = cli.run_work(
        run_study, study, command=cli.command_line("dgad_tf.compare", argv)
    )
    if refused is not None:
        return refused
    print(
        f"\n{len(result.rows)} cells in {result.folder} ({result.cells_run} trained now, "
        f"{result.seconds:.0f} s)\n"
    )
    print((result.folder / SUMMARY_MD).read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`python -m dgad_tf.tune`: KerasTuner search over a config's `tune.space` (`dgad_tf.search`).

Usage:
    python -m dgad_tf.tune --config configs/tune_quickstart.yaml
    python -m dgad_tf.tune --config configs/tune_quickstart.yaml --tuner bayesian \\
        --max-trials 8 --epochs 5 --out runs/tune_quickstart_bo
    python -m dgad_tf.fit --config runs/tune_quickstart/best_config.yaml

The teacher is obtained once (loaded from `model.teacher_path`, or trained and cached in the
search directory). Trials are scored on the validation split carved from the training data.
Re-running the same command resumes: finished trials are kept, an interrupted one is rerun, and
`--max-trials` may be raised to continue a finished search. At the end a table of all trials is
printed and the best trial is written as `<out>/best_config.yaml`, a complete config for
`python -m dgad_tf.fit`. A bad config or search space exits with code 2 naming the key, before
anything is written.
"""

from __future__ import annotations

import sys

from dgad_tf import cli


def main(argv=None) -> int:
    parser = cli.parser("python -m dgad_tf.tune", __doc__)
    cli.add_config_arguments(parser, "YAML file of overrides with a `tune:` section")
    parser.add_argument("--tuner", help="random, bayesian or hyperband (tune.tuner)")
    parser.add_argument(
        "--max-trials", help="trials in all, finished ones included (tune.max_trials)"
    )
    parser.add_argument("--epochs", help="epochs per trial (tune.epochs)")
    parser.add_argument("--out", help="search directory (output.dir)")
    args = parser.parse_args(argv)

    from dgad_tf.config import ConfigError, load_config

    flags = (
        (args.tuner, "tune.tuner"),
        (args.max_trials, "tune.max_trials"),
        (args.epochs, "tune.epochs"),
        (args.out, "output.dir"),
    )
    overrides = cli.config_overrides(
        args, *(f"{key}={flag}" for flag, key in flags if flag is not None)
    )
    from dgad_tf import rundir

    try:
        cfg = load_config(args.config, overrides)
        rundir.check_data_path(cfg)  # before TensorFlow loads: a mistyped path is refused at once
    except (ConfigError, rundir.RunError) as err:
        return cli.error(str(err))

    cli.start(args.verbose)
    from dgad_tf import search

    try:
        refused, result = cli.run_work(search.run_search, cfg)
    except RuntimeError as err:  # KerasTuner gives up after consecutive failed trials
        print(f"error: the search stopped: {err}", file=sys.stderr)
        return 1
    if refused is not None:
        return refused
    print(
        f"\n{len(result.rows)} trials in {result.out_dir} ({result.trials_run} trained now, "
        f"{result.seconds:.0f} s); objective {result.tune.metric}, * = best:"
    )
    print(search.format_trials_table(result.rows, result.best_trial))
    print(f"best config: {result.best_config_path}")
    print(f"train it:    python -m dgad_tf.fit --config {result.best_config_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

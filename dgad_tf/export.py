"""python -m dgad_tf.export: export a trained student for TF Serving and TFLite.

Thin command line over `dgad_tf.serving.export_student`. Calibration images (for int8) come from
the training split and evaluation images from the test split of the run's `config.yaml` `data:`
section, unless `--representative-data` / `--eval-data` name `.npz` files (keys `x`, and `y` for
evaluation).

Example:
    python -m dgad_tf.export --model runs/quickstart --out export/digits_student
    python -m dgad_tf.export --model runs/cifar/student_last.keras --out export/cifar_student \\
        --formats saved_model,tflite_int8 --eval-n 500 --eps 8/255
"""

import argparse
import logging
import pathlib
import sys

from dgad_tf import cli
from dgad_tf.config import ConfigError, check_export_formats, parse_fraction


def parse_eps(text):
    """An ε given as a float or a fraction such as "8/255"."""
    try:
        value = parse_fraction(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(
            f"--eps must be a number or a/b; received {text!r}"
        ) from error
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"--eps must be in [0, 1]; received {text!r}")
    return value


def parse_formats(text):
    """The registered export formats named in a comma-separated `--formats` (looking them up
    loads TensorFlow, which the default, no `--formats`, does not)."""
    try:
        return check_export_formats(text.split(","), key="--formats")
    except ConfigError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _list_formats_in_help(parser, action):
    """Name the registered formats in `--help`, looking them up only when help is printed: the
    formats' writers load TensorFlow, which a refused command line should not wait for."""
    format_help = parser.format_help

    def with_formats():
        from dgad_tf.serving import EXPORT_FORMATS, default_formats

        action.help = "comma-separated subset of " + ", ".join(EXPORT_FORMATS.names())
        action.default = list(default_formats())  # what main takes for None, shown as default
        return format_help()

    parser.format_help = with_formats


def build_parser():
    parser = cli.parser("python -m dgad_tf.export", __doc__)
    parser.add_argument("--model", required=True, help="run directory or .keras file")
    parser.add_argument("--out", required=True, help="TF Serving base path, e.g. export/<name>")
    parser.add_argument(
        "--version",
        type=cli.int_at_least(1),
        default=None,
        help="version folder to write (must not exist); default: next free",
    )
    formats = parser.add_argument(
        "--formats",
        type=parse_formats,
        default=None,
        help="comma-separated export formats; default: the default ones",
    )
    _list_formats_in_help(parser, formats)
    parser.add_argument("--representative-data", default=None, help=".npz with x (calibration)")
    parser.add_argument("--eval-data", default=None, help=".npz with x and y (evaluation)")
    parser.add_argument(
        "--eval-n", type=cli.int_at_least(0), default=1000, help="test points evaluated; 0: none"
    )
    parser.add_argument(
        "--eps",
        type=parse_eps,
        default=None,
        help="L-inf radius, e.g. 8/255; default: the run's attack.eps, else 8/255",
    )
    parser.add_argument("--autoattack", action="store_true", help="also run AutoAttack (slow)")
    parser.add_argument("--seed", type=int, default=0)
    return parser


def _load_npz(path, keys):
    from dgad_tf.data import load_npz_arrays

    return load_npz_arrays(path, keys)


def main(argv=None):
    args = build_parser().parse_args(argv)
    from dgad_tf import rundir

    # Every check that needs no TensorFlow comes before it loads: a typo is refused at once.
    try:
        model_path = rundir.resolve_model_path(args.model)
        run_cfg = rundir.run_config(args.model)
        eps = args.eps if args.eps is not None else (run_cfg.attack.eps if run_cfg else 8 / 255)
        for flag, path in (
            ("--representative-data", args.representative_data),
            ("--eval-data", args.eval_data),
        ):
            if path is not None and not pathlib.Path(path).is_file():
                raise ValueError(f"{flag} {path}: no such .npz file")
        if run_cfg is not None:
            rundir.check_data_path(run_cfg)
        out = rundir.ensure_writable_folder(args.out, "--out")
        if args.version is not None and (out / str(args.version)).exists():
            raise ValueError(
                f"--version {args.version} already exists in {out}; choose another "
                "or leave --version out for the next free one"
            )
    except (ValueError, FileNotFoundError, ConfigError) as error:
        return cli.error(str(error))
    cli.start(args.verbose, fmt="%(levelname)s %(name)s: %(message)s")
    from dgad_tf import serving

    try:
        if args.formats is None:
            args.formats = list(serving.default_formats())
        inputs = _inputs(args, run_cfg)
    except (ValueError, FileNotFoundError, ConfigError) as error:
        return cli.error(str(error))
    logging.info("exporting %s with eps=%.6f for its robust accuracy", model_path, eps)
    representative_x, eval_arrays, class_names = inputs
    try:
        card = serving.export_student(
            str(model_path),
            args.out,
            version=args.version,
            formats=args.formats,
            representative_x=representative_x,
            eval_arrays=eval_arrays,
            eps=eps,
            class_names=class_names,
            autoattack=args.autoattack,
            seed=args.seed,
        )
    except serving.ExportVerificationError as error:
        print(f"export failed verification, nothing written: {error}", file=sys.stderr)
        return 1
    except (ValueError, rundir.FolderBusy, serving.ExportDiskFull) as error:
        return cli.error(str(error))
    print_summary(card, pathlib.Path(args.out) / str(card["version"]))
    return 0


def _inputs(args, run_cfg):
    """(calibration images, evaluation arrays, class names) from the flags or the run's data."""
    splits = None
    if run_cfg is not None and (
        args.representative_data is None or (args.eval_data is None and args.eval_n > 0)
    ):
        from dgad_tf.data import splits_from_config

        splits = splits_from_config(run_cfg.data)

    representative_x = None
    if args.representative_data is not None:
        (representative_x,) = _load_npz(args.representative_data, ["x"])
    elif splits is not None:
        representative_x = splits.train.x
    from dgad_tf.serving import EXPORT_FORMATS

    calibrated = [n for n in args.formats if EXPORT_FORMATS.get(n).needs_representative_data]
    if calibrated and representative_x is None:
        raise ValueError(
            f"{', '.join(calibrated)} needs calibration images: pass --representative-data or a "
            "run directory whose config.yaml names the data"
        )

    eval_arrays, class_names = None, None
    if args.eval_n > 0:
        if args.eval_data is not None:
            eval_arrays = _load_npz(args.eval_data, ["x", "y"])
        elif splits is not None:
            eval_arrays = (splits.test.x, splits.test.y)
            class_names = getattr(splits, "class_names", None)
        else:
            logging.warning("no evaluation data (no --eval-data, no config.yaml): no accuracies")
    if eval_arrays is not None:
        eval_arrays = (eval_arrays[0][: args.eval_n], eval_arrays[1][: args.eval_n])
    return representative_x, eval_arrays, class_names


def print_summary(card, version_dir):
    """Print one row per artifact: parity figure, clean and attacked accuracy."""
    evaluation = card.get("evaluation") or {}
    clean = evaluation.get("clean_accuracy") or {}
    attacked = {
        **(evaluation.get("robust_accuracy_pgd20") or {}),
        **(evaluation.get("transfer_accuracy_pgd20") or {}),
    }

    def fmt(value):
        return "-" if value is None else f"{value:.4f}"

    print(f"exported {version_dir}")
    print(f"{'artifact':<16}{'parity':>26}{'clean':>9}{'PGD-20':>9}")
    rows = [("keras", None)] + [(name, card["parity"].get(name)) for name in card["artifacts"]]
    for name, parity in rows:
        if parity is None:
            figure = "reference"
        elif "max_abs_diff_probabilities" in parity:
            figure = f"max|dp|={parity['max_abs_diff_probabilities']:.2e}"
        else:
            figure = f"top-1 agree={parity['top1_agreement']:.4f}"
        print(f"{name:<16}{figure:>26}{fmt(clean.get(name)):>9}{fmt(attacked.get(name)):>9}")
    if evaluation:
        print(
            f"n={evaluation['n']} eps={evaluation['eps']:.5f}; "
            "TFLite PGD-20 is transfer from the float model"
        )
        autoattack = evaluation.get("autoattack")
        if autoattack:
            print(f"AutoAttack: {autoattack}")


if __name__ == "__main__":
    sys.exit(main())

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

import numpy as np

from dgad_tf import serving
from dgad_tf.config import parse_fraction

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


def build_parser():
    parser = argparse.ArgumentParser(
        prog="python -m dgad_tf.export", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--model", required=True, help="run directory or .keras file")
    parser.add_argument("--out", required=True, help="TF Serving base path, e.g. export/<name>")
    parser.add_argument("--version", type=int, default=None, help="default: next free integer")
    parser.add_argument("--formats", default=",".join(serving.FORMATS), help="comma-separated")
    parser.add_argument("--representative-data", default=None, help=".npz with x (calibration)")
    parser.add_argument("--eval-data", default=None, help=".npz with x and y (evaluation)")
    parser.add_argument("--eval-n", type=int, default=1000, help="test points evaluated; 0: none")
    parser.add_argument("--eps", type=parse_eps, default=8 / 255, help="L-inf radius, e.g. 8/255")
    parser.add_argument("--autoattack", action="store_true", help="also run AutoAttack (slow)")
    parser.add_argument("--seed", type=int, default=0)
    return parser


def _load_npz(path, keys):
    with np.load(path) as data:
        missing = [k for k in keys if k not in data]
        if missing:
            raise SystemExit(f"error: {path} has no key(s) {missing}; it has {list(data.keys())}")
        return [data[k] for k in keys]


def _run_dir(model_arg):
    path = pathlib.Path(model_arg)
    return path if path.is_dir() else path.parent


def _load_splits(run_dir):
    config_path = run_dir / "config.yaml"
    if not config_path.is_file():
        return None
    from dgad_tf.config import load_config
    from dgad_tf.data import splits_from_config

    return splits_from_config(load_config(config_path).data)


def main(argv=None):
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    # TensorFlow's logger has its own handler; propagating as well would print every line twice.
    logging.getLogger("tensorflow").propagate = False
    if args.eval_n < 0:
        raise SystemExit(f"error: --eval-n must be >= 0; received {args.eval_n}")
    formats = [f.strip() for f in args.formats.split(",") if f.strip()]

    splits = None
    if args.representative_data is None or (args.eval_data is None and args.eval_n > 0):
        splits = _load_splits(_run_dir(args.model))

    representative_x = None
    if args.representative_data is not None:
        (representative_x,) = _load_npz(args.representative_data, ["x"])
    elif splits is not None:
        representative_x = splits.train.x
    if "tflite_int8" in formats and representative_x is None:
        raise SystemExit(
            "error: tflite_int8 needs calibration images: pass --representative-data or a run "
            "directory whose config.yaml names the data"
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

    try:
        card = serving.export_student(
            args.model,
            args.out,
            version=args.version,
            formats=formats,
            representative_x=representative_x,
            eval_arrays=eval_arrays,
            eps=args.eps,
            class_names=class_names,
            autoattack=args.autoattack,
            seed=args.seed,
        )
    except serving.ExportVerificationError as error:
        print(f"export failed verification, nothing written: {error}", file=sys.stderr)
        return 1
    print_summary(card, pathlib.Path(args.out) / str(card["version"]))
    return 0


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

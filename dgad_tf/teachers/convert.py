"""python -m dgad_tf.teachers.convert: a PyTorch CIFAR checkpoint to a Keras teacher (`.keras`).

The command line of `dgad_tf.teachers.conversion` (the library: reading the checkpoint, the
by-name copy into a `dgad_tf.models` network, its checks). It prints the model, the
normalisation it carries and where it came from, and the ignored tensors; a checkpoint that does
not match the architecture exits with code 2 and writes nothing. `python -m dgad_tf.teachers`
and the console script `dgad-convert-teacher` run the same `main`.

Example:
    python -m dgad_tf.teachers.convert --arch wrn-34-10 --num-classes 10 \
        [--normalize-mean 0.4914,0.4822,0.4465 --normalize-std 0.2471,0.2435,0.2616] IN.pt OUT.keras
"""

import argparse
import sys

import numpy as np

# The library's names stay importable from here, where they were before the command line had a
# module of its own (`from dgad_tf.teachers.convert import convert_state_dict`).
from dgad_tf.teachers.conversion import (  # noqa: F401
    ConversionError,
    convert_checkpoint,
    convert_checkpoint_with_report,
    convert_state_dict,
    load_state_dict,
)


def _floats(text):
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated numbers; received {text!r}"
        ) from None


def _ints(text):
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated ints; received {text!r}"
        ) from None


def build_parser():
    """Command-line parser of `python -m dgad_tf.teachers.convert`."""
    from dgad_tf import cli

    parser = cli.parser(
        "python -m dgad_tf.teachers.convert",
        "Convert a PyTorch CIFAR checkpoint (TRADES/RobustBench/kuangliu layout) to .keras.",
    )
    parser.add_argument(
        "--arch", required=True, help="wrn-D-W, resnet-18, resnet-34, preact-resnet-18, mobilenetv2"
    )
    parser.add_argument(
        "--num-classes", type=int, required=True, help="classes of the checkpoint's classifier"
    )
    parser.add_argument(
        "--normalize-mean",
        type=_floats,
        default=None,
        help="per-channel mean, e.g. 0.4914,0.4822,0.4465",
    )
    parser.add_argument(
        "--normalize-std",
        type=_floats,
        default=None,
        help="per-channel std, e.g. 0.2471,0.2435,0.2616",
    )
    parser.add_argument("--input-shape", type=_ints, default=(32, 32, 3), help="H,W,C")
    parser.add_argument("input", help="checkpoint (.pt, .pth, .safetensors)")
    parser.add_argument("output", help="output .keras file")
    return parser


def main(argv=None):
    """Run the converter CLI; returns the process exit code (2 when the conversion is refused)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    from dgad_tf import cli

    cli.start(args.verbose, fmt="%(message)s")
    if (args.normalize_mean is None) != (args.normalize_std is None):
        parser.error("--normalize-mean and --normalize-std must be given together")
    normalize = None if args.normalize_mean is None else (args.normalize_mean, args.normalize_std)
    try:
        model, report = convert_checkpoint_with_report(
            args.input,
            args.arch,
            args.num_classes,
            args.output,
            normalize,
            input_shape=args.input_shape,
        )
    except (ConversionError, ValueError, FileNotFoundError, ImportError) as err:
        print(f"error: {err}", file=sys.stderr)
        print("nothing written", file=sys.stderr)
        return 2
    params = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    print(f"model           {model.name} ({params:,} trainable parameters)")
    if report["normalize"] is None:
        print("normalisation   none (the model expects the checkpoint's raw [0, 1] inputs)")
    else:
        mean, std = report["normalize"]
        mean, std = np.round(mean, 6).tolist(), np.round(std, 6).tolist()
        print(f"normalisation   mean={mean} std={std} ({report['normalize_source']})")
    print(f"ignored tensors {len(report['ignored'])} (num_batches_tracked, sub_block1.*)")
    print(f"written         {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

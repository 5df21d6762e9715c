"""`python -m dgad_tf.evaluate`: clean and robust accuracy of a model, as a table and a JSON report.

`--model` is a run folder, a `.keras` file or a SavedModel directory, whose `serving_default`
signature is called (another with `--signature NAME`); `--input-scale 255` tells that the model
or signature takes 0-255 pixels, as the uint8 `serving_default` of dgad_tf's exports does (their
`logits` signature takes [0, 1]). A signature that takes uint8 pixels passes no gradient, so only
`clean` runs on it.

Attacks (L-inf, the model in inference mode, only clean-correct points attacked; each is
described in the report and in `dgad_tf.robustness`): `clean`, `fgsm`, `pgd<K>` (e.g. `pgd20`),
`cw_inf`, `cw_l2`, `autoattack` (standard: APGD-CE, APGD-T, FAB-T, Square), `autoattack_custom`
(APGD-CE, APGD-T). AutoAttack's sanity checks run first and warn about probability outputs and a
non-deterministic model. `--n` takes the first n images of the split in file order, so other
tools can attack exactly the same points.

The command loads TensorFlow only once its arguments are checked; the evaluation itself is
`dgad_tf.robustness.evaluate_robustness` (`dgad_tf.evaluate_robustness`).

Examples:
    python -m dgad_tf.evaluate --model runs/quickstart --attacks clean,fgsm,pgd20,cw_inf
    python -m dgad_tf.evaluate --model export/q/1 --data digits --signature logits
    python -m dgad_tf.evaluate --model export/q/1 --data digits --input-scale 255 --attacks clean
"""

from __future__ import annotations

import hashlib
import json
import logging
import pathlib
import sys
import zipfile

import numpy as np

from dgad_tf import cli, rundir
from dgad_tf import config as config_lib
from dgad_tf.config import ConfigError, parse_fraction

# TensorFlow loads only inside `main`, after `cli.start` has silenced its start-up (and after the
# arguments are checked): dgad_tf.data, .logits, .model_checks, .models, .precision and .robustness
# import it.

log = logging.getLogger(__name__)


def check_attack_names(names) -> list[str]:
    """Validate attack names; raises ValueError (a `ConfigError`) naming an unknown one."""
    return config_lib.check_attack_names(names, key="attacks")


def load_eval_arrays(data: str | None, model_path: pathlib.Path, split: str, n: int | None):
    """Images and labels for evaluation from a config file, a run's config, an npz or 'digits'.

    An `.npz` file with keys `x`, `y` is one split (used whatever `split` says); one with
    `x_train`, `y_train`, `x_test`, `y_test`, or a folder of `train*.npz` + `test.npz`, is a
    dataset whose `split` is taken.
    """
    from dgad_tf.data import load_npz_arrays, load_splits, splits_from_config

    if split not in ("train", "val", "test"):
        raise ValueError(f"`--split` must be train, val or test; received {split!r}")
    if data is None:
        run_config = model_path.parent / "config.yaml"
        if not run_config.is_file():
            raise ValueError("--data is required when the model is not inside a run directory")
        data = str(run_config)
    if data.endswith((".yaml", ".yml")):
        splits = splits_from_config(config_lib.load_config(data).data)
    elif data == "digits":
        splits = load_splits("digits")
    elif data.endswith(".npz") and pathlib.Path(data).is_file() and _has_keys(data, ("x", "y")):
        x, y = load_npz_arrays(data, ("x", "y"))
        return (x, y) if n is None else (x[:n], y[:n])
    else:
        splits = load_splits("npz", path=data)
    arrays = getattr(splits, split)
    x, y = arrays.x, arrays.y
    if n is not None:
        x, y = x[:n], y[:n]
    return x, y


def check_data_argument(data: str | None, model_path: pathlib.Path) -> None:
    """`--data` (or the run's own config) names data that is there; needs no TensorFlow.

    Raises:
        ValueError: naming `--data` or the config's `data.path`.
    """
    if data is None:
        data = str(model_path.parent / "config.yaml")
        if not pathlib.Path(data).is_file():
            raise ValueError("--data is required when the model is not inside a run directory")
    if data == "digits":
        return
    if not pathlib.Path(data).exists():
        raise ValueError(
            f"--data {data} does not exist; give a config YAML, an npz file or folder, or 'digits'"
        )
    if data.endswith((".yaml", ".yml")):
        rundir.check_data_path(config_lib.load_config(data))


def _has_keys(path, keys) -> bool:
    try:
        with np.load(path, allow_pickle=False) as data:
            return set(keys) <= set(data.files)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile):
        return False  # the loader names the problem


def model_sha256(path) -> str:
    """Hex SHA-256 of a `.keras` file, or of a SavedModel directory's files (names and bytes)."""
    path = pathlib.Path(path)
    if not path.is_dir():
        return rundir.sha256_file(path)
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(file.relative_to(path).as_posix().encode() + b"\0")
        digest.update(rundir.sha256_file(file).encode())
    return digest.hexdigest()


def main(argv=None) -> int:
    parser = cli.parser("python -m dgad_tf.evaluate", __doc__)
    parser.add_argument(
        "--model", required=True, help="run directory, .keras file or SavedModel directory"
    )
    parser.add_argument(
        "--signature",
        default=None,
        help="the SavedModel signature to evaluate (default: serving_default)",
    )
    parser.add_argument(
        "--input-scale",
        type=float,
        default=1.0,
        help="the pixel scale the model takes: 1 for [0, 1], 255 for 0-255 (uint8 signatures)",
    )
    parser.add_argument(
        "--data",
        help="config YAML; npz file (keys x, y; or x_train, y_train, "
        "x_test, y_test) or npz folder (train*.npz, test.npz); or 'digits'. "
        "Defaults to the run's own config",
    )
    parser.add_argument("--split", default="test", choices=("train", "val", "test"))
    parser.add_argument(
        "--n",
        type=cli.int_at_least(1),
        default=None,
        help="first n images of the split (default: all)",
    )
    parser.add_argument("--attacks", default="clean,fgsm,pgd20,cw_inf")
    parser.add_argument(
        "--eps",
        default=None,
        help="L-inf radius, e.g. 8/255 (default: the run's attack.eps when the "
        "model is in a run folder, else 8/255)",
    )
    parser.add_argument("--batch-size", type=cli.int_at_least(1), default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--restarts", type=cli.int_at_least(1), default=1, help="PGD restarts")
    parser.add_argument(
        "--precision",
        default="float32",
        choices=("float32", "mixed_bfloat16", "mixed_float16"),
        help="run a Keras model under this dtype policy (attacks stay float32)",
    )
    parser.add_argument("--out", help="write the JSON report here (checked before the attacks)")
    args = parser.parse_args(argv)

    # Every check that needs no TensorFlow comes before it loads: a typo is refused at once.
    try:
        names = check_attack_names(args.attacks.split(","))
        if not args.input_scale > 0:
            raise ValueError(f"`--input-scale` must be > 0; received {args.input_scale:g}")
        eps = parse_fraction(args.eps) if args.eps is not None else None
        if eps is not None and not 0.0 <= eps <= 1.0:
            raise ValueError(f"`--eps` must be in [0, 1]; received --eps={args.eps}")
        saved_model = rundir.is_saved_model_dir(args.model)
        model_path = (
            pathlib.Path(args.model) if saved_model else rundir.keras_model_path(args.model)
        )
        if saved_model and args.precision != "float32":
            raise ValueError(
                "--precision applies to Keras models; a SavedModel runs in the dtypes it was "
                "saved with"
            )
        run_cfg = None if saved_model else rundir.run_config(model_path)
        if eps is None:
            eps = run_cfg.attack.eps if run_cfg is not None else 8 / 255
        if args.out:
            if pathlib.Path(args.out).is_dir():
                raise ValueError(f"--out {args.out} is a folder; give a file name")
            rundir.ensure_writable_folder(pathlib.Path(args.out).resolve().parent, "--out's folder")
        check_data_argument(args.data, model_path)
    except (ValueError, FileNotFoundError, ConfigError) as err:
        return cli.error(str(err))
    cli.start(args.verbose, fmt="%(levelname)s %(name)s: %(message)s")
    from dgad_tf import logits, model_checks, robustness

    try:
        x, y = load_eval_arrays(args.data, model_path, args.split, args.n)
        if saved_model:
            model = model_path
        else:
            from dgad_tf.models import load_model
            from dgad_tf.precision import with_policy

            model = with_policy(load_model(model_path), args.precision)
        model_fn = logits.logits_function(
            model, input_scale=args.input_scale, signature=args.signature
        )
        model_checks.require_gradients(model_fn, [name for name in names if name != "clean"])
        x, y, _ = model_checks.check_inputs(model_fn, x, y)
    except (ValueError, FileNotFoundError, ConfigError) as err:
        return cli.error(str(err))

    source = (
        "--eps"
        if args.eps is not None
        else ("the run's attack.eps" if run_cfg is not None else "the default")
    )
    log.info(
        "attacking %d images of %s at eps=%.6f (%s)", len(x), model_fn.description, eps, source
    )
    report = robustness.evaluate_robustness(
        model_fn,
        x,
        y,
        attacks=names,
        eps=eps,
        batch_size=args.batch_size,
        seed=args.seed,
        pgd_restarts=args.restarts,
    )
    report["model"] = str(model_path)
    report["model_description"] = model_fn.description
    report["model_sha256"] = model_sha256(model_path)
    report["input_scale"] = args.input_scale
    report["split"] = args.split
    report["precision"] = args.precision
    report["command"] = " ".join(["python -m dgad_tf.evaluate"] + list(argv or sys.argv[1:]))
    print(robustness.format_report(report))
    if args.out:
        rundir.atomic_write_text(args.out, json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

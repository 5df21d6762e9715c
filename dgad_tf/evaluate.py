"""Robustness evaluation: `python -m dgad_tf.evaluate` and the library call `fit` uses.

Attacks by name (L-inf, inputs in [0,1], the model in inference mode):

* `clean` — no attack.
* `fgsm` — one signed-gradient step of size eps, no random start (as the reference).
* `pgd<K>` (e.g. `pgd20`) — K steps of PGD on cross-entropy, uniform start, step eps/4.
* `cw_inf` — 30 PGD steps on the Carlini–Wagner margin (what most distillation papers call "CW").
* `cw_l2` — Carlini–Wagner L2 as the DGAD reference evaluates it (c=0.1, confidence 0.01,
  1000 iterations, lr 0.01, one binary-search step). Not an L-inf attack: its ε is unbounded.
* `autoattack` — AutoAttack "standard" (APGD-CE, APGD-T, FAB-T, Square); `autoattack_custom` —
  APGD-CE + APGD-T, for development.

Before attacking, AutoAttack's sanity checks warn about outputs that look like probabilities
rather than logits, and about a model whose output changes between identical calls (randomness,
training-mode batch-norm). Only points the model classifies correctly are attacked (a wrong
point is already non-robust).
`--n` takes the first n images of the split in file order, so other tools can attack exactly the
same points.

Example:
    python -m dgad_tf.evaluate --model runs/quickstart --attacks clean,fgsm,pgd20,cw_inf
"""

from __future__ import annotations

import json
import logging
import pathlib
import sys
import time
import zipfile

import numpy as np

log = logging.getLogger(__name__)

ATTACK_DESCRIPTIONS = {
    "clean": "no attack",
    "fgsm": "FGSM, L-inf, no random start",
    "pgd": "PGD-{k}, L-inf, cross-entropy, uniform start, step eps/4, {r} restart(s)",
    "cw_inf": "CW-inf: 30-step L-inf PGD on the Carlini-Wagner margin loss, step eps/4",
    "cw_l2": "CW-L2 (c=0.1, confidence 0.01, 1000 iterations, lr 0.01; L2, eps not applied)",
    "autoattack": "AutoAttack standard: APGD-CE, APGD-T, FAB-T, Square (worst case per point)",
    "autoattack_custom": "AutoAttack custom: APGD-CE, APGD-T (worst case per point)",
}


def check_attack_names(names) -> list[str]:
    """Validate attack names; raises ValueError (a `ConfigError`) naming an unknown one."""
    from dgad_tf.config import check_attack_names as check

    return check(names, key="attacks")


def at_chance_level(accuracy: float, num_classes: int, n: int) -> bool:
    """Whether `accuracy` on `n` images is no better than guessing among `num_classes`.

    "No better" is within three binomial standard deviations above 1/C, so a model that has
    learned anything clears it on a few hundred images while a constant or label-permuted one
    does not.

    Example:
        >>> at_chance_level(0.11, 10, 1000), at_chance_level(0.5, 10, 1000)
        (True, False)
    """
    return accuracy <= chance_threshold(num_classes, n)


def chance_threshold(num_classes: int, n: int) -> float:
    """1/C plus three binomial standard deviations of an accuracy on `n` images."""
    chance = 1.0 / num_classes
    return chance + 3.0 * (chance * (1.0 - chance) / max(n, 1)) ** 0.5


def _batched_attack(attack, x, y, batch_size):
    import tensorflow as tf

    compiled = tf.function(attack, reduce_retracing=True)
    out = []
    for start in range(0, len(x), batch_size):
        out.append(
            compiled(
                tf.constant(x[start : start + batch_size]),
                tf.constant(y[start : start + batch_size]),
            ).numpy()
        )
    return np.concatenate(out) if out else x.copy()


class Predictor:
    """Batched argmax of a model function, traced for a full and then any batch size."""

    def __init__(self, model_fn, batch_size):
        import tensorflow as tf

        # reduce_retracing: one trace with an unknown batch size serves every last, short batch.
        self._fn = tf.function(lambda xb: tf.argmax(model_fn(xb), -1), reduce_retracing=True)
        self.batch_size = batch_size

    def __call__(self, x) -> np.ndarray:
        preds = [
            self._fn(x[s : s + self.batch_size]).numpy() for s in range(0, len(x), self.batch_size)
        ]
        return np.concatenate(preds).astype(np.int64) if preds else np.zeros([0], np.int64)


def attack_description(name: str, pgd_restarts: int = 1) -> str:
    """The one-line description of a batched attack (`fgsm`, `pgd<K>`, `cw_inf`, `cw_l2`)."""
    if name.startswith("pgd"):
        return ATTACK_DESCRIPTIONS["pgd"].format(k=int(name[3:]), r=pgd_restarts)
    return ATTACK_DESCRIPTIONS[name]


def _attack_fn(name, model_fn, eps, seed, pgd_restarts):
    """`fn(xb, yb) -> adversarial xb` for the attack `name`."""
    import importlib

    # import_module, not `from dgad_tf import attacks`: it returns what sys.modules holds.
    attack_lib = importlib.import_module("dgad_tf.attacks")
    if name == "fgsm":
        return lambda xb, yb: attack_lib.fgsm(model_fn, xb, yb, eps=eps)
    if name == "cw_inf":
        return lambda xb, yb: attack_lib.cw_inf(model_fn, xb, yb, eps=eps, seed=seed)
    if name == "cw_l2":
        return lambda xb, yb: attack_lib.cw_l2(model_fn, xb, yb)
    if name.startswith("pgd") and name[3:].isdigit():
        k = int(name[3:])
        return lambda xb, yb: attack_lib.pgd_ce(
            model_fn, xb, yb, eps=eps, steps=k, restarts=pgd_restarts, seed=seed
        )
    raise ValueError(f"`attack` must be fgsm, pgd<K>, cw_inf or cw_l2; received {name!r}")


def adversarial_images(
    model_fn, x, y, attack="pgd20", *, eps=8 / 255, batch_size=256, seed=0, pgd_restarts=1
) -> np.ndarray:
    """Adversarial versions of every image in `x`, attacked batch by batch.

    This is the attack path `evaluate_model` scores; `dgad_tf.serving` uses it to attack the
    float Keras model once and score every exported artifact on the same images.

    Args:
        model_fn: callable mapping float [0,1] images to logits (in inference mode).
        x: float32 images in [0,1], [N,H,W,C].
        y: integer labels [N].
        attack: "fgsm", "pgd<K>", "cw_inf" or "cw_l2". Defaults to "pgd20".
        eps: L-inf radius. Defaults to 8/255.
        batch_size: attack batch size. Defaults to 256.
        seed: seed of the random starts. Defaults to 0.
        pgd_restarts: restarts of the PGD attacks. Defaults to 1.

    Returns:
        float32 array shaped like `x`.
    """
    fn = _attack_fn(attack, model_fn, eps, seed, pgd_restarts)
    return _batched_attack(fn, x, np.asarray(y), batch_size).astype(np.float32, copy=False)


def evaluate_model(
    model, x, y, *, attacks=("clean", "pgd20"), eps=8 / 255, batch_size=256, seed=0, pgd_restarts=1
) -> dict:
    """Clean and robust accuracy of `model` on (x, y) under each named attack.

    Args:
        model: Keras model or callable mapping float [0,1] images to logits.
        x: images, uint8 0..255 or float in [0,1], [N,H,W,C].
        y: integer labels [N].
        attacks: attack names (see the module docstring). Defaults to ("clean", "pgd20").
        eps: L-inf radius. Defaults to 8/255.
        batch_size: attack batch size. Defaults to 256.
        seed: seed of the random starts. Defaults to 0.
        pgd_restarts: restarts of the PGD attacks. Defaults to 1.

    Returns:
        dict with n, eps, clean_accuracy and, per attack, robust_accuracy, seconds and a
        description; AutoAttack entries add their per-component figures.
    """
    from dgad_tf.data import to_float

    names = check_attack_names(attacks)
    if not 0.0 <= eps <= 1.0:
        raise ValueError(f"`eps` must be in [0, 1]; received eps={eps}")
    if batch_size < 1:
        raise ValueError(f"`batch_size` must be >= 1; received batch_size={batch_size}")
    x = to_float(x) if x.dtype == np.uint8 else np.asarray(x, np.float32)
    y = np.asarray(y).astype(np.int64).reshape(-1)
    if len(x) != len(y):
        raise ValueError(f"{len(x)} images but {len(y)} labels")
    model_fn = (
        (lambda xb: model(xb, training=False)) if hasattr(model, "trainable_variables") else model
    )

    if len(x) and not any(name.startswith("autoattack") for name in names):
        # AutoAttack runs these checks itself; every other evaluation gets them here.
        from dgad_tf.autoattack import check_model_outputs

        check_model_outputs(model_fn, x[:batch_size], y[:batch_size])
    predict = Predictor(model_fn, batch_size)
    start = time.perf_counter()
    clean_correct = predict(x) == y
    report = {
        "n": int(len(x)),
        "eps": float(eps),
        "seed": int(seed),
        "clean_accuracy": float(clean_correct.mean()) if len(x) else 0.0,
        "attacks": {},
    }
    clean_seconds = time.perf_counter() - start
    idx = np.flatnonzero(clean_correct)
    xc, yc = x[idx], y[idx]

    for name in names:
        start = time.perf_counter()
        if name == "clean":
            report["attacks"]["clean"] = {
                "robust_accuracy": report["clean_accuracy"],
                "seconds": clean_seconds,
                "description": ATTACK_DESCRIPTIONS["clean"],
            }
            continue
        if name.startswith("autoattack"):
            from dgad_tf.autoattack import run_autoattack

            version = "custom" if name.endswith("custom") else "standard"
            result = run_autoattack(
                model_fn, x, y, eps=eps, version=version, batch_size=batch_size, seed=seed
            )
            report["attacks"][name] = {
                "robust_accuracy": float(result["robust_accuracy"]),
                "seconds": time.perf_counter() - start,
                "description": ATTACK_DESCRIPTIONS[name],
                "per_attack": result.get("per_attack", {}),
            }
            continue
        description = attack_description(name, pgd_restarts)
        robust = np.zeros(len(x), bool)
        if len(xc):
            x_adv = adversarial_images(
                model_fn,
                xc,
                yc,
                name,
                eps=eps,
                batch_size=batch_size,
                seed=seed,
                pgd_restarts=pgd_restarts,
            )
            robust[idx] = predict(x_adv) == yc
        report["attacks"][name] = {
            "robust_accuracy": float(robust.mean()) if len(x) else 0.0,
            "seconds": time.perf_counter() - start,
            "description": description,
        }
    return report


def format_report(report: dict) -> str:
    """The report as an aligned text table."""
    lines = [
        f"n={report['n']}  eps={report['eps']:.5f}  clean={report['clean_accuracy']:.4f}",
        f"{'attack':<20} {'accuracy':>9} {'seconds':>9}  description",
    ]
    for name, entry in report["attacks"].items():
        lines.append(
            f"{name:<20} {entry['robust_accuracy']:>9.4f} {entry['seconds']:>9.1f}  "
            f"{entry['description']}"
        )
    return "\n".join(lines)


def load_eval_arrays(data: str | None, model_path: pathlib.Path, split: str, n: int | None):
    """Images and labels for evaluation from a config file, a run's config, an npz or 'digits'.

    An `.npz` file with keys `x`, `y` is one split (used whatever `split` says); one with
    `x_train`, `y_train`, `x_test`, `y_test`, or a folder of `train*.npz` + `test.npz`, is a
    dataset whose `split` is taken.
    """
    from dgad_tf.config import load_config
    from dgad_tf.data import load_npz_arrays, load_splits, splits_from_config

    if split not in ("train", "val", "test"):
        raise ValueError(f"`--split` must be train, val or test; received {split!r}")
    if data is None:
        run_config = model_path.parent / "config.yaml"
        if not run_config.is_file():
            raise ValueError("--data is required when the model is not inside a run directory")
        data = str(run_config)
    if data.endswith((".yaml", ".yml")):
        splits = splits_from_config(load_config(data).data)
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


def _has_keys(path, keys) -> bool:
    try:
        with np.load(path, allow_pickle=False) as data:
            return set(keys) <= set(data.files)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile):
        return False  # the loader names the problem


def main(argv=None) -> int:
    from dgad_tf import cli

    parser = cli.parser("python -m dgad_tf.evaluate", __doc__)
    parser.add_argument("--model", required=True, help="run directory or .keras file")
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
        help="run the model under this dtype policy (attacks stay float32)",
    )
    parser.add_argument("--out", help="write the JSON report here (checked before the attacks)")
    args = parser.parse_args(argv)

    from dgad_tf.config import ConfigError, parse_fraction

    try:
        names = check_attack_names(args.attacks.split(","))
    except ConfigError as err:
        return cli.error(str(err))
    cli.start(args.verbose, fmt="%(levelname)s %(name)s: %(message)s")
    from dgad_tf import rundir
    from dgad_tf.rundir import resolve_model_path, sha256_file

    try:
        model_path = resolve_model_path(args.model)
        run_cfg = rundir.run_config(model_path)
        if args.eps is not None:
            eps = parse_fraction(args.eps)
        else:
            eps = run_cfg.attack.eps if run_cfg is not None else 8 / 255
        if not 0.0 <= eps <= 1.0:
            raise ValueError(f"`--eps` must be in [0, 1]; received --eps={args.eps}")
        if args.out:
            if pathlib.Path(args.out).is_dir():
                raise ValueError(f"--out {args.out} is a folder; give a file name")
            rundir.ensure_writable_folder(pathlib.Path(args.out).resolve().parent, "--out's folder")
        x, y = load_eval_arrays(args.data, model_path, args.split, args.n)
        from dgad_tf.models import load_model
        from dgad_tf.precision import with_policy

        model = with_policy(load_model(model_path), args.precision)
        if tuple(model.input_shape[1:]) != tuple(x.shape[1:]):
            raise ValueError(
                f"the model takes images of shape {tuple(model.input_shape[1:])} "
                f"but the data has {tuple(x.shape[1:])}"
            )
        if y.max(initial=0) >= model.output_shape[-1]:
            raise ValueError(
                f"the data has label {int(y.max())} but the model has only "
                f"{model.output_shape[-1]} classes"
            )
    except (ValueError, FileNotFoundError, ConfigError) as err:
        return cli.error(str(err))

    source = (
        "--eps"
        if args.eps is not None
        else ("the run's attack.eps" if run_cfg is not None else "the default")
    )
    log.info("attacking %d images of %s at eps=%.6f (%s)", len(x), model_path, eps, source)
    report = evaluate_model(
        model,
        x,
        y,
        attacks=names,
        eps=eps,
        batch_size=args.batch_size,
        seed=args.seed,
        pgd_restarts=args.restarts,
    )
    report["model"] = str(model_path)
    report["model_sha256"] = sha256_file(model_path)
    report["split"] = args.split
    report["precision"] = args.precision
    report["command"] = " ".join(["python -m dgad_tf.evaluate"] + list(argv or sys.argv[1:]))
    print(format_report(report))
    if args.out:
        rundir.atomic_write_text(args.out, json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

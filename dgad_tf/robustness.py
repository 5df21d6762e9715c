"""Robustness evaluation of any model: the library behind `python -m dgad_tf.evaluate` and `fit`.

`evaluate_robustness(model, x, y, *, eps=8/255, attacks=("clean", "pgd20"), batch_size=256,
seed=0)` scores a Keras model, a SavedModel directory or a callable returning logits (the
argument convention of `dgad_tf.logits`) under named L-inf attacks, with the model in inference
mode and images uint8 0..255 or float [0, 1]:

* `clean` — no attack.
* `fgsm` — one signed-gradient step of size eps, no random start (as the reference).
* `pgd<K>` (e.g. `pgd20`) — K steps of PGD on cross-entropy, uniform start, step eps/4.
* `cw_inf` — 30 PGD steps on the Carlini–Wagner margin (what most distillation papers call "CW").
* `cw_l2` — Carlini–Wagner L2 as the DGAD reference evaluates it (c=0.1, confidence 0.01,
  1000 iterations, lr 0.01, one binary-search step). Not an L-inf attack: its ε is unbounded.
* `autoattack` — AutoAttack "standard" (APGD-CE, APGD-T, FAB-T, Square); `autoattack_custom` —
  APGD-CE + APGD-T, for development.

The names are `dgad_tf.eval_attacks`'s table; an attack of your own is one
`register_eval_attack` call, and then every command and config takes its name.

Before attacking, AutoAttack's sanity checks warn about outputs that look like probabilities
rather than logits, and about a model whose output changes between identical calls (randomness,
training-mode batch-norm). Only points the model classifies correctly are attacked (a wrong
point is already non-robust).

Example:
    >>> import dgad_tf
    >>> report = dgad_tf.evaluate_robustness(model, x_test, y_test, eps=8 / 255,
    ...                                      attacks=["clean", "pgd20", "autoattack"])
    >>> report["attacks"]["autoattack"]["robust_accuracy"]
"""

import time

import numpy as np
import tensorflow as tf

from dgad_tf import eval_attacks
from dgad_tf.autoattack._common import check_eps, check_positive_int
from dgad_tf.config import check_attack_names
from dgad_tf.eval_attacks import AttackSettings
from dgad_tf.logits import logits_function
from dgad_tf.model_checks import check_inputs, check_model_outputs, require_gradients


def _batched_attack(attack, x, y, batch_size):
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
        # reduce_retracing: one trace with an unknown batch size serves every last, short batch.
        self._fn = tf.function(lambda xb: tf.argmax(model_fn(xb), -1), reduce_retracing=True)
        self.batch_size = batch_size

    def __call__(self, x) -> np.ndarray:
        preds = [
            self._fn(x[s : s + self.batch_size]).numpy() for s in range(0, len(x), self.batch_size)
        ]
        return np.concatenate(preds).astype(np.int64) if preds else np.zeros([0], np.int64)


def attack_description(name: str, pgd_restarts: int = 1) -> str:
    """The one-line description of a registered attack (e.g. `clean`, `pgd20`, `autoattack`)."""
    attack, steps = _lookup(name)
    return attack.describe(AttackSettings(eps=0.0, seed=0, pgd_restarts=pgd_restarts, steps=steps))


def _lookup(name):
    found = eval_attacks.lookup(name)
    if found is None:
        raise ValueError(f"`attack` must be one of {eval_attacks.known_names()}; received {name!r}")
    return found


def _attack_fn(name, model_fn, eps, seed, pgd_restarts):
    """`fn(xb, yb) -> adversarial xb` for the registered batched attack `name`."""
    found = eval_attacks.lookup(name)
    if found is None or found[0].batch_fn is None:
        raise ValueError(f"`attack` must be {eval_attacks.batched_names()}; received {name!r}")
    attack, steps = found
    settings = AttackSettings(eps=eps, seed=seed, pgd_restarts=pgd_restarts, steps=steps)
    return attack.batch_fn(model_fn, settings)


def _check_settings(eps, batch_size, seed):
    check_eps(eps)
    check_positive_int("batch_size", batch_size)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ValueError(f"`seed` must be an int; received seed={seed!r}")


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


def adversarial_images(
    model,
    x,
    y,
    attack="pgd20",
    *,
    eps=8 / 255,
    batch_size=256,
    seed=0,
    pgd_restarts=1,
    input_scale=1.0,
    signature=None,
) -> np.ndarray:
    """Adversarial versions of every image in `x`, attacked batch by batch.

    This is the attack path `evaluate_robustness` scores; `dgad_tf.serving` uses it to attack the
    float Keras model once and score every exported artifact on the same images.

    Args:
        model: a Keras model, a path (SavedModel directory, `.keras` file or run folder), a
            loaded SavedModel or a callable returning logits (see `dgad_tf.logits`).
        x: images, uint8 0..255 or float in [0, 1], [N, H, W, C].
        y: class indices [N].
        attack: a batched attack: "fgsm", "pgd<K>", "cw_inf", "cw_l2" or one registered with
            a `batch_fn` (`dgad_tf.eval_attacks`). Defaults to "pgd20".
        eps: L-inf radius in [0, 1] pixel units. Defaults to 8/255.
        batch_size: attack batch size. Defaults to 256.
        seed: seed of the random starts. Defaults to 0.
        pgd_restarts: restarts of the PGD attacks. Defaults to 1.
        input_scale: the pixel scale the model takes (1 for [0, 1], 255 for 0-255). Defaults
            to 1.0.
        signature: the SavedModel signature to attack. Defaults to None (`serving_default`).

    Returns:
        float32 array shaped like `x`, in [0, 1].
    """
    _check_settings(eps, batch_size, seed)
    model_fn = logits_function(model, input_scale=input_scale, signature=signature)
    require_gradients(model_fn, [attack])
    x, y, _ = check_inputs(model_fn, x, y)
    fn = _attack_fn(attack, model_fn.fn, eps, seed, pgd_restarts)
    return _batched_attack(fn, x, y, batch_size).astype(np.float32, copy=False)


def evaluate_robustness(
    model,
    x,
    y,
    *,
    eps=8 / 255,
    attacks=("clean", "pgd20"),
    batch_size=256,
    seed=0,
    pgd_restarts=1,
    input_scale=1.0,
    signature=None,
    per_image=False,
) -> dict:
    """Clean and robust accuracy of `model` on (x, y) under each named attack.

    Args:
        model: a Keras model, a path (SavedModel directory, `.keras` file or run folder), a
            loaded SavedModel or a callable returning logits (see `dgad_tf.logits`).
        x: images, uint8 0..255 or float in [0, 1], [N, H, W, C].
        y: class indices [N].
        eps: L-inf radius in [0, 1] pixel units. Defaults to 8/255.
        attacks: attack names (see the module docstring). Defaults to ("clean", "pgd20").
        batch_size: attack batch size. Defaults to 256.
        seed: seed of the random starts. Defaults to 0.
        pgd_restarts: restarts of the PGD attacks. Defaults to 1.
        input_scale: the pixel scale the model takes (1 for [0, 1], 255 for 0-255); the images
            stay uint8 or [0, 1]. Defaults to 1.0.
        signature: the SavedModel signature to evaluate. Defaults to None (`serving_default`).
        per_image: also return, under "per_image", a bool [N] array per attack (and "clean"):
            whether each image, in the order given, is still classified correctly. Defaults to
            False (the report stays JSON-serialisable).

    Returns:
        dict with n, eps, seed, clean_accuracy and, under "attacks", per attack (in the given
        order):
        robust_accuracy, seconds and a description; AutoAttack entries add their per-component
        figures ("per_attack").

    Raises:
        ValueError: an unknown attack, a setting out of range, a model, images or labels that
            do not fit (see `dgad_tf.logits`), gradient attacks on integer-pixel signatures.
    """
    names = check_attack_names(
        attacks.split(",") if isinstance(attacks, str) else attacks, "attacks"
    )
    _check_settings(eps, batch_size, seed)
    model_fn = logits_function(model, input_scale=input_scale, signature=signature)
    require_gradients(model_fn, [name for name in names if _lookup(name)[0].gradients])
    x, y, _ = check_inputs(model_fn, x, y)
    num_classes = check_model_outputs(model_fn, x[:batch_size], y[:batch_size]) if len(x) else 0
    predict = Predictor(model_fn.fn, batch_size)
    start = time.perf_counter()
    clean_correct = predict(x) == y
    report = {
        "n": int(len(x)),
        "eps": float(eps),
        "seed": int(seed),
        "clean_accuracy": float(clean_correct.mean()) if len(x) else 0.0,
        "attacks": {},
    }
    correct = {"clean": clean_correct}
    clean_seconds = time.perf_counter() - start
    idx = np.flatnonzero(clean_correct)
    xc, yc = x[idx], y[idx]

    for name in names:
        start = time.perf_counter()
        attack, steps = _lookup(name)
        settings = AttackSettings(eps=eps, seed=seed, pgd_restarts=pgd_restarts, steps=steps)
        if name == "clean":
            report["attacks"]["clean"] = {
                "robust_accuracy": report["clean_accuracy"],
                "seconds": clean_seconds,
                "description": attack.describe(settings),
            }
            continue
        if attack.run is not None:
            # The attack takes the whole set and keeps its own still-robust points.
            accuracy, mask, per_attack = attack.run(
                model_fn, x, y, settings, batch_size, num_classes
            )
            correct[name] = np.asarray(mask, bool)
            report["attacks"][name] = {
                "robust_accuracy": float(accuracy),
                "seconds": time.perf_counter() - start,
                "description": attack.describe(settings),
                "per_attack": per_attack,
            }
            continue
        robust = np.zeros(len(x), bool)
        if len(xc):
            fn = attack.batch_fn(model_fn.fn, settings)
            x_adv = _batched_attack(fn, xc, yc, batch_size).astype(np.float32, copy=False)
            robust[idx] = predict(x_adv) == yc
        correct[name] = robust
        report["attacks"][name] = {
            "robust_accuracy": float(robust.mean()) if len(x) else 0.0,
            "seconds": time.perf_counter() - start,
            "description": attack.describe(settings),
        }
    if per_image:
        report["per_image"] = {name: correct[name] for name in names}
    return report


evaluate_model = evaluate_robustness
"""The former name of `evaluate_robustness`, kept for the callers that use it."""

"""AutoAttack: the attacks run in sequence, each on the points all earlier ones failed on.

The standard L-inf version runs APGD-CE, APGD-T (9 targets), FAB-T (9 targets) and Square
(5000 queries), one restart each, as fixed by Croce & Hein (2020). A point counts as robust only
if it is classified correctly and no attack found an adversarial example for it, so the final
robust accuracy is the per-point worst case over the attacks.

Before attacking, the reference's sanity checks run on the first batch and warn (through
``warnings`` and ``logging``) when the outputs look like probabilities rather than logits,
when the model is not deterministic, or when there are too few classes for the targeted
attacks; after the run, when Square beats the gradient attacks by a clear margin, a sign of
gradient masking.
"""

import logging
import time
import warnings

import numpy as np
import tensorflow as tf

from dgad_tf.autoattack._common import check_eps, check_positive_int
from dgad_tf.autoattack.apgd import apgd, apgd_targeted
from dgad_tf.autoattack.fab import fab_targeted
from dgad_tf.autoattack.square import square

logger = logging.getLogger(__name__)

STANDARD_ATTACKS = ("apgd-ce", "apgd-t", "fab-t", "square")
CUSTOM_DEFAULT_ATTACKS = ("apgd-ce", "apgd-t")
_VERSIONS = ("standard", "custom")

# The standard version's settings (one restart each); `attack_options` may override them.
_ATTACKS = {
    "apgd-ce": (apgd, {"loss": "ce", "n_iter": 100, "n_restarts": 1, "rho": 0.75}),
    "apgd-dlr": (apgd, {"loss": "dlr", "n_iter": 100, "n_restarts": 1, "rho": 0.75}),
    "apgd-t": (apgd_targeted, {"n_iter": 100, "n_target_classes": 9, "n_restarts": 1, "rho": 0.75}),
    "fab-t": (
        fab_targeted,
        {
            "n_iter": 100,
            "n_target_classes": 9,
            "n_restarts": 1,
            "alpha_max": 0.1,
            "eta": 1.05,
            "beta": 0.9,
        },
    ),
    "square": (square, {"n_queries": 5000, "p_init": 0.8, "n_restarts": 1}),
}
# Square beating the gradient attacks by more than this (absolute accuracy) is suspicious.
_SQUARE_MARGIN = 0.002
_PROBABILITY_TOLERANCE = 1e-5
_RANDOMNESS_TOLERANCE = 1e-4
_BALL_TOLERANCE = 1e-6


def run_autoattack(
    model_fn,
    x,
    labels,
    *,
    eps,
    version="standard",
    batch_size=500,
    seed=0,
    attacks=None,
    attack_options=None,
):
    """Evaluates L-inf robustness with AutoAttack.

    Args:
        model_fn: callable ``x -> logits`` (model in inference mode).
        x: float array/tensor ``[N, H, W, C]`` in ``[0, 1]``.
        labels: int array/tensor ``[N]``.
        eps: L-inf radius in pixel units, in ``[0, 1]``.
        version: ``"standard"`` (APGD-CE, APGD-T, FAB-T, Square) or ``"custom"`` (``attacks``,
            by default APGD-CE and APGD-T). Defaults to ``"standard"``.
        batch_size: points per attack call. Defaults to 500.
        seed: seed passed to every attack (each batch restarts from it, as the reference).
            Defaults to 0.
        attacks: for ``"custom"``, names among ``apgd-ce``, ``apgd-dlr``, ``apgd-t``,
            ``fab-t``, ``square``, run in the given order. Defaults to None.
        attack_options: ``{name: {setting: value}}`` overriding the standard settings (e.g. a
            smaller Square budget for a quick check); the report then is not standard
            AutoAttack. Defaults to None.

    Returns:
        dict with ``clean_accuracy`` and ``robust_accuracy`` (floats), ``per_attack``
        (``{name: {"robust_accuracy_after", "seconds"}}``, accuracies cumulative),
        ``robust_mask`` (numpy bool ``[N]``), ``x_adv`` (numpy float32, adversarial where
        found, else clean), ``attacks`` (names run) and ``eps``.

    Example:
        >>> result = run_autoattack(lambda x: model(x, training=False), x, y, eps=8 / 255)
        >>> result["robust_accuracy"]
    """
    check_eps(eps)
    check_positive_int("batch_size", batch_size)
    attack_names = _resolve_attacks(version, attacks)
    options = _resolve_options(attack_options)
    x = np.asarray(x, np.float32)
    labels = np.asarray(labels).reshape(-1).astype(np.int32)
    if labels.shape[0] != x.shape[0]:
        raise ValueError(
            f"`labels` must have one entry per row of `x` ({x.shape[0]}); "
            f"received {labels.shape[0]}"
        )
    n_points = x.shape[0]
    if n_points == 0:
        raise ValueError("`x` must contain at least one point; received an empty batch")
    if x.min() < 0.0 or x.max() > 1.0:
        raise ValueError(f"`x` must be in [0, 1]; received values in [{x.min()}, {x.max()}]")

    num_classes = check_model_outputs(model_fn, x[:batch_size], labels[:batch_size])
    _check_num_classes(num_classes, attack_names, options)

    predictions = np.concatenate(
        [
            _predict(model_fn, x[start : start + batch_size])
            for start in range(0, n_points, batch_size)
        ]
    )
    robust_mask = predictions == labels
    clean_accuracy = float(robust_mask.mean())
    logger.info(
        "AutoAttack (%s: %s), eps=%.5f: clean accuracy %.2f%%",
        version,
        ", ".join(attack_names),
        eps,
        100 * clean_accuracy,
    )

    x_adv = x.copy()
    per_attack = {}
    for name in attack_names:
        function, settings = _ATTACKS[name]
        settings = {**settings, **options.get(name, {})}
        started = time.perf_counter()
        still_robust = np.flatnonzero(robust_mask)
        for start in range(0, still_robust.size, batch_size):
            rows = still_robust[start : start + batch_size]
            candidate = np.asarray(
                function(model_fn, x[rows], labels[rows], eps=eps, seed=seed, **settings),
                np.float32,
            )
            fooled = (_predict(model_fn, candidate) != labels[rows]) & _in_ball(
                candidate, x[rows], eps
            )
            robust_mask[rows[fooled]] = False
            x_adv[rows[fooled]] = candidate[fooled]
        seconds = time.perf_counter() - started
        per_attack[name] = {"robust_accuracy_after": float(robust_mask.mean()), "seconds": seconds}
        logger.info(
            "robust accuracy after %s: %.2f%% (%.1f s)", name, 100 * robust_mask.mean(), seconds
        )

    _check_square(clean_accuracy, per_attack)
    largest = float(np.abs(x_adv - x).reshape(n_points, -1).max())
    logger.info("max L-inf perturbation %.5f (eps %.5f)", largest, eps)
    if largest > eps + _BALL_TOLERANCE:
        raise AssertionError(f"an adversarial example left the eps-ball: {largest} > {eps}")
    return {
        "clean_accuracy": clean_accuracy,
        "robust_accuracy": float(robust_mask.mean()),
        "per_attack": per_attack,
        "robust_mask": robust_mask,
        "x_adv": x_adv,
        "attacks": list(attack_names),
        "eps": float(eps),
    }


def _resolve_attacks(version, attacks):
    if version not in _VERSIONS:
        raise ValueError(f"`version` must be one of {_VERSIONS}; received version={version!r}")
    if version == "standard":
        if attacks is not None:
            raise ValueError(
                "`attacks` is only used with version='custom'; received "
                f"attacks={attacks!r} with version='standard'"
            )
        return STANDARD_ATTACKS
    attacks = CUSTOM_DEFAULT_ATTACKS if attacks is None else tuple(attacks)
    unknown = [name for name in attacks if name not in _ATTACKS]
    if unknown or not attacks:
        raise ValueError(
            f"`attacks` must be a non-empty list of {sorted(_ATTACKS)}; "
            f"received attacks={list(attacks)!r}"
        )
    return attacks


def _resolve_options(attack_options):
    attack_options = dict(attack_options or {})
    for name, overrides in attack_options.items():
        if name not in _ATTACKS:
            raise ValueError(
                f"`attack_options` keys must be in {sorted(_ATTACKS)}; received {name!r}"
            )
        unknown = set(overrides) - set(_ATTACKS[name][1]) - {"rescale_schedule"}
        if unknown:
            raise ValueError(
                f"`attack_options[{name!r}]` has unknown settings "
                f"{sorted(unknown)}; known: {sorted(_ATTACKS[name][1])}"
            )
    return attack_options


def _predict(model_fn, x):
    logits = tf.cast(model_fn(tf.convert_to_tensor(x)), tf.float32)
    return tf.argmax(logits, axis=1, output_type=tf.int32).numpy()


def _in_ball(x_adv, x, eps):
    distance = np.abs(x_adv - x).reshape(x.shape[0], -1).max(axis=1)
    flat = x_adv.reshape(x.shape[0], -1)
    return (distance <= eps + _BALL_TOLERANCE) & (flat.min(1) >= 0.0) & (flat.max(1) <= 1.0)


def _warn(message):
    logger.warning(message)
    warnings.warn(message, RuntimeWarning, stacklevel=3)


def check_model_outputs(model_fn, x, labels, n_calls=3):
    """The reference's checks on one batch (logits, not probabilities; a deterministic model).

    Warns through `warnings` and `logging`; returns the number of classes.
    """
    outputs = [
        tf.cast(model_fn(tf.convert_to_tensor(x)), tf.float32).numpy() for _ in range(n_calls)
    ]
    first = outputs[0]
    if (
        first.max() < 1.0 + _PROBABILITY_TOLERANCE
        and first.min() > -_PROBABILITY_TOLERANCE
        and np.all(np.abs(first.sum(-1) - 1.0) < _PROBABILITY_TOLERANCE)
    ):
        _warn(
            "the model's outputs look like a probability distribution; AutoAttack needs "
            "logits (remove the final softmax)."
        )
    normalised = [out / (np.linalg.norm(out, axis=1, keepdims=True) + 1e-10) for out in outputs]
    n_correct = [int((out.argmax(1) == labels).sum()) for out in outputs]
    largest_change = max(
        float(np.linalg.norm(a - b, axis=1).max()) for a in normalised for b in normalised
    )
    if len(set(n_correct)) > 1 or largest_change > _RANDOMNESS_TOLERANCE:
        _warn(
            "the model's output changes between identical calls (randomised defence or "
            "training-mode layers?); the standard AutoAttack evaluation is not reliable "
            "for it."
        )
    return first.shape[-1]


def _check_num_classes(num_classes, attack_names, options):
    if "apgd-t" in attack_names and num_classes < 4:
        raise ValueError(
            f"APGD-T needs >= 4 classes for the targeted DLR loss; the model has {num_classes}"
        )
    if "apgd-dlr" in attack_names and num_classes < 3:
        raise ValueError(f"the DLR loss needs >= 3 classes; the model has {num_classes}")
    for name in ("apgd-t", "fab-t"):
        if name in attack_names:
            n_targets = options.get(name, {}).get(
                "n_target_classes", _ATTACKS[name][1]["n_target_classes"]
            )
            if n_targets > num_classes - 1:
                _warn(
                    f"{name} asks for {n_targets} target classes but the model has only "
                    f"{num_classes - 1} other classes; using {num_classes - 1}."
                )


def _check_square(clean_accuracy, per_attack):
    if "square" not in per_attack or len(per_attack) < 2:
        return
    others = [clean_accuracy] + [
        result["robust_accuracy_after"] for name, result in per_attack.items() if name != "square"
    ]
    drop = min(others) - per_attack["square"]["robust_accuracy_after"]
    if drop > _SQUARE_MARGIN:
        _warn(
            f"Square Attack lowered the robust accuracy by a further {drop:.2%} after the "
            "gradient-based attacks; the gradients may be masked and the evaluation "
            "unreliable (try more Square queries/restarts or an adaptive attack)."
        )

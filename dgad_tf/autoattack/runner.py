"""AutoAttack: the attacks run in sequence, each on the points all earlier ones failed on.

The standard L-inf version runs APGD-CE, APGD-T (9 targets), FAB-T (9 targets) and Square
(5000 queries), one restart each, as fixed by Croce & Hein (2020). A point counts as robust only
if it is classified correctly and no attack found an adversarial example for it, so the final
robust accuracy is the per-point worst case over the attacks.

`AutoAttack(model, eps=..., version=...)` follows the reference's user-facing conventions
(`run_standard_evaluation(x, y)`, `clean_accuracy(x, y)`) and takes any model in the argument
convention of `dgad_tf.logits`; `run_autoattack` is the same evaluation as one call and one dict.

Before attacking, the reference's sanity checks run on the first batch and warn (through
``warnings`` and ``logging``) when the outputs look like probabilities rather than logits,
when the model is not deterministic, or when there are too few classes for the targeted
attacks; after the run, when Square beats the gradient attacks by a clear margin, a sign of
gradient masking.
"""

import logging
import time

import numpy as np
import tensorflow as tf

from dgad_tf.autoattack._common import check_eps, check_positive_int
from dgad_tf.autoattack.apgd import apgd, apgd_targeted
from dgad_tf.autoattack.fab import fab_targeted
from dgad_tf.autoattack.square import square
from dgad_tf.logits import logits_function
from dgad_tf.model_checks import check_inputs, check_model_outputs, require_gradients, warn

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
_BALL_TOLERANCE = 1e-6


class AutoAttack:
    """AutoAttack on any model: the reference's evaluation, in its user-facing conventions.

    As in the reference (`fra31/auto-attack`), the attack is built for a model, a norm, an eps
    and a version, and `run_standard_evaluation(x, y)` returns the adversarial images; here it
    also returns the report, and the model may be a Keras model, a SavedModel directory or a
    callable (the argument convention of `dgad_tf.logits`). Only L-inf is implemented.

    Args:
        model: a Keras model, a path (SavedModel directory, `.keras` file or run folder), a
            loaded SavedModel or a callable returning logits (see `dgad_tf.logits`).
        eps: L-inf radius in [0, 1] pixel units. Defaults to 8/255.
        version: ``"standard"`` (APGD-CE, APGD-T, FAB-T, Square) or ``"custom"`` (``attacks``,
            by default APGD-CE and APGD-T). Defaults to ``"standard"``.
        attacks: for ``"custom"``, names among ``apgd-ce``, ``apgd-dlr``, ``apgd-t``,
            ``fab-t``, ``square``, run in the given order. Defaults to None.
        attack_options: ``{name: {setting: value}}`` overriding the standard settings (e.g. a
            smaller Square budget for a quick check); the report then is not standard
            AutoAttack. Defaults to None.
        seed: seed passed to every attack (each batch restarts from it, as the reference).
            Defaults to 0.
        norm: ``"Linf"``, the only norm implemented (accepted for the reference's call).
            Defaults to ``"Linf"``.
        input_scale: the pixel scale the model takes: 1 for [0, 1], 255 for 0-255 (the images
            given stay uint8 or [0, 1]). Defaults to 1.0.
        signature: the SavedModel signature to attack. Defaults to None (``serving_default``).

    Example:
        >>> adversary = AutoAttack(model, eps=8 / 255, version="standard")
        >>> x_adv, report = adversary.run_standard_evaluation(x_test, y_test, batch_size=256)
        >>> report["robust_accuracy"]
    """

    def __init__(
        self,
        model,
        *,
        eps=8 / 255,
        version="standard",
        attacks=None,
        attack_options=None,
        seed=0,
        norm="Linf",
        input_scale=1.0,
        signature=None,
    ):
        if norm != "Linf":
            raise ValueError(f"`norm` must be 'Linf' (the only one implemented); received {norm!r}")
        check_eps(eps)
        self.attacks = tuple(_resolve_attacks(version, attacks))
        self.attack_options = _resolve_options(attack_options)
        self.model_fn = logits_function(model, input_scale=input_scale, signature=signature)
        require_gradients(self.model_fn, [name for name in self.attacks if name != "square"])
        self.eps, self.version, self.seed, self.norm = float(eps), version, seed, norm

    def run_standard_evaluation(self, x, y, *, batch_size=256):
        """Runs the attacks in turn, each on the points all earlier ones failed on.

        Args:
            x: images, uint8 0..255 or float in [0, 1], ``[N, H, W, C]``.
            y: class indices ``[N]``.
            batch_size: points per attack call. Defaults to 256.

        Returns:
            ``(x_adv, report)``: ``x_adv`` float32 like ``x`` in [0, 1], adversarial where an
            attack succeeded, else the clean image; ``report`` a dict with ``n``, ``eps``,
            ``seed``, ``version``, ``attacks`` (names run), ``clean_accuracy`` and
            ``robust_accuracy`` (floats), ``per_attack`` (``{name: {"robust_accuracy_after",
            "seconds"}}``, accuracies cumulative), ``robust_mask`` (bool ``[N]``) and ``y_adv``
            (the model's labels for ``x_adv``, int64 ``[N]``).
        """
        check_positive_int("batch_size", batch_size)
        x, y, _ = check_inputs(self.model_fn, x, y)
        if not len(x):
            raise ValueError("`x` must contain at least one point; received an empty batch")
        num_classes = check_model_outputs(self.model_fn, x[:batch_size], y[:batch_size])
        return self.run_checked(x, y, batch_size, num_classes)

    def clean_accuracy(self, x, y, *, batch_size=256):
        """The share of ``x`` the model classifies as ``y`` (images and labels as above)."""
        check_positive_int("batch_size", batch_size)
        x, y, _ = check_inputs(self.model_fn, x, y)
        return float(np.mean(self._predictions(x, batch_size) == y)) if len(x) else 0.0

    def _predictions(self, x, batch_size):
        return np.concatenate(
            [
                _predict(self.model_fn.fn, x[start : start + batch_size])
                for start in range(0, len(x), batch_size)
            ]
        ).astype(np.int64)

    def run_checked(self, x, y, batch_size, num_classes):
        """`run_standard_evaluation` on inputs that have been checked already.

        For callers that ran `dgad_tf.model_checks.check_inputs` (``x`` float32 in [0, 1], ``y``
        int64) and `check_model_outputs` (which returned ``num_classes``) themselves, so the
        sanity checks neither run nor warn twice.
        """
        check_positive_int("batch_size", batch_size)
        _check_num_classes(num_classes, self.attacks, self.attack_options)
        model_fn = self.model_fn.fn
        eps, labels = self.eps, y.astype(np.int32)
        y_adv = self._predictions(x, batch_size)
        robust_mask = y_adv == y
        clean_accuracy = float(robust_mask.mean())
        logger.info(
            "AutoAttack (%s: %s), eps=%.5f: clean accuracy %.2f%%",
            self.version,
            ", ".join(self.attacks),
            eps,
            100 * clean_accuracy,
        )
        x_adv = x.copy()
        per_attack = {}
        for name in self.attacks:
            function, settings = _ATTACKS[name]
            settings = {**settings, **self.attack_options.get(name, {})}
            started = time.perf_counter()
            still_robust = np.flatnonzero(robust_mask)
            for start in range(0, still_robust.size, batch_size):
                rows = still_robust[start : start + batch_size]
                candidate = np.asarray(
                    function(model_fn, x[rows], labels[rows], eps=eps, seed=self.seed, **settings),
                    np.float32,
                )
                predicted = _predict(model_fn, candidate)
                fooled = (predicted != labels[rows]) & _in_ball(candidate, x[rows], eps)
                robust_mask[rows[fooled]] = False
                x_adv[rows[fooled]] = candidate[fooled]
                y_adv[rows[fooled]] = predicted[fooled]
            seconds = time.perf_counter() - started
            per_attack[name] = {
                "robust_accuracy_after": float(robust_mask.mean()),
                "seconds": seconds,
            }
            logger.info(
                "robust accuracy after %s: %.2f%% (%.1f s)", name, 100 * robust_mask.mean(), seconds
            )

        _check_square(clean_accuracy, per_attack)
        largest = float(np.abs(x_adv - x).reshape(len(x), -1).max())
        logger.info("max L-inf perturbation %.5f (eps %.5f)", largest, eps)
        if largest > eps + _BALL_TOLERANCE:
            raise AssertionError(f"an adversarial example left the eps-ball: {largest} > {eps}")
        return x_adv, {
            "n": int(len(x)),
            "eps": eps,
            "seed": self.seed,
            "version": self.version,
            "attacks": list(self.attacks),
            "clean_accuracy": clean_accuracy,
            "robust_accuracy": float(robust_mask.mean()),
            "per_attack": per_attack,
            "robust_mask": robust_mask,
            "y_adv": y_adv,
        }


def run_autoattack(
    model,
    x,
    y,
    *,
    eps=8 / 255,
    version="standard",
    batch_size=256,
    seed=0,
    attacks=None,
    attack_options=None,
    input_scale=1.0,
    signature=None,
):
    """Evaluates L-inf robustness with AutoAttack: `AutoAttack(...)` run once, as one dict.

    Args:
        model: a Keras model, a path (SavedModel directory, `.keras` file or run folder), a
            loaded SavedModel or a callable returning logits (see `dgad_tf.logits`).
        x: images, uint8 0..255 or float in [0, 1], ``[N, H, W, C]``.
        y: class indices ``[N]``.
        eps, version, attacks, attack_options, seed, input_scale, signature: as
            `AutoAttack`'s (eps defaults to 8/255, version to "standard", seed to 0).
        batch_size: points per attack call. Defaults to 256.

    Returns:
        `AutoAttack.run_standard_evaluation`'s report with ``x_adv`` added (numpy float32,
        adversarial where found, else clean).

    Example:
        >>> result = run_autoattack(model, x, y, eps=8 / 255)
        >>> result["robust_accuracy"]
    """
    adversary = AutoAttack(
        model,
        eps=eps,
        version=version,
        attacks=attacks,
        attack_options=attack_options,
        seed=seed,
        input_scale=input_scale,
        signature=signature,
    )
    x_adv, report = adversary.run_standard_evaluation(x, y, batch_size=batch_size)
    return {**report, "x_adv": x_adv}


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
                warn(
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
        warn(
            f"Square Attack lowered the robust accuracy by a further {drop:.2%} after the "
            "gradient-based attacks; the gradients may be masked and the evaluation "
            "unreliable (try more Square queries/restarts or an adaptive attack)."
        )

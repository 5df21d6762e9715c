"""Projected gradient attacks: the PGD loop and its objectives, FGSM, PGD-CE, CW-inf.

See `dgad_tf.attacks` for the conventions (pure functions, [0, 1] pixels, `tf.while_loop`).
"""

import numbers

import numpy as np
import tensorflow as tf

from dgad_tf.losses import kl_divergence, largest_other_logit

_INITS = ("uniform", "gaussian", "none")


def _is_number(value):
    return isinstance(value, numbers.Number) and not isinstance(value, bool)


def _check_attack_args(eps=None, step_size=None, steps=None):
    """Checks Python-number arguments; tensors are trusted (they are checked by their producer)."""
    if eps is not None and _is_number(eps) and not 0 <= eps <= 1:
        raise ValueError(f"`eps` must be in [0, 1]; received eps={eps}")
    if step_size is not None and _is_number(step_size) and not step_size >= 0:
        raise ValueError(f"`step_size` must be >= 0; received step_size={step_size}")
    if steps is not None and _is_number(steps) and (steps < 0 or int(steps) != steps):
        raise ValueError(f"`steps` must be an integer >= 0; received steps={steps}")


def _as_labels(labels):
    return tf.reshape(tf.cast(labels, tf.int32), [-1])


def _seed_pair(seed, index=0):
    """A stateless-RNG seed `[seed, index]`, or None for the global (stateful) generator.

    `seed` may also be a ready `[2]` integer tensor (the train step's per-step seed).
    """
    if seed is None:
        return None
    if tf.is_tensor(seed):
        return tf.cast(tf.reshape(seed, [2]), tf.int64)
    if not isinstance(seed, (numbers.Integral, np.integer)) or isinstance(seed, bool):
        raise ValueError(f"`seed` must be an int or None; received seed={seed!r}")
    return tf.stack([tf.constant(int(seed), tf.int64), tf.cast(index, tf.int64)])


def _project(x_adv, x, eps):
    """Clips into the eps-ball around x, then into the valid pixel range."""
    return tf.clip_by_value(tf.clip_by_value(x_adv, x - eps, x + eps), 0.0, 1.0)


def _start(x, eps, init, init_std, seed_pair):
    shape = tf.shape(x)
    if init == "uniform":
        if seed_pair is None:
            noise = tf.random.uniform(shape, -1.0, 1.0, dtype=x.dtype)
        else:
            noise = tf.random.stateless_uniform(shape, seed_pair, -1.0, 1.0, dtype=x.dtype)
        start = x + eps * noise
    elif init == "gaussian":
        if seed_pair is None:
            noise = tf.random.normal(shape, dtype=x.dtype)
        else:
            noise = tf.random.stateless_normal(shape, seed_pair, dtype=x.dtype)
        start = x + tf.cast(init_std, x.dtype) * noise
    else:
        start = x
    return _project(start, x, eps)


def _pgd(x, objective, eps, step_size, steps, init, init_std, seed_pair):
    x = tf.stop_gradient(x)
    eps = tf.cast(eps, x.dtype)
    step_size = tf.cast(step_size, x.dtype)

    def step(i, x_adv):
        with tf.GradientTape() as tape:
            tape.watch(x_adv)
            # Summing the per-sample losses gives each sample its own gradient.
            loss = tf.reduce_sum(objective(x_adv))
        grad = tape.gradient(loss, x_adv)
        if grad is None:
            grad = tf.zeros_like(x_adv)
        x_adv = x_adv + step_size * tf.sign(tf.cast(grad, x_adv.dtype))
        return i + 1, tf.stop_gradient(_project(x_adv, x, eps))

    _, x_adv = tf.while_loop(
        lambda i, _: i < steps,
        step,
        (tf.constant(0), _start(x, eps, init, init_std, seed_pair)),
        parallel_iterations=1,
    )
    return tf.stop_gradient(x_adv)


def pgd(x, objective, *, eps, step_size, steps, init="uniform", init_std=0.001, seed=None):
    """L-infinity projected gradient ascent on a per-sample objective.

    From a start chosen by `init`, takes `steps` steps `x' <- x' + step_size * sign(grad)`, where
    grad is the gradient of `sum(objective(x'))` with respect to `x'` only. After the start and
    after every step, `x'` is clipped into `[x - eps, x + eps]` and then into `[0, 1]` (the DGAD
    reference forgets this clip after its Gaussian start, docs/method.md §8.4). With `eps=0` the
    result is `x` exactly; with `steps=0` it is the clipped start.

    Example:

        model_fn = lambda x: model(x, training=False)
        x_adv = pgd(x, ce_objective(model_fn, y), eps=8 / 255, step_size=2 / 255, steps=10)

    Args:
        x: `[B, ...]` clean inputs in [0, 1].
        objective: callable `x_adv -> [B]` per-sample loss to maximise.
        eps: L-infinity radius in pixel units, in [0, 1].
        step_size: step length per iteration, >= 0.
        steps: number of iterations, >= 0 (a Python int or a scalar tensor).
        init: `"uniform"` (x + U(-eps, eps), Madry PGD), `"gaussian"` (x + init_std * N(0, 1), the
            DGAD/AdaAD training attack) or `"none"`. Defaults to `"uniform"`.
        init_std: standard deviation of the Gaussian start. Defaults to `0.001`.
        seed: None (global random generator), an int, or a `[2]` integer tensor, for a
            reproducible, stateless random start. Defaults to `None`.

    Returns:
        `[B, ...]` adversarial inputs, gradient-stopped.
    """
    _check_attack_args(eps, step_size, steps)
    if init not in _INITS:
        raise ValueError(f"`init` must be one of {_INITS}; received init={init!r}")
    if _is_number(init_std) and not init_std >= 0:
        raise ValueError(f"`init_std` must be >= 0; received init_std={init_std}")
    x = tf.convert_to_tensor(x)
    return _pgd(x, objective, eps, step_size, steps, init, init_std, _seed_pair(seed))


def _float_logits(model_fn, x):
    # Mixed-precision models emit float16 logits; losses are taken in float32.
    return tf.cast(model_fn(x), tf.float32)


def ce_objective(model_fn, labels):
    """Per-sample cross-entropy CE(model(x'), y): PGD-AT, ARD and the PGD evaluation attack.

    Args:
        model_fn: callable `x -> [B, C]` logits (inference mode).
        labels: `[B]` integer labels.

    Returns:
        A callable `x_adv -> [B]`.
    """
    labels = _as_labels(labels)

    def objective(x_adv):
        return tf.nn.sparse_softmax_cross_entropy_with_logits(
            labels=labels, logits=_float_logits(model_fn, x_adv)
        )

    return objective


def kl_objective(reference_logits_fn, model_fn):
    """Per-sample KL(softmax(ref(x')) || softmax(model(x'))), both networks at the current x'.

    This is the DGAD/AdaAD inner objective with `reference_logits_fn` the teacher and `model_fn`
    the student; the gradient flows through both networks, as in the reference.

    Args:
        reference_logits_fn: callable `x -> [B, C]` logits of the reference (teacher).
        model_fn: callable `x -> [B, C]` logits of the attacked model (student).

    Returns:
        A callable `x_adv -> [B]`.
    """

    def objective(x_adv):
        return kl_divergence(
            _float_logits(reference_logits_fn, x_adv), _float_logits(model_fn, x_adv)
        )

    return objective


def kl_to_fixed_objective(reference_logits, model_fn):
    """Per-sample KL(softmax(reference_logits) || softmax(model(x'))) with fixed reference logits.

    TRADES uses the student's clean logits s(x), RSLAD the teacher's clean logits t(x).

    Args:
        reference_logits: `[B, C]` logits, treated as constants.
        model_fn: callable `x -> [B, C]` logits of the attacked model.

    Returns:
        A callable `x_adv -> [B]`.
    """
    reference_logits = tf.stop_gradient(tf.cast(reference_logits, tf.float32))

    def objective(x_adv):
        return kl_divergence(reference_logits, _float_logits(model_fn, x_adv))

    return objective


def cw_margin_loss(logits, labels, confidence=0.0):
    """Per-sample Carlini-Wagner margin `min(max_{j != y} z_j - z_y, confidence)`.

    This is minus CW's `f(x') = max(z_y - max_{j != y} z_j, -confidence)`: it grows as the best
    wrong class overtakes the true one and stops growing once it leads by `confidence`. The widely
    used CW-inf evaluation loss `-max(z_y - max_other + 50, 0)` equals this with `confidence=50`
    minus the constant 50, so it has the same gradient.

    Args:
        logits: `[B, C]` logits.
        labels: `[B]` integer labels.
        confidence: the cap kappa >= 0. Defaults to `0.0`.

    Returns:
        A `[B]` float32 tensor.
    """
    if _is_number(confidence) and not confidence >= 0:
        raise ValueError(f"`confidence` must be >= 0; received confidence={confidence}")
    logits = tf.cast(logits, tf.float32)
    labels = _as_labels(labels)
    true_logit = tf.gather(logits, labels, axis=-1, batch_dims=1)
    largest_other, _ = largest_other_logit(logits, labels)
    return tf.minimum(largest_other - true_logit, confidence)


def cw_margin_objective(model_fn, labels, confidence=50.0):
    """Per-sample CW margin of `model_fn(x')`, for PGD on the CW loss (CW-inf).

    Args:
        model_fn: callable `x -> [B, C]` logits (inference mode).
        labels: `[B]` integer labels.
        confidence: cap of the margin; 50 (the common CW-inf setting) makes it effectively
            unbounded. Defaults to `50.0`.

    Returns:
        A callable `x_adv -> [B]`.
    """
    labels = _as_labels(labels)
    return lambda x_adv: cw_margin_loss(_float_logits(model_fn, x_adv), labels, confidence)


def fgsm(model_fn, x, labels, *, eps):
    """Fast gradient sign method: one step of size eps on the cross-entropy, no random start.

    Args:
        model_fn: callable `x -> [B, C]` logits (inference mode).
        x: `[B, ...]` clean inputs in [0, 1].
        labels: `[B]` integer labels.
        eps: L-infinity radius, in [0, 1].

    Returns:
        `[B, ...]` adversarial inputs.
    """
    _check_attack_args(eps=eps)
    return pgd(x, ce_objective(model_fn, labels), eps=eps, step_size=eps, steps=1, init="none")


def _misclassified(model_fn, x, labels):
    return tf.not_equal(tf.argmax(model_fn(x), axis=-1, output_type=tf.int32), labels)


def _broadcast_rows(mask, like):
    """Reshapes a `[B]` mask to broadcast against `like` of shape `[B, ...]`."""
    return tf.reshape(mask, tf.concat([[-1], tf.ones([tf.rank(like) - 1], tf.int32)], axis=0))


def pgd_ce(model_fn, x, labels, *, eps, step_size=None, steps=20, restarts=1, seed=None):
    """PGD evaluation attack on the cross-entropy, uniform random start, optional restarts.

    Over restarts, each point keeps the first adversarial example found (the first run after which
    it is misclassified), else the result of the last run.

    Args:
        model_fn: callable `x -> [B, C]` logits (inference mode).
        x: `[B, ...]` clean inputs in [0, 1].
        labels: `[B]` integer labels.
        eps: L-infinity radius, in [0, 1].
        step_size: step length; None means eps / 4. Defaults to `None`.
        steps: iterations per run. Defaults to `20`.
        restarts: number of random-start runs, >= 1. Defaults to `1`.
        seed: None or an int for reproducible starts (run r uses seed pair `[seed, r]`).
            Defaults to `None`.

    Returns:
        `[B, ...]` adversarial inputs.
    """
    return _pgd_with_restarts(
        model_fn, x, labels, ce_objective(model_fn, labels), eps, step_size, steps, restarts, seed
    )


def cw_inf(model_fn, x, labels, *, eps, step_size=None, steps=30, confidence=50.0, seed=None):
    """CW-inf: PGD on the Carlini-Wagner margin (uniform random start), as most AD papers report.

    Args:
        model_fn: callable `x -> [B, C]` logits (inference mode).
        x: `[B, ...]` clean inputs in [0, 1].
        labels: `[B]` integer labels.
        eps: L-infinity radius, in [0, 1].
        step_size: step length; None means eps / 4. Defaults to `None`.
        steps: iterations. Defaults to `30`.
        confidence: margin cap, see `cw_margin_loss`. Defaults to `50.0`.
        seed: None or an int for a reproducible start. Defaults to `None`.

    Returns:
        `[B, ...]` adversarial inputs.
    """
    objective = cw_margin_objective(model_fn, labels, confidence)
    return _pgd_with_restarts(model_fn, x, labels, objective, eps, step_size, steps, 1, seed)


def _pgd_with_restarts(model_fn, x, labels, objective, eps, step_size, steps, restarts, seed):
    if step_size is None:
        _check_attack_args(eps=eps)
        step_size = eps / 4
    _check_attack_args(eps, step_size, steps)
    if not _is_number(restarts) or restarts < 1 or int(restarts) != restarts:
        raise ValueError(f"`restarts` must be an integer >= 1; received restarts={restarts}")
    x = tf.convert_to_tensor(x)
    labels = _as_labels(labels)

    def run(restart_index):
        seed_pair = None if seed is None else _seed_pair(seed, restart_index)
        return _pgd(x, objective, eps, step_size, steps, "uniform", 0.0, seed_pair)

    if restarts == 1:
        return run(0)

    def restart(r, best, found):
        x_adv = run(r)
        # Points already broken keep their first adversarial; the others take the newest run.
        best = tf.where(_broadcast_rows(found, x), best, x_adv)
        found = found | _misclassified(model_fn, x_adv, labels)
        return r + 1, best, found

    _, best, _ = tf.while_loop(
        lambda r, *_: r < restarts,
        restart,
        (tf.constant(0), x, tf.zeros_like(labels, dtype=tf.bool)),
        parallel_iterations=1,
    )
    return tf.stop_gradient(best)

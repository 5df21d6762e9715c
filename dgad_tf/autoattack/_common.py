"""What the AutoAttack components share: input checks, logits and predictions, the random
start, the still-robust loop over restarts or targets, and the cache of traced functions."""

import collections

import numpy as np
import tensorflow as tf

_COMPILED = collections.OrderedDict()
_MAX_COMPILED = 8


def check_eps(eps):
    """Raises if ``eps`` is not a number in ``[0, 1]``."""
    if (
        isinstance(eps, bool)
        or not isinstance(eps, (int, float, np.floating, np.integer))
        or not 0.0 <= float(eps) <= 1.0
    ):
        raise ValueError(f"`eps` must be in [0, 1]; received eps={eps!r}")


def check_positive_int(name, value):
    """Raises if ``value`` (the argument ``name``) is not an int >= 1."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"`{name}` must be an int >= 1; received {name}={value!r}")


def prepare_inputs(x, labels):
    """Converts ``x``/``labels`` to float32/int32 tensors and checks shapes and range."""
    x = tf.convert_to_tensor(x)
    if x.dtype != tf.float32:
        x = tf.cast(x, tf.float32)
    labels = tf.cast(tf.reshape(tf.convert_to_tensor(labels), [-1]), tf.int32)
    if x.shape.rank is None or x.shape.rank < 2:
        raise ValueError(f"`x` must be a batch [B, ...]; received shape {x.shape}")
    if labels.shape[0] != x.shape[0]:
        raise ValueError(
            f"`labels` must have one entry per row of `x` ({x.shape[0]}); "
            f"received {labels.shape[0]}"
        )
    if x.shape[0] and (float(tf.reduce_min(x)) < 0.0 or float(tf.reduce_max(x)) > 1.0):
        raise ValueError(
            "`x` must be in [0, 1]; received values in "
            f"[{float(tf.reduce_min(x))}, {float(tf.reduce_max(x))}]"
        )
    return x, labels


def logits_of(model_fn, x):
    """``model_fn(x)`` as float32 (models may compute in mixed precision)."""
    return tf.cast(model_fn(x), tf.float32)


def predict_labels(model_fn, x):
    """Arg-max class of ``model_fn(x)`` as int32 ``[B]``."""
    return tf.argmax(logits_of(model_fn, x), axis=1, output_type=tf.int32)


def random_linf_start(x, eps, seed, stream):
    """Uniform random start in the L-inf ball, scaled so its largest coordinate is ``eps``.

    Deterministic in ``(seed, stream)``, clipped to ``[0, 1]``.
    """
    noise = 2.0 * tf.random.stateless_uniform(tf.shape(x), seed=[seed, stream]) - 1.0
    largest = tf.reduce_max(tf.abs(tf.reshape(noise, [tf.shape(x)[0], -1])), axis=1)
    largest = tf.reshape(largest, [-1] + [1] * (x.shape.rank - 1))
    return tf.clip_by_value(x + eps * noise / (largest + 1e-12), 0.0, 1.0)


def attack_still_robust(model_fn, x, labels, attempt, n_attempts, eps):
    """Runs ``attempt`` repeatedly on the points the model still classifies correctly.

    Clean-misclassified points are never attacked. After each attempt a candidate counts only
    if the model misclassifies it and it lies in the eps-ball and the box, so a faulty
    component cannot report an out-of-bounds success.

    Args:
        model_fn: callable ``x -> logits``.
        x: float32 tensor ``[B, ...]``.
        labels: int32 tensor ``[B]``.
        attempt: callable ``(index, x_sub, labels_sub) -> x_adv_sub``.
        n_attempts: number of attempts (restarts, or targets times restarts).
        eps: L-inf radius.

    Returns:
        float32 tensor like ``x``: adversarial where one was found, else ``x``.
    """
    robust = tf.equal(predict_labels(model_fn, x), labels)
    x_adv = x
    for index in range(n_attempts):
        still_robust = tf.where(robust)[:, 0]
        if still_robust.shape[0] == 0:
            break
        x_sub = tf.gather(x, still_robust)
        labels_sub = tf.gather(labels, still_robust)
        candidate = tf.convert_to_tensor(attempt(index, x_sub, labels_sub))
        fooled = tf.logical_and(
            tf.not_equal(predict_labels(model_fn, candidate), labels_sub),
            in_linf_ball(candidate, x_sub, eps),
        )
        fooled_rows = tf.boolean_mask(still_robust, fooled)[:, None]
        x_adv = tf.tensor_scatter_nd_update(x_adv, fooled_rows, tf.boolean_mask(candidate, fooled))
        robust = tf.tensor_scatter_nd_update(
            robust, fooled_rows, tf.zeros_like(fooled_rows[:, 0], tf.bool)
        )
    return x_adv


def in_linf_ball(x_adv, x, eps, tolerance=1e-6):
    """Per-sample flag: ``x_adv`` is within ``eps`` of ``x`` (L-inf) and inside ``[0, 1]``."""
    batch = tf.shape(x)[0]
    distance = tf.reduce_max(tf.abs(tf.reshape(x_adv - x, [batch, -1])), axis=1)
    flat = tf.reshape(x_adv, [batch, -1])
    in_box = tf.logical_and(tf.reduce_min(flat, 1) >= 0.0, tf.reduce_max(flat, 1) <= 1.0)
    return tf.logical_and(distance <= eps + tolerance, in_box)


def cached_function(model_fn, key, build):
    """Returns the compiled function for ``(model_fn, key)``, building it on first use.

    The cache holds a few entries (it keeps their models alive) so that the batches,
    restarts and targets of one evaluation share a single trace.
    """
    full_key = (id(model_fn),) + key
    entry = _COMPILED.get(full_key)
    if entry is not None and entry[0] is model_fn:
        _COMPILED.move_to_end(full_key)
        return entry[1]
    function = build()
    _COMPILED[full_key] = (model_fn, function)
    while len(_COMPILED) > _MAX_COMPILED:
        _COMPILED.popitem(last=False)
    return function


def clear_compiled_cache():
    """Drops the cached compiled attack loops (and the references they hold to models)."""
    _COMPILED.clear()

"""Square Attack, L-inf (Andriushchenko et al. 2020): random search, no gradients.

Starting from vertical stripes of ``+-eps``, every query proposes to set one random square
window (all channels, one random sign per channel) to ``x +- eps`` and keeps the proposal
when it lowers the margin ``z_y - max_{i != y} z_i``. The side of the window follows the
reference schedule of the fraction ``p`` of pixels changed, halved at queries 10, 50, 200,
500, 1000, 2000, 4000, 6000 and 8000. Points stop being queried once misclassified.

The model is only ever called forward: no ``GradientTape``, so gradient masking cannot hide
adversarial examples from this attack.
"""

import math

import numpy as np
import tensorflow as tf

from dgad_tf.autoattack._common import (
    attack_still_robust,
    cached_function,
    check_eps,
    check_positive_int,
    logits_of,
    prepare_inputs,
)
from dgad_tf.autoattack.losses import margin_loss

# Query indices after which p is halved again (the reference's thresholds for 10000 queries).
_P_THRESHOLDS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)


def square_p_selection(iteration, n_queries, p_init=0.8, rescale_schedule=False):
    """Fraction ``p`` of pixels in the square proposed at ``iteration`` (0-based).

    ``p = p_init / 2**k`` where ``k`` counts the thresholds strictly below ``iteration``. With
    ``rescale_schedule`` the iteration is first mapped to a 10000-query budget
    (``int(iteration / n_queries * 10000)``); AutoAttack's standard run does not rescale.

    Args:
        iteration: int >= 0, current query index.
        n_queries: int >= 1, query budget.
        p_init: initial fraction. Defaults to 0.8.
        rescale_schedule: map the thresholds to ``n_queries``. Defaults to False.

    Returns:
        float.

    Example:
        >>> square_p_selection(11, 5000)
        0.4
    """
    if rescale_schedule:
        iteration = int(iteration / n_queries * 10000)
    halvings = sum(iteration > threshold for threshold in _P_THRESHOLDS)
    return p_init / 2**halvings


def square(
    model_fn,
    x,
    labels,
    *,
    eps,
    n_queries=5000,
    p_init=0.8,
    n_restarts=1,
    seed=0,
    rescale_schedule=False,
):
    """L-inf Square Attack on the points the model classifies correctly.

    Args:
        model_fn: callable ``x -> logits``; only forward calls are made.
        x: float array/tensor ``[B, H, W, C]`` in ``[0, 1]``.
        labels: int array/tensor ``[B]``.
        eps: L-inf radius in pixel units, in ``[0, 1]``.
        n_queries: queries per restart (after the initial one). Defaults to 5000.
        p_init: initial fraction of pixels per square. Defaults to 0.8.
        n_restarts: restarts on the points still robust. Defaults to 1.
        seed: seed of the random search. Defaults to 0.
        rescale_schedule: rescale the p schedule to ``n_queries`` (the reference class's
            option; AutoAttack's standard run uses False). Defaults to False.

    Returns:
        float32 tensor like ``x``: adversarial where found, else ``x``.

    Example:
        >>> x_adv = square(lambda x: model(x, training=False), x, y, eps=8 / 255)
    """
    check_eps(eps)
    check_positive_int("n_queries", n_queries)
    check_positive_int("n_restarts", n_restarts)
    if not 0.0 < p_init <= 1.0:
        raise ValueError(f"`p_init` must be in (0, 1]; received p_init={p_init}")
    x, labels = prepare_inputs(x, labels)
    if x.shape.rank != 4:
        raise ValueError(f"`x` must be images [B, H, W, C]; received shape {x.shape}")
    height, width = int(x.shape[1]), int(x.shape[2])
    # Side of the square per query: round(sqrt(p * n_features / channels)), at least 1 and
    # at most the image (Python's round, as the reference).
    sides = np.array(
        [
            min(
                max(
                    int(
                        round(
                            math.sqrt(
                                square_p_selection(i, n_queries, p_init, rescale_schedule)
                                * height
                                * width
                            )
                        )
                    ),
                    1,
                ),
                height,
                width,
            )
            for i in range(n_queries)
        ],
        np.int32,
    )
    key = (
        "square",
        tuple(x.shape[1:]),
        float(eps),
        n_queries,
        float(p_init),
        bool(rescale_schedule),
    )
    run = cached_function(
        model_fn,
        key,
        lambda: _build_square_run(model_fn, tuple(x.shape[1:]), float(eps), n_queries, sides),
    )

    def attempt(index, x_sub, labels_sub):
        return run(x_sub, labels_sub, tf.constant([seed, index], tf.int64))

    return attack_still_robust(model_fn, x, labels, attempt, n_restarts, eps)


def _build_square_run(model_fn, input_shape, eps, n_queries, sides):
    """Traces one Square run over all ``n_queries`` queries; returns the best points."""
    height, width, channels = input_shape
    sides = tf.constant(sides)
    spec = tf.TensorSpec([None, *input_shape], tf.float32)
    rows = tf.range(height)[None, :, None, None]
    cols = tf.range(width)[None, None, :, None]

    def random_signs(shape, seed):
        return tf.where(tf.random.stateless_uniform(shape, seed=seed) < 0.5, -1.0, 1.0)

    def margin(x_query, labels):
        return margin_loss(logits_of(model_fn, x_query), labels)

    @tf.function(
        input_signature=[spec, tf.TensorSpec([None], tf.int32), tf.TensorSpec([2], tf.int64)]
    )
    def run(x, labels, seed):
        batch = tf.shape(x)[0]
        lower = tf.maximum(x - eps, 0.0)
        upper = tf.minimum(x + eps, 1.0)
        # Vertical stripes: one sign per column and channel, constant along the height.
        stripes = random_signs([batch, 1, width, channels], seed)
        x_best = tf.clip_by_value(x + eps * stripes, 0.0, 1.0)
        margin_best = margin(x_best, labels)

        def body(i, x_best, margin_best):
            active = tf.where(margin_best > 0.0)[:, 0]
            n_active = tf.shape(active)[0]
            x_best_curr = tf.gather(x_best, active)
            labels_curr = tf.gather(labels, active)
            margin_curr = tf.gather(margin_best, active)

            side = sides[i]
            step_seed = tf.random.experimental.stateless_fold_in(seed, i + 1)
            # A corner in [0, H - side) as in the reference (its last position is never drawn),
            # drawn per image as in the original Square Attack.
            corner = tf.random.stateless_uniform([n_active, 2], seed=step_seed)
            top = tf.cast(corner[:, 0] * tf.cast(height - side, tf.float32), tf.int32)
            left = tf.cast(corner[:, 1] * tf.cast(width - side, tf.float32), tf.int32)
            top = tf.reshape(top, [-1, 1, 1, 1])
            left = tf.reshape(left, [-1, 1, 1, 1])
            window = tf.logical_and(
                tf.logical_and(rows >= top, rows < top + side),
                tf.logical_and(cols >= left, cols < left + side),
            )
            signs = random_signs(
                [n_active, 1, 1, channels], tf.random.experimental.stateless_fold_in(step_seed, 1)
            )
            # Adding 2 eps then clipping sets the window to x +- eps (or the box edge).
            x_new = tf.where(window, x_best_curr + 2.0 * eps * signs, x_best_curr)
            x_new = tf.clip_by_value(x_new, tf.gather(lower, active), tf.gather(upper, active))
            margin_new = margin(x_new, labels_curr)

            improved = margin_new < margin_curr
            x_kept = tf.where(tf.reshape(improved, [-1, 1, 1, 1]), x_new, x_best_curr)
            margin_kept = tf.where(improved, margin_new, margin_curr)
            x_best = tf.tensor_scatter_nd_update(x_best, active[:, None], x_kept)
            margin_best = tf.tensor_scatter_nd_update(margin_best, active[:, None], margin_kept)
            return i + 1, x_best, margin_best

        def keep_going(i, x_best, margin_best):
            return tf.logical_and(i < n_queries, tf.reduce_any(margin_best > 0.0))

        _, x_best, _ = tf.while_loop(keep_going, body, (tf.constant(0), x_best, margin_best))
        return x_best

    return run

"""FAB-T: the targeted Fast Adaptive Boundary attack, L-inf (Croce & Hein 2020a).

FAB looks for the *smallest* L-inf perturbation that changes the decision. Each iteration
linearises ``z_target - z_y`` at the current point ``x1``, projects both ``x1`` and the clean
point ``x0`` onto that hyperplane intersected with the box ``[0, 1]^d``, and moves to a convex
combination of the two projections (biased towards the one near ``x0`` by at most
``alpha_max``), overshooting by ``eta``. Once a point is adversarial it is pulled back towards
``x0`` by ``beta``. A found perturbation counts for AutoAttack only if its norm is <= eps.

The targets are the classes ranked 2nd, 3rd, ... by the clean logits; the whole loop of one
target runs inside a ``tf.function``, one gradient of ``z_target - z_y`` per iteration.
"""

import tensorflow as tf

from dgad_tf.autoattack._common import (
    attack_still_robust,
    cached_function,
    check_eps,
    check_positive_int,
    logits_of,
    prepare_inputs,
)

# Floor of the projection distances, as in the reference, so alpha is always defined.
_MIN_DISTANCE = 1e-8
_NO_SUCCESS = 1e10


def project_linf_hyperplane_box(points, w, b):
    """Minimal L-inf step from each point onto ``{z : w.z = b}`` inside the box ``[0, 1]^D``.

    Solves ``min ||d||_inf s.t. w.(t + d) = b, 0 <= t + d <= 1`` row by row. Moving every
    coordinate by ``lambda`` towards the side that brings ``w.z`` to ``b`` (but not past its
    box edge) changes ``w.z`` by the piecewise-linear, nondecreasing
    ``g(lambda) = sum_i |w_i| min(lambda, p_i)`` where ``p_i`` is the room to that edge. After
    sorting ``p`` the breakpoint segment that contains ``g(lambda) = |w.t - b|`` is found in
    one pass (cumulative sums), and ``lambda`` solves the linear piece there. When even the box
    corner does not reach the hyperplane, that corner (the box point closest to it) is
    returned, as in the reference. Coordinates with ``w_i = 0`` never move.

    Args:
        points: float tensor ``[N, D]`` in ``[0, 1]``.
        w: float tensor ``[N, D]``, hyperplane normals.
        b: float tensor ``[N]``, offsets.

    Returns:
        float32 tensor ``[N, D]``, the step ``d``.
    """
    points = tf.cast(points, tf.float32)
    w = tf.cast(w, tf.float32)
    b = tf.cast(b, tf.float32)
    residual = tf.reduce_sum(w * points, axis=1) - b
    side = tf.where(residual >= 0.0, 1.0, -1.0)[:, None]
    needed = tf.abs(residual)[:, None]
    oriented_w = side * w
    # Room to move in the direction that lowers oriented_w . z.
    room = tf.where(oriented_w < 0.0, 1.0 - points, points)
    order = tf.argsort(room, axis=1, stable=True)
    sorted_room = tf.gather(room, order, batch_dims=1)
    sorted_weight = tf.gather(tf.abs(w), order, batch_dims=1)
    weighted_room = sorted_weight * sorted_room
    cum_weighted_room = tf.cumsum(weighted_room, axis=1)
    cum_weight = tf.cumsum(sorted_weight, axis=1)
    total_weight = cum_weight[:, -1:]
    # g at each breakpoint lambda = sorted_room[k]: the first k+1 coordinates are saturated.
    g_at_breakpoints = cum_weighted_room + sorted_room * (total_weight - cum_weight)
    n_below = tf.reduce_sum(tf.cast(g_at_breakpoints < needed, tf.int32), axis=1)
    dim = tf.shape(points)[1]
    feasible = n_below < dim
    segment = tf.minimum(n_below, dim - 1)[:, None]
    saturated_sum = tf.gather(cum_weighted_room - weighted_room, segment, batch_dims=1)
    free_weight = tf.gather(total_weight - cum_weight + sorted_weight, segment, batch_dims=1)
    lam = tf.maximum((needed - saturated_sum) / tf.maximum(free_weight, 1e-30), 0.0)
    lam = tf.where(feasible[:, None], lam, tf.constant(float("inf")))
    step = -tf.sign(oriented_w) * tf.minimum(lam, room)
    return tf.where(w != 0.0, step, 0.0)


def fab_targeted(
    model_fn,
    x,
    labels,
    *,
    eps,
    n_iter=100,
    n_target_classes=9,
    n_restarts=1,
    alpha_max=0.1,
    eta=1.05,
    beta=0.9,
    seed=0,
):
    """Targeted FAB under an L-inf bound; returns points fooled within ``eps``.

    For each target (clean-logit rank 2, 3, ...) and restart, FAB runs ``n_iter`` iterations on
    the points still robust. The first restart starts at the clean point, later ones at a
    random point at L-inf distance ``eps / 2``, as in the reference.

    Args:
        model_fn: callable ``x -> logits`` (model in inference mode).
        x: float array/tensor ``[B, H, W, C]`` in ``[0, 1]``.
        labels: int array/tensor ``[B]``.
        eps: L-inf radius in pixel units, in ``[0, 1]``.
        n_iter: iterations per target and restart. Defaults to 100.
        n_target_classes: number of targets; clipped to ``num_classes - 1``. Defaults to 9.
        n_restarts: restarts per target. Defaults to 1.
        alpha_max: largest weight of the projection of the clean point. Defaults to 0.1.
        eta: overshoot factor of the projection step. Defaults to 1.05.
        beta: backward-step factor towards the clean point. Defaults to 0.9.
        seed: seed of the random restarts. Defaults to 0.

    Returns:
        float32 tensor like ``x``: adversarial (within eps) where found, else ``x``.

    Example:
        >>> x_adv = fab_targeted(lambda x: model(x, training=False), x, y, eps=8 / 255)
    """
    check_eps(eps)
    check_positive_int("n_iter", n_iter)
    check_positive_int("n_target_classes", n_target_classes)
    check_positive_int("n_restarts", n_restarts)
    if not 0.0 <= alpha_max <= 1.0:
        raise ValueError(f"`alpha_max` must be in [0, 1]; received alpha_max={alpha_max}")
    if not eta > 0.0:
        raise ValueError(f"`eta` must be > 0; received eta={eta}")
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"`beta` must be in [0, 1]; received beta={beta}")
    x, labels = prepare_inputs(x, labels)
    num_classes = int(logits_of(model_fn, x[:1]).shape[1])
    if num_classes < 2:
        raise ValueError(f"FAB-T needs >= 2 classes; the model has {num_classes}")
    n_targets = min(n_target_classes, num_classes - 1)
    key = ("fab-t", tuple(x.shape[1:]), n_iter, float(alpha_max), float(eta), float(beta))
    run = cached_function(
        model_fn,
        key,
        lambda: _build_fab_run(
            model_fn, tuple(x.shape[1:]), n_iter, float(alpha_max), float(eta), float(beta)
        ),
    )

    def attempt(index, x_sub, labels_sub):
        rank = 2 + index // n_restarts
        ranking = tf.argsort(
            logits_of(model_fn, x_sub), axis=1, direction="DESCENDING", stable=True
        )
        targets = ranking[:, rank - 1]
        if index % n_restarts == 0:
            x_start = x_sub
        else:
            x_start = _half_eps_start(x_sub, eps, seed, stream=index)
        x_adv, _ = run(x_sub, x_start, labels_sub, targets)
        return x_adv

    return attack_still_robust(model_fn, x, labels, attempt, n_targets * n_restarts, eps)


def _half_eps_start(x, eps, seed, stream):
    noise = 2.0 * tf.random.stateless_uniform(tf.shape(x), seed=[seed, 10_000 + stream]) - 1.0
    largest = tf.reduce_max(tf.abs(tf.reshape(noise, [tf.shape(x)[0], -1])), axis=1)
    largest = tf.reshape(largest, [-1] + [1] * (x.shape.rank - 1))
    return tf.clip_by_value(x + 0.5 * eps * noise / largest, 0.0, 1.0)


def _build_fab_run(model_fn, input_shape, n_iter, alpha_max, eta, beta):
    """Traces one FAB-T run: returns ``(x_adv, l_inf_norm)`` (clean x / 1e10 if not found)."""
    sample_shape = [-1] + [1] * len(input_shape)
    spec = tf.TensorSpec([None, *input_shape], tf.float32)
    label_spec = tf.TensorSpec([None], tf.int32)

    def per_sample(values):
        return tf.reshape(values, sample_shape)

    @tf.function(input_signature=[spec, spec, label_spec, label_spec])
    def run(x, x_start, labels, targets):
        batch = tf.shape(x)[0]
        x0 = tf.reshape(x, [batch, -1])

        def body(i, x1, x_adv, best_norm):
            with tf.GradientTape() as tape:
                tape.watch(x1)
                logits = logits_of(model_fn, x1)
                difference = tf.gather(logits, targets, axis=1, batch_dims=1) - tf.gather(
                    logits, labels, axis=1, batch_dims=1
                )
                total = tf.reduce_sum(difference)
            gradient = tape.gradient(total, x1, unconnected_gradients=tf.UnconnectedGradients.ZERO)
            gradient = tf.reshape(gradient, [batch, -1])
            x1_flat = tf.reshape(x1, [batch, -1])
            # Linearisation: difference(x1) + gradient.(z - x1) = 0  <=>  gradient.z = offset.
            offset = tf.reduce_sum(gradient * x1_flat, axis=1) - difference
            steps = project_linf_hyperplane_box(
                tf.concat([x1_flat, x0], 0),
                tf.concat([gradient, gradient], 0),
                tf.concat([offset, offset], 0),
            )
            step_from_x1, step_from_x0 = steps[:batch], steps[batch:]
            distance = tf.maximum(tf.reduce_max(tf.abs(steps), axis=1), _MIN_DISTANCE)
            distance_x1, distance_x0 = distance[:batch], distance[batch:]
            alpha = tf.clip_by_value(distance_x1 / (distance_x1 + distance_x0), 0.0, alpha_max)[
                :, None
            ]
            x1_flat = tf.clip_by_value(
                (x1_flat + eta * step_from_x1) * (1.0 - alpha) + (x0 + eta * step_from_x0) * alpha,
                0.0,
                1.0,
            )
            x1 = tf.reshape(x1_flat, tf.shape(x))

            is_adv = tf.not_equal(
                tf.argmax(logits_of(model_fn, x1), axis=1, output_type=tf.int32), labels
            )
            norm = tf.reduce_max(tf.abs(x1_flat - x0), axis=1)
            better = tf.logical_and(is_adv, norm < best_norm)
            x_adv = tf.where(per_sample(better), x1, x_adv)
            best_norm = tf.where(better, norm, best_norm)
            # Backward step: from an adversarial point restart closer to the clean one.
            x1 = tf.where(per_sample(is_adv), x + (x1 - x) * beta, x1)
            return i + 1, x1, x_adv, best_norm

        state = (tf.constant(0), x_start, x, tf.fill([batch], _NO_SUCCESS))
        _, _, x_adv, best_norm = tf.while_loop(lambda i, *_: i < n_iter, body, state)
        return x_adv, best_norm

    return run

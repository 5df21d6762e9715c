"""Auto-PGD (APGD-CE, APGD-DLR) and its targeted variant APGD-T, L-inf.

APGD (Croce & Hein 2020, Algorithm 1) is PGD with momentum whose step size needs no tuning:
it starts at ``2 * eps`` and is halved at fixed checkpoints whenever the objective stopped
improving; each halving restarts from the best point found so far. The iteration loop is one
``tf.while_loop`` inside a ``tf.function`` traced once per (model, settings, input shape).

Only points that the model still classifies correctly are attacked, by each restart and each
target class in turn, as in the reference implementation; the input checks, random start and
still-robust bookkeeping it shares with FAB-T and Square are in ``_common``.
"""

import logging
import warnings

import numpy as np
import tensorflow as tf

from dgad_tf.autoattack._common import (
    attack_still_robust,
    cached_function,
    check_eps,
    check_positive_int,
    logits_of,
    prepare_inputs,
    random_linf_start,
)
from dgad_tf.autoattack.losses import cross_entropy_loss, dlr_loss, dlr_targeted_loss

logger = logging.getLogger(__name__)

_LOSSES = ("ce", "dlr")
# The momentum weight of the paper; the first step has none.
_MOMENTUM = 0.75
# Compiled attack loops, keyed by model and settings, so batches and restarts reuse one trace.


def apgd_checkpoints(n_iter):
    """Iterations after which APGD may halve its step size.

    The paper's schedule ``w_j = ceil(p_j * n_iter)`` with ``p_0 = 0``, ``p_1 = 0.22`` and
    ``p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)``, keeping the checkpoints before the
    last iteration. The fractions are kept in exact hundredths so that ``ceil`` never
    rounds up a float like ``0.41 * 100 = 41.000000000000004``.

    Args:
        n_iter: int >= 1, total number of iterations.

    Returns:
        Sorted list of distinct ints in ``[1, n_iter)``.

    Example:
        >>> apgd_checkpoints(100)
        [22, 41, 57, 70, 80, 87, 93, 99]
    """
    check_positive_int("n_iter", n_iter)
    previous, current = 0, 22
    checkpoints = []
    while True:
        w = -(-current * n_iter // 100)
        if w >= n_iter:
            return checkpoints
        if not checkpoints or w > checkpoints[-1]:
            checkpoints.append(w)
        previous, current = current, current + max(current - previous - 3, 6)


def apgd(model_fn, x, labels, *, eps, n_iter=100, loss="ce", n_restarts=1, rho=0.75, seed=0):
    """Untargeted APGD under an L-inf bound (APGD-CE or APGD-DLR).

    Each restart begins at a uniformly random point of the eps-ball and runs ``n_iter``
    iterations on the points not yet misclassified. The whole input is one batch; batching
    is the caller's (``run_autoattack``'s) job.

    Args:
        model_fn: callable ``x -> logits`` (model in inference mode).
        x: float array/tensor ``[B, H, W, C]`` in ``[0, 1]``.
        labels: int array/tensor ``[B]``.
        eps: L-inf radius in pixel units, in ``[0, 1]``.
        n_iter: iterations per restart. Defaults to 100.
        loss: ``"ce"`` (cross-entropy) or ``"dlr"``. Defaults to ``"ce"``.
        n_restarts: random restarts. Defaults to 1.
        rho: fraction of improving steps below which the step is halved. Defaults to 0.75.
        seed: seed of the random starts. Defaults to 0.

    Returns:
        float32 tensor like ``x``: adversarial where one was found, else ``x``.

    Example:
        >>> x_adv = apgd(lambda x: model(x, training=False), x, y, eps=8 / 255)
    """
    if loss not in _LOSSES:
        raise ValueError(f"`loss` must be one of {_LOSSES}; received loss={loss!r}")
    _check_apgd_args(eps, n_iter, n_restarts, rho)
    x, labels = prepare_inputs(x, labels)
    run = _apgd_function(model_fn, x.shape[1:], eps, n_iter, loss, rho)

    def attempt(index, x_sub, labels_sub):
        x_start = random_linf_start(x_sub, eps, seed, stream=index)
        x_adv, _, n_zero_grad = run(x_sub, x_start, labels_sub, labels_sub)
        _warn_zero_gradients(int(n_zero_grad))
        return x_adv

    return attack_still_robust(model_fn, x, labels, attempt, n_restarts, eps)


def apgd_targeted(
    model_fn, x, labels, *, eps, n_iter=100, n_target_classes=9, n_restarts=1, rho=0.75, seed=0
):
    """APGD-T: APGD on the targeted DLR loss, one run per target class, L-inf.

    The targets are the classes ranked 2nd, 3rd, ... by the clean logits of each point;
    every target gets ``n_iter`` iterations (and ``n_restarts`` restarts) on the points that
    are still robust.

    Args:
        model_fn: callable ``x -> logits`` (model in inference mode).
        x: float array/tensor ``[B, H, W, C]`` in ``[0, 1]``.
        labels: int array/tensor ``[B]``.
        eps: L-inf radius in pixel units, in ``[0, 1]``.
        n_iter: iterations per target and restart. Defaults to 100.
        n_target_classes: number of target classes; clipped to ``num_classes - 1``.
            Defaults to 9.
        n_restarts: random restarts per target. Defaults to 1.
        rho: fraction of improving steps below which the step is halved. Defaults to 0.75.
        seed: seed of the random starts. Defaults to 0.

    Returns:
        float32 tensor like ``x``: adversarial where one was found, else ``x``.
    """
    _check_apgd_args(eps, n_iter, n_restarts, rho)
    check_positive_int("n_target_classes", n_target_classes)
    x, labels = prepare_inputs(x, labels)
    num_classes = int(logits_of(model_fn, x[:1]).shape[1])
    if num_classes < 4:
        raise ValueError(
            f"APGD-T's targeted DLR loss needs >= 4 classes; the model has {num_classes}"
        )
    n_targets = min(n_target_classes, num_classes - 1)
    run = _apgd_function(model_fn, x.shape[1:], eps, n_iter, "dlr-targeted", rho)

    def attempt(index, x_sub, labels_sub):
        rank = 2 + index // n_restarts
        ranking = tf.argsort(
            logits_of(model_fn, x_sub), axis=1, direction="DESCENDING", stable=True
        )
        targets = ranking[:, rank - 1]
        x_start = random_linf_start(x_sub, eps, seed, stream=index)
        x_adv, _, n_zero_grad = run(x_sub, x_start, labels_sub, targets)
        _warn_zero_gradients(int(n_zero_grad))
        return x_adv

    return attack_still_robust(model_fn, x, labels, attempt, n_targets * n_restarts, eps)


def _apgd_function(model_fn, input_shape, eps, n_iter, loss, rho):
    key = ("apgd", tuple(input_shape), float(eps), n_iter, loss, float(rho))
    return cached_function(
        model_fn,
        key,
        lambda: _build_apgd_run(model_fn, tuple(input_shape), float(eps), n_iter, loss, float(rho)),
    )


def _build_apgd_run(model_fn, input_shape, eps, n_iter, loss, rho, trace=False):
    """Traces one APGD run: returns ``(x_best_adv, still_robust, n_zero_gradient_points)``.

    With ``trace`` (for tests) a fourth output holds, per iteration, the step size the
    iteration used (``"step_size"``, ``[n_iter, B]``) and the iterate it left, after any
    restart from the best point (``"x"``, ``[n_iter, B, ...]``); the attack is unchanged.
    """
    checkpoints = apgd_checkpoints(n_iter)
    is_checkpoint = np.zeros([n_iter], bool)
    interval = np.ones([n_iter], np.float32)
    previous = 0
    for w in checkpoints:
        # Checkpoint w_j is reached once w_j steps have been taken, i.e. at loop index w_j - 1.
        is_checkpoint[w - 1] = True
        interval[w - 1] = w - previous
        previous = w
    is_checkpoint = tf.constant(is_checkpoint)
    interval = tf.constant(interval)
    sample_shape = [-1] + [1] * len(input_shape)

    def objective(logits, labels, targets):
        if loss == "ce":
            return cross_entropy_loss(logits, labels)
        if loss == "dlr":
            return dlr_loss(logits, labels)
        return dlr_targeted_loss(logits, labels, targets)

    def loss_and_gradient(x_adv, labels, targets):
        with tf.GradientTape() as tape:
            tape.watch(x_adv)
            logits = tf.cast(model_fn(x_adv), tf.float32)
            per_sample = objective(logits, labels, targets)
            total = tf.reduce_sum(per_sample)
        # A model cut off from its input (stop_gradient) gets zero gradients, not an error.
        gradient = tape.gradient(total, x_adv, unconnected_gradients=tf.UnconnectedGradients.ZERO)
        correct = tf.equal(tf.argmax(logits, axis=1, output_type=tf.int32), labels)
        return per_sample, gradient, correct

    def per_sample(mask):
        return tf.reshape(mask, sample_shape)

    spec = tf.TensorSpec([None, *input_shape], tf.float32)
    label_spec = tf.TensorSpec([None], tf.int32)

    @tf.function(input_signature=[spec, spec, label_spec, label_spec])
    def run(x, x_start, labels, targets):
        lower = tf.maximum(x - eps, 0.0)
        upper = tf.minimum(x + eps, 1.0)
        loss_start, gradient, robust = loss_and_gradient(x_start, labels, targets)
        gradient_size = tf.reduce_sum(tf.abs(tf.reshape(gradient, [tf.shape(x)[0], -1])), 1)
        n_zero_gradient = tf.reduce_sum(tf.cast(gradient_size == 0.0, tf.int32))
        step_size = tf.fill(tf.shape(loss_start), 2.0 * eps)

        def body(
            i,
            x_adv,
            x_prev,
            gradient,
            x_best,
            gradient_best,
            loss_best,
            x_best_adv,
            robust,
            step_size,
            loss_prev,
            n_increases,
            loss_best_at_check,
            halved_at_check,
            *history,
        ):
            step_used = step_size
            # Momentum from the second step on: z is the plain PGD step, x_next mixes it with
            # the previous displacement; both are clipped into the eps-ball and the box.
            momentum = tf.where(i > 0, _MOMENTUM, 1.0)
            z = tf.clip_by_value(x_adv + per_sample(step_size) * tf.sign(gradient), lower, upper)
            x_next = tf.clip_by_value(
                x_adv + momentum * (z - x_adv) + (1.0 - momentum) * (x_adv - x_prev), lower, upper
            )
            loss_next, gradient_next, correct = loss_and_gradient(x_next, labels, targets)
            x_best_adv = tf.where(per_sample(correct), x_best_adv, x_next)
            robust = tf.logical_and(robust, correct)

            n_increases += tf.cast(loss_next > loss_prev, tf.float32)
            improved = loss_next > loss_best
            x_best = tf.where(per_sample(improved), x_next, x_best)
            gradient_best = tf.where(per_sample(improved), gradient_next, gradient_best)
            loss_best = tf.where(improved, loss_next, loss_best)

            # At a checkpoint, halve where (1) at most rho of the steps since the last
            # checkpoint increased the loss (the reference's `<=`), or (2) the step was not
            # halved last time and the best loss has not improved since; those points restart
            # from their best point with its gradient.
            at_check = is_checkpoint[i]
            too_few_increases = n_increases <= rho * interval[i]
            stalled = tf.logical_and(
                tf.logical_not(halved_at_check), loss_best_at_check >= loss_best
            )
            halve = tf.logical_and(at_check, tf.logical_or(too_few_increases, stalled))
            step_size = tf.where(halve, step_size / 2.0, step_size)
            x_after = tf.where(per_sample(halve), x_best, x_next)
            gradient_after = tf.where(per_sample(halve), gradient_best, gradient_next)
            loss_prev = tf.where(halve, loss_best, loss_next)
            halved_at_check = tf.where(at_check, halve, halved_at_check)
            loss_best_at_check = tf.where(at_check, loss_best, loss_best_at_check)
            n_increases = tf.where(at_check, tf.zeros_like(n_increases), n_increases)
            state = (
                i + 1,
                x_after,
                x_adv,
                gradient_after,
                x_best,
                gradient_best,
                loss_best,
                x_best_adv,
                robust,
                step_size,
                loss_prev,
                n_increases,
                loss_best_at_check,
                halved_at_check,
            )
            if trace:
                state += (history[0].write(i, step_used), history[1].write(i, x_after))
            return state

        state = (
            tf.constant(0),
            x_start,
            x_start,
            gradient,
            x_start,
            gradient,
            loss_start,
            x_start,
            robust,
            step_size,
            loss_start,
            tf.zeros_like(loss_start),
            loss_start,
            tf.ones_like(robust),
        )
        if trace:
            state += (
                tf.TensorArray(tf.float32, size=n_iter),
                tf.TensorArray(tf.float32, size=n_iter),
            )
        state = tf.while_loop(lambda i, *_: i < n_iter, body, state)
        if trace:
            return (
                state[7],
                state[8],
                n_zero_gradient,
                {"step_size": state[14].stack(), "x": state[15].stack()},
            )
        return state[7], state[8], n_zero_gradient

    return run


def _check_apgd_args(eps, n_iter, n_restarts, rho):
    check_eps(eps)
    check_positive_int("n_iter", n_iter)
    check_positive_int("n_restarts", n_restarts)
    if not 0.0 < rho <= 1.0:
        raise ValueError(f"`rho` must be in (0, 1]; received rho={rho}")


def _warn_zero_gradients(n_points):
    if n_points:
        message = (
            f"{n_points} points have an all-zero input gradient at the start of APGD; "
            "gradient-based results may be unreliable (possible gradient masking)."
        )
        logger.warning(message)
        warnings.warn(message, RuntimeWarning, stacklevel=3)

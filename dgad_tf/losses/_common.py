"""What every loss shares: argument checks, the batch divisor, KL and cross-entropy on logits,
and the "best wrong class" that ELS, the CW margin and AutoAttack's losses use."""

import numbers

import tensorflow as tf

from dgad_tf.losses._checks import (  # noqa: F401 (the loss functions import them from here)
    _check_choice,
    _check_non_negative,
    _check_positive,
    _check_unit_interval,
)


def _check_global_batch_size(global_batch_size):
    if global_batch_size is None:
        return
    if isinstance(global_batch_size, bool) or (
        isinstance(global_batch_size, numbers.Number)
        and (global_batch_size <= 0 or int(global_batch_size) != global_batch_size)
    ):
        raise ValueError(
            "`global_batch_size` must be a positive integer or None; "
            f"received global_batch_size={global_batch_size}"
        )


def _batch_denominator(reference, global_batch_size):
    """Float32 divisor for summed per-sample terms: the global batch size, else the batch's."""
    _check_global_batch_size(global_batch_size)
    if global_batch_size is None:
        return tf.cast(tf.shape(reference)[0], tf.float32)
    return tf.cast(global_batch_size, tf.float32)


def _as_labels(labels):
    return tf.reshape(tf.cast(labels, tf.int32), [-1])


def _logits(logits):
    # Mixed-precision models emit float16 logits; softmax/KL in float16 loses too much.
    return tf.cast(logits, tf.float32)


def _cross_entropy(logits, labels):
    return tf.nn.sparse_softmax_cross_entropy_with_logits(
        labels=_as_labels(labels), logits=_logits(logits)
    )


def kl_divergence(p_logits, q_logits, temperature=1.0, p_log_epsilon=0.0):
    """Per-sample KL(softmax(p/T) || softmax(q/T)), computed stably from logits.

    Gradients flow to both arguments; callers `stop_gradient` whichever side is a fixed target.

    Args:
        p_logits: `[B, C]` logits of the target distribution p.
        q_logits: `[B, C]` logits of the approximating distribution q.
        temperature: softmax temperature T > 0, applied to both sides. Defaults to `1.0`.
        p_log_epsilon: when > 0, the target's own term is sum p·log(p + p_log_epsilon), as RSLAD's
            code writes its KL (`-a*b + torch.log(b + 1e-5)*b`, b the teacher's softmax): the
            value moves by a constant of p, the gradient with respect to q stays the exact KL
            gradient. 0 uses the exact log p. Defaults to `0.0`.

    Returns:
        A `[B]` float32 tensor of KL divergences (natural log).
    """
    _check_positive("temperature", temperature)
    _check_non_negative("p_log_epsilon", p_log_epsilon)
    log_p = tf.nn.log_softmax(_logits(p_logits) / temperature, axis=-1)
    log_q = tf.nn.log_softmax(_logits(q_logits) / temperature, axis=-1)
    p = tf.exp(log_p)
    if p_log_epsilon:
        return tf.reduce_sum(p * (tf.math.log(p + p_log_epsilon) - log_q), axis=-1)
    return tf.reduce_sum(p * (log_p - log_q), axis=-1)


def largest_other_logit(logits, labels):
    """Value and index of the largest logit among the classes other than `labels` (first on ties).

    The one definition of "the best wrong class" that ELS, the CW margin and AutoAttack's DLR and
    margin losses share.

    Args:
        logits: `[B, C]` logits.
        labels: `[B]` integer true classes.
    """
    num_classes = tf.shape(logits)[-1]
    true_class = tf.one_hot(labels, num_classes, on_value=True, off_value=False)
    others = tf.where(true_class, tf.constant(logits.dtype.min, logits.dtype), logits)
    other_index = tf.argmax(others, axis=-1, output_type=tf.int32)
    return tf.reduce_max(others, axis=-1), other_index


def swap_true_with_max(logits, labels, mask):
    """Swaps the true-class logit with the largest other-class logit, on masked rows only.

    This is the Error-corrective Label Swapping (ELS) step of DGAD: where the largest other-class
    logit exceeds the true one, the swap makes the true class the prediction while keeping every
    logit value (the "dark knowledge"). Masked rows are swapped unconditionally, so callers mask
    only rows that need it. The largest other class is the first index on ties, like `tf.argmax`.
    Values are moved, never recomputed, so the result is bit-exact.

    Args:
        logits: `[B, C]` logits.
        labels: `[B]` integer true classes.
        mask: `[B]` booleans; rows where it is False are returned unchanged.

    Returns:
        A `[B, C]` tensor with the same dtype as `logits`.
    """
    logits = tf.convert_to_tensor(logits)
    labels = _as_labels(labels)
    num_classes = tf.shape(logits)[-1]
    true_value = tf.gather(logits, labels, axis=-1, batch_dims=1)
    other_value, other_index = largest_other_logit(logits, labels)
    is_true = tf.cast(tf.one_hot(labels, num_classes), tf.bool)
    is_other = tf.cast(tf.one_hot(other_index, num_classes), tf.bool)
    swapped = tf.where(
        is_true, other_value[:, None], tf.where(is_other, true_value[:, None], logits)
    )
    return tf.where(tf.reshape(tf.cast(mask, tf.bool), [-1, 1]), swapped, logits)


def _count(mask):
    return tf.reduce_sum(tf.cast(mask, tf.float32))

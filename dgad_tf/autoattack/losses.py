"""Per-sample objectives of AutoAttack: DLR, targeted DLR, margin and cross-entropy.

All functions take raw logits ``[B, K]`` and integer labels ``[B]`` and return one value per
sample ``[B]`` (float32), so the attacks can ascend them point by point. The DLR losses follow
Croce & Hein (2020), eq. (5) and its targeted variant: they are invariant to shifting and
rescaling the logits, which is what makes them robust to the logit scaling that fools
cross-entropy-based attacks.
"""

import tensorflow as tf

from dgad_tf.losses import largest_other_logit

# Keeps the DLR denominators away from zero when the top logits coincide.
_DLR_EPS = 1e-12


def _as_logits_and_labels(logits, labels):
    logits = tf.cast(tf.convert_to_tensor(logits), tf.float32)
    labels = tf.cast(tf.convert_to_tensor(labels), tf.int32)
    return logits, labels


def _true_logit(logits, labels):
    return tf.gather(logits, labels, axis=1, batch_dims=1)


def _max_other_logit(logits, labels):
    return largest_other_logit(logits, labels)[0]


def dlr_loss(logits, labels):
    """Untargeted Difference-of-Logits-Ratio loss, one value per sample.

    ``-(z_y - max_{i != y} z_i) / (z_pi1 - z_pi3)`` where ``z_pi1 >= z_pi2 >= ...`` are the
    sorted logits. It is positive exactly when the point is misclassified. Needs at least
    three classes.

    Args:
        logits: float tensor ``[B, K]``, K >= 3.
        labels: int tensor ``[B]`` of true classes.

    Returns:
        float32 tensor ``[B]``.

    Example:
        >>> dlr_loss([[3.0, 1.0, 0.0]], [0]).numpy()  # -(3 - 1) / (3 - 0)
        array([-0.6666667], dtype=float32)
    """
    logits, labels = _as_logits_and_labels(logits, labels)
    top = tf.math.top_k(logits, k=3).values
    margin = _true_logit(logits, labels) - _max_other_logit(logits, labels)
    return -margin / (top[:, 0] - top[:, 2] + _DLR_EPS)


def dlr_targeted_loss(logits, labels, target_labels):
    """Targeted DLR loss, one value per sample.

    ``-(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2)``: ascending it pushes the target logit
    ``z_t`` above the true one. Needs at least four classes.

    Args:
        logits: float tensor ``[B, K]``, K >= 4.
        labels: int tensor ``[B]`` of true classes.
        target_labels: int tensor ``[B]`` of target classes.

    Returns:
        float32 tensor ``[B]``.

    Example:
        >>> dlr_targeted_loss([[4.0, 2.0, 1.0, 0.0]], [0], [1]).numpy()  # -(4-2)/(4-0.5)
        array([-0.5714286], dtype=float32)
    """
    logits, labels = _as_logits_and_labels(logits, labels)
    target_labels = tf.cast(tf.convert_to_tensor(target_labels), tf.int32)
    top = tf.math.top_k(logits, k=4).values
    difference = _true_logit(logits, labels) - _true_logit(logits, target_labels)
    return -difference / (top[:, 0] - 0.5 * (top[:, 2] + top[:, 3]) + _DLR_EPS)


def margin_loss(logits, labels):
    """Classification margin ``z_y - max_{i != y} z_i``; <= 0 means misclassified.

    Square Attack minimises it.

    Args:
        logits: float tensor ``[B, K]``.
        labels: int tensor ``[B]`` of true classes.

    Returns:
        float32 tensor ``[B]``.
    """
    logits, labels = _as_logits_and_labels(logits, labels)
    return _true_logit(logits, labels) - _max_other_logit(logits, labels)


def cross_entropy_loss(logits, labels):
    """Per-sample softmax cross-entropy of the true class.

    Args:
        logits: float tensor ``[B, K]``.
        labels: int tensor ``[B]`` of true classes.

    Returns:
        float32 tensor ``[B]``.
    """
    logits, labels = _as_logits_and_labels(logits, labels)
    return tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)

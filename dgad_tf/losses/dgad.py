"""The DGAD loss: MAP, ELS and PCR (docs/method.md §4-§7), and the reference's MobileNetV2
weighting for reproducing those rows (docs/method.md §7.5)."""

import tensorflow as tf

from dgad_tf.losses._checks import DGAD_WEIGHTINGS
from dgad_tf.losses._common import (
    _as_labels,
    _batch_denominator,
    _check_choice,
    _check_non_negative,
    _count,
    _logits,
    kl_divergence,
    largest_other_logit,
    swap_true_with_max,
)


def dgad_loss(
    student_logits_clean,
    student_logits_adv,
    teacher_logits_clean,
    teacher_logits_adv,
    labels,
    *,
    beta=1.0,
    use_map=True,
    use_els=True,
    distill_weight=1.0,
    weighting="standard",
    reference_batch_size=None,
    global_batch_size=None,
):
    """DGAD student loss: partitioned, label-swapped distillation plus consistency regularisation.

    With M = {i : argmax t_clean_i != y_i} (Misclassification-Aware Partitioning),

        total = distill_weight / B
                * [ sum_{i in M}     KL(softmax(t~_clean_i) || softmax(s_clean_i))
                  + sum_{i not in M} KL(softmax(t~_adv_i)   || softmax(s_adv_i)) ]
                + beta * PCR,
        PCR   = 1 / (B * C) * sum_i || softmax(s_adv_i) - softmax(s_clean_i) ||^2,

    where B is `global_batch_size` (else this batch's size). t~ are the teacher logits after
    Error-corrective Label Swapping: on the clean side every i in M has its true-class logit swapped
    with its largest logit; on the adversarial side every i with t_adv[y] < max_{j != y} t_adv[j]
    (strictly: a tie at the top is not swapped) is swapped likewise. `argmax` ties resolve to the
    lowest class index, so a sample whose true logit ties for the top with a lower class is in M,
    but its swap changes nothing. This is the reference's per-partition-normalised loss rewritten
    without division by |M| or B - |M| (finite for any |M|). Teacher logits receive no gradient.

    Args:
        student_logits_clean: `[B, C]` student logits on clean inputs (training mode).
        student_logits_adv: `[B, C]` student logits on adversarial inputs (training mode).
        teacher_logits_clean: `[B, C]` teacher logits on clean inputs.
        teacher_logits_adv: `[B, C]` teacher logits on adversarial inputs.
        labels: `[B]` integer labels.
        beta: weight of PCR, >= 0; 0 switches PCR off. Defaults to `1.0`.
        use_map: partition by teacher correctness; False puts every sample on the adversarial
            term (M empty). Defaults to `True`.
        use_els: swap teacher logits; False distils raw teacher logits. Defaults to `True`.
        distill_weight: weight of the distillation term, >= 0. Defaults to `1.0`.
        weighting: `"standard"` (the formula above) or `"reference_mobilenetv2"`, the reference
            code's MobileNetV2 branch reproduced for paper runs:
            `0.5 * ((|M|/bs) * Lc + (bs - |M|)/bs) * La` in place of the bracket, with
            `Lc = sum_{i in M} KL_clean_i / (|M| + 1e-10)`,
            `La = sum_{i not in M} KL_adv_i / (B - |M|)`
            (0 when every sample is in M, where the reference raises ZeroDivisionError) and bs the
            configured batch size. Its parenthesis multiplies the two KL means, so it needs the
            whole batch's sums: under a distribution strategy they are all-reduced and the
            per-replica totals still add up to the loss (and gradient) of the whole batch.
            Defaults to `"standard"`.
        reference_batch_size: bs of the reference weighting, the configured batch size. Defaults
            to `None` (the global batch size).
        global_batch_size: batch size across all replicas, or None for this batch's size.
            Defaults to `None`.

    Returns:
        Dict of float32 scalars: `total`, `distill` (the bracket above divided by B), `kl_clean`
        (mean KL over this replica's samples in M, 0 if none), `kl_adv` (mean KL over samples not in
        M, 0 if none), `pcr`, `num_misclassified` (|M| on this replica), `num_swapped_clean`
        (samples in M whose clean swap changed the logits) and `num_swapped_adv` (samples not in M
        whose adversarial swap changed the logits, i.e. the swaps that reach the loss).
    """
    _check_non_negative("beta", beta)
    _check_non_negative("distill_weight", distill_weight)
    _check_choice("weighting", weighting, DGAD_WEIGHTINGS)
    labels = _as_labels(labels)
    student_clean = _logits(student_logits_clean)
    student_adv = _logits(student_logits_adv)
    teacher_clean = tf.stop_gradient(_logits(teacher_logits_clean))
    teacher_adv = tf.stop_gradient(_logits(teacher_logits_adv))
    batch_divisor = _batch_denominator(labels, global_batch_size)

    teacher_prediction = tf.argmax(teacher_clean, axis=-1, output_type=tf.int32)
    if use_map:
        misclassified = tf.not_equal(teacher_prediction, labels)
    else:
        misclassified = tf.zeros_like(labels, dtype=tf.bool)

    if use_els:
        teacher_clean_swapped = swap_true_with_max(teacher_clean, labels, misclassified)
        true_adv = tf.gather(teacher_adv, labels, axis=-1, batch_dims=1)
        largest_other_adv, _ = largest_other_logit(teacher_adv, labels)
        adv_needs_swap = true_adv < largest_other_adv
        teacher_adv_swapped = swap_true_with_max(teacher_adv, labels, adv_needs_swap)
        changed_clean = tf.reduce_any(tf.not_equal(teacher_clean_swapped, teacher_clean), axis=-1)
        changed_adv = tf.reduce_any(tf.not_equal(teacher_adv_swapped, teacher_adv), axis=-1)
        num_swapped_clean = _count(changed_clean & misclassified)
        num_swapped_adv = _count(changed_adv & ~misclassified)
    else:
        teacher_clean_swapped, teacher_adv_swapped = teacher_clean, teacher_adv
        num_swapped_clean = tf.constant(0.0)
        num_swapped_adv = tf.constant(0.0)

    kl_clean_per_sample = kl_divergence(teacher_clean_swapped, student_clean)
    kl_adv_per_sample = kl_divergence(teacher_adv_swapped, student_adv)
    zeros = tf.zeros_like(kl_clean_per_sample)
    # Both branches are finite for every row, so tf.where passes clean gradients.
    clean_part = tf.where(misclassified, kl_clean_per_sample, zeros)
    adv_part = tf.where(misclassified, zeros, kl_adv_per_sample)
    if weighting == "standard":
        distill = (tf.reduce_sum(clean_part) + tf.reduce_sum(adv_part)) / batch_divisor
    else:
        distill = _reference_mobilenetv2_distill(
            tf.reduce_sum(clean_part),
            tf.reduce_sum(adv_part),
            _count(misclassified),
            batch_divisor,
            batch_divisor
            if reference_batch_size is None
            else tf.cast(reference_batch_size, tf.float32),
        )

    num_classes = tf.cast(tf.shape(student_clean)[-1], tf.float32)
    squared_gap = tf.square(
        tf.nn.softmax(student_adv, axis=-1) - tf.nn.softmax(student_clean, axis=-1)
    )
    pcr = tf.reduce_sum(squared_gap) / (batch_divisor * num_classes)

    num_misclassified = _count(misclassified)
    num_rest = tf.cast(tf.size(labels), tf.float32) - num_misclassified
    return {
        "total": distill_weight * distill + beta * pcr,
        "distill": distill,
        "kl_clean": tf.math.divide_no_nan(tf.reduce_sum(clean_part), num_misclassified),
        "kl_adv": tf.math.divide_no_nan(tf.reduce_sum(adv_part), num_rest),
        "pcr": pcr,
        "num_misclassified": num_misclassified,
        "num_swapped_clean": num_swapped_clean,
        "num_swapped_adv": num_swapped_adv,
    }


def _cross_replica_sum(value):
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return value
    return context.all_reduce(tf.distribute.ReduceOp.SUM, value)


def _reference_mobilenetv2_distill(clean_sum, adv_sum, misclassified, global_batch, configured):
    """This replica's share of `0.5 * ((|M|/bs) * Lc + (bs - |M|)/bs) * La` (see `dgad_loss`).

    The term has a product of two batch-wide sums, Sc and Sa. Each replica returns
    k * (Sc_all * Sa + Sa_all * Sc - Sc_all * Sa_all / R) + w * Sa with the `_all` sums constant:
    the R shares add up to k * Sc * Sa + w * Sa and their gradients to its gradient.
    """
    replicas = 1.0
    context = tf.distribute.get_replica_context()
    if context is not None:
        replicas = tf.cast(context.num_replicas_in_sync, tf.float32)
    clean_all = tf.stop_gradient(_cross_replica_sum(clean_sum))
    adv_all = tf.stop_gradient(_cross_replica_sum(adv_sum))
    m = _cross_replica_sum(misclassified)
    inverse_rest = tf.math.divide_no_nan(1.0, global_batch - m)  # La = 0 when M is everything
    product_weight = 0.5 * (m / configured) / (m + 1e-10) * inverse_rest
    adv_weight = 0.5 * (configured - m) / configured * inverse_rest
    product = clean_all * adv_sum + adv_all * clean_sum - clean_all * adv_all / replicas
    return product_weight * product + adv_weight * adv_sum

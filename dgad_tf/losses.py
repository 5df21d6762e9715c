"""Training losses of DGAD and the baselines it is compared with, as pure functions on logits.

Every method loss returns a dict of scalar tensors that always has a `'total'` entry (the value to
differentiate) plus its separate terms for logging. Per-sample terms are summed and divided by
`global_batch_size` (the batch's own size when it is `None`), so the same function is exact on one
device and under `tf.distribute.MirroredStrategy`: each replica divides by the global batch size and
the per-replica totals add up to the loss of the whole batch.

KL(p || q) is always `sum_c p_c (log p_c - log q_c)` computed from logits with `log_softmax`. The
reference code of ARD, RSLAD and AdaAD (CIFAR-10) computes it with PyTorch's default
`nn.KLDivLoss()` reduction, which averages over batch *and* classes, i.e. divides the KL by the
number of classes C; `kl_reduction="class_mean"` on those losses reproduces that scale, and
`kl_scale` any further constant the reference multiplies in (RSLAD's CIFAR-100 `10 * mean`).
"""

import numbers

import tensorflow as tf

from dgad_tf.config import DGAD_WEIGHTINGS, KL_REDUCTIONS

__all__ = [
    "kl_divergence",
    "largest_other_logit",
    "swap_true_with_max",
    "dgad_loss",
    "pgd_at_loss",
    "trades_loss",
    "ard_loss",
    "rslad_loss",
    "adaad_loss",
    "iad_loss",
    "clean_loss",
]



def _check_non_negative(name, value):
    if isinstance(value, numbers.Number) and not value >= 0:
        raise ValueError(f"`{name}` must be >= 0; received {name}={value}")


def _check_unit_interval(name, value):
    if isinstance(value, numbers.Number) and not 0 <= value <= 1:
        raise ValueError(f"`{name}` must be in [0, 1]; received {name}={value}")


def _check_positive(name, value):
    if isinstance(value, numbers.Number) and not value > 0:
        raise ValueError(f"`{name}` must be > 0; received {name}={value}")


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
    """Float32 divisor for summed per-sample terms: the global batch size, else this batch's size."""
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


def kl_divergence(p_logits, q_logits, temperature=1.0, q_log_epsilon=0.0):
    """Per-sample KL(softmax(p/T) || softmax(q/T)), computed stably from logits.

    Gradients flow to both arguments; callers `stop_gradient` whichever side is a fixed target.

    Args:
        p_logits: `[B, C]` logits of the target distribution p.
        q_logits: `[B, C]` logits of the approximating distribution q.
        temperature: softmax temperature T > 0, applied to both sides. Defaults to `1.0`.
        q_log_epsilon: when > 0, log q is taken as log(q + q_log_epsilon), as RSLAD's code does
            (`torch.log(softmax + 1e-5)`); 0 uses the exact `log_softmax`. Defaults to `0.0`.

    Returns:
        A `[B]` float32 tensor of KL divergences (natural log).
    """
    _check_positive("temperature", temperature)
    _check_non_negative("q_log_epsilon", q_log_epsilon)
    log_p = tf.nn.log_softmax(_logits(p_logits) / temperature, axis=-1)
    if q_log_epsilon:
        log_q = tf.math.log(tf.nn.softmax(_logits(q_logits) / temperature, axis=-1) + q_log_epsilon)
    else:
        log_q = tf.nn.log_softmax(_logits(q_logits) / temperature, axis=-1)
    return tf.reduce_sum(tf.exp(log_p) * (log_p - log_q), axis=-1)


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

        total = distill_weight / B * [ sum_{i in M}     KL(softmax(t~_clean_i) || softmax(s_clean_i))
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
            `Lc = sum_{i in M} KL_clean_i / (|M| + 1e-10)`, `La = sum_{i not in M} KL_adv_i / (B - |M|)`
            (0 when every sample is in M, where the reference gives NaN) and bs the configured batch
            size. Its parenthesis multiplies the two KL means, so it needs the whole batch's sums:
            under a distribution strategy they are all-reduced and the per-replica totals still
            add up to the loss (and gradient) of the whole batch. Defaults to `"standard"`.
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
    if weighting not in DGAD_WEIGHTINGS:
        raise ValueError(f"`weighting` must be one of {', '.join(DGAD_WEIGHTINGS)}; "
                         f"received weighting={weighting!r}")
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
            tf.reduce_sum(clean_part), tf.reduce_sum(adv_part), _count(misclassified),
            batch_divisor, batch_divisor if reference_batch_size is None
            else tf.cast(reference_batch_size, tf.float32))

    num_classes = tf.cast(tf.shape(student_clean)[-1], tf.float32)
    squared_gap = tf.square(tf.nn.softmax(student_adv, axis=-1) - tf.nn.softmax(student_clean, axis=-1))
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


def _check_kl_reduction(kl_reduction, kl_scale):
    if kl_reduction not in KL_REDUCTIONS:
        raise ValueError(f"`kl_reduction` must be one of {', '.join(KL_REDUCTIONS)}; "
                         f"received kl_reduction={kl_reduction!r}")
    _check_positive("kl_scale", kl_scale)


def _kl_term(p_logits, q_logits, batch_divisor, temperature=1.0, kl_reduction="batchmean",
             kl_scale=1.0, q_log_epsilon=0.0):
    """kl_scale * sum_i KL_i / B, further divided by C for `kl_reduction="class_mean"`."""
    per_sample = kl_divergence(p_logits, q_logits, temperature, q_log_epsilon)
    term = kl_scale * tf.reduce_sum(per_sample) / batch_divisor
    if kl_reduction == "class_mean":
        term = term / tf.cast(tf.shape(p_logits)[-1], tf.float32)
    return term


def pgd_at_loss(student_logits_adv, labels, *, global_batch_size=None):
    """PGD adversarial training (Madry et al. 2018): cross-entropy on adversarial inputs.

    Args:
        student_logits_adv: `[B, C]` student logits on adversarial inputs.
        labels: `[B]` integer labels.
        global_batch_size: batch size across replicas, or None for this batch's size.
            Defaults to `None`.

    Returns:
        Dict of float32 scalars `total` and `ce_adv` (equal).
    """
    divisor = _batch_denominator(labels, global_batch_size)
    ce_adv = tf.reduce_sum(_cross_entropy(student_logits_adv, labels)) / divisor
    return {"total": ce_adv, "ce_adv": ce_adv}


def trades_loss(student_logits_clean, student_logits_adv, labels, *, beta=6.0, global_batch_size=None):
    """TRADES (Zhang et al. 2019): CE(s(x), y) + beta * KL(s(x) || s(x')).

    As in the TRADES code, the KL is summed over classes and averaged over the batch, and gradients
    flow through both the clean and the adversarial student outputs.

    Args:
        student_logits_clean: `[B, C]` student logits on clean inputs.
        student_logits_adv: `[B, C]` student logits on adversarial inputs.
        labels: `[B]` integer labels.
        beta: weight of the robustness term, >= 0. Defaults to `6.0`.
        global_batch_size: batch size across replicas, or None. Defaults to `None`.

    Returns:
        Dict of float32 scalars `total`, `ce_clean`, `kl_robust`.
    """
    _check_non_negative("beta", beta)
    divisor = _batch_denominator(labels, global_batch_size)
    ce_clean = tf.reduce_sum(_cross_entropy(student_logits_clean, labels)) / divisor
    kl_robust = _kl_term(student_logits_clean, student_logits_adv, divisor)
    return {"total": ce_clean + beta * kl_robust, "ce_clean": ce_clean, "kl_robust": kl_robust}


def ard_loss(
    student_logits_clean,
    student_logits_adv,
    teacher_logits_clean,
    labels,
    *,
    alpha=1.0,
    temperature=30.0,
    kl_reduction="batchmean",
    kl_scale=1.0,
    global_batch_size=None,
):
    """ARD (Goldblum et al. 2020): alpha*T^2*KL(t(x)/T || s(x')/T) + (1-alpha)*CE(s(x), y).

    Defaults are those of the ARD code for CIFAR-10 (`--alpha 1.0`, `--temp 30.0`), so by default
    the clean cross-entropy has weight 0.

    Args:
        student_logits_clean: `[B, C]` student logits on clean inputs.
        student_logits_adv: `[B, C]` student logits on adversarial inputs.
        teacher_logits_clean: `[B, C]` teacher logits on clean inputs (no gradient).
        labels: `[B]` integer labels.
        alpha: weight of the distillation term, in [0, 1]. Defaults to `1.0`.
        temperature: distillation temperature T > 0. Defaults to `30.0`.
        kl_reduction: `"batchmean"` (KL summed over classes, mean over the batch) or
            `"class_mean"` (also divided by C, as the reference's `nn.KLDivLoss()`). Defaults to
            `"batchmean"`.
        kl_scale: constant factor on the KL term. Defaults to `1.0`.
        global_batch_size: batch size across replicas, or None. Defaults to `None`.

    Returns:
        Dict of float32 scalars `total`, `kl_adv` (KL at temperature T, without T^2), `ce_clean`.
    """
    _check_unit_interval("alpha", alpha)
    _check_positive("temperature", temperature)
    _check_kl_reduction(kl_reduction, kl_scale)
    divisor = _batch_denominator(labels, global_batch_size)
    teacher = tf.stop_gradient(_logits(teacher_logits_clean))
    kl_adv = _kl_term(teacher, student_logits_adv, divisor, temperature, kl_reduction, kl_scale)
    ce_clean = tf.reduce_sum(_cross_entropy(student_logits_clean, labels)) / divisor
    total = alpha * temperature**2 * kl_adv + (1.0 - alpha) * ce_clean
    return {"total": total, "kl_adv": kl_adv, "ce_clean": ce_clean}


def rslad_loss(
    student_logits_clean,
    student_logits_adv,
    teacher_logits_clean,
    *,
    kl_reduction="batchmean",
    kl_scale=1.0,
    log_epsilon=0.0,
    global_batch_size=None,
):
    """RSLAD (Zi et al. 2021): 5/6 * KL(t(x) || s(x')) + 1/6 * KL(t(x) || s(x)).

    The KL is summed over classes and averaged over the batch. The released RSLAD code instead
    takes `torch.mean` over batch *and* classes (`kl_reduction="class_mean"`, KL / C) on CIFAR-10,
    `10 * torch.mean` on CIFAR-100 (add `kl_scale=10`), and the student's log-probabilities as
    `log(softmax + 1e-5)` (`log_epsilon=1e-5`).

    Args:
        student_logits_clean: `[B, C]` student logits on clean inputs.
        student_logits_adv: `[B, C]` student logits on adversarial inputs.
        teacher_logits_clean: `[B, C]` teacher logits on clean inputs (no gradient).
        kl_reduction: `"batchmean"` or `"class_mean"` (KL / C). Defaults to `"batchmean"`.
        kl_scale: constant factor on both KL terms. Defaults to `1.0`.
        log_epsilon: the student's log-probabilities are log(q + log_epsilon); 0 is exact.
            Defaults to `0.0`.
        global_batch_size: batch size across replicas, or None. Defaults to `None`.

    Returns:
        Dict of float32 scalars `total`, `kl_adv`, `kl_clean`.
    """
    _check_kl_reduction(kl_reduction, kl_scale)
    divisor = _batch_denominator(teacher_logits_clean, global_batch_size)
    teacher = tf.stop_gradient(_logits(teacher_logits_clean))
    scale = dict(kl_reduction=kl_reduction, kl_scale=kl_scale, q_log_epsilon=log_epsilon)
    kl_adv = _kl_term(teacher, student_logits_adv, divisor, **scale)
    kl_clean = _kl_term(teacher, student_logits_clean, divisor, **scale)
    total = 5.0 / 6.0 * kl_adv + 1.0 / 6.0 * kl_clean
    return {"total": total, "kl_adv": kl_adv, "kl_clean": kl_clean}


def adaad_loss(
    student_logits_clean,
    student_logits_adv,
    teacher_logits_clean,
    teacher_logits_adv,
    *,
    alpha=1.0,
    kl_reduction="batchmean",
    kl_scale=1.0,
    global_batch_size=None,
):
    """AdaAD (Huang et al. 2023): alpha * KL(t(x') || s(x')) + (1 - alpha) * KL(t(x) || s(x)).

    `alpha=1.0` is the AdaAD code's default (`--AdaAD_alpha 1.0`), which drops the clean term. The
    AdaAD code uses `nn.KLDivLoss()` (KL / C) on CIFAR-10 and KL / B on CIFAR-100 and Tiny
    ImageNet; `kl_reduction="class_mean"` reproduces the CIFAR-10 scale.

    Args:
        student_logits_clean: `[B, C]` student logits on clean inputs.
        student_logits_adv: `[B, C]` student logits on adversarial inputs.
        teacher_logits_clean: `[B, C]` teacher logits on clean inputs (no gradient).
        teacher_logits_adv: `[B, C]` teacher logits on adversarial inputs (no gradient).
        alpha: weight of the adversarial term, in [0, 1]. Defaults to `1.0`.
        kl_reduction: `"batchmean"` or `"class_mean"` (KL / C). Defaults to `"batchmean"`.
        kl_scale: constant factor on both KL terms. Defaults to `1.0`.
        global_batch_size: batch size across replicas, or None. Defaults to `None`.

    Returns:
        Dict of float32 scalars `total`, `kl_adv`, `kl_clean`.
    """
    _check_unit_interval("alpha", alpha)
    _check_kl_reduction(kl_reduction, kl_scale)
    divisor = _batch_denominator(teacher_logits_clean, global_batch_size)
    scale = dict(kl_reduction=kl_reduction, kl_scale=kl_scale)
    kl_adv = _kl_term(tf.stop_gradient(_logits(teacher_logits_adv)), student_logits_adv, divisor,
                      **scale)
    kl_clean = _kl_term(tf.stop_gradient(_logits(teacher_logits_clean)), student_logits_clean,
                        divisor, **scale)
    total = alpha * kl_adv + (1.0 - alpha) * kl_clean
    return {"total": total, "kl_adv": kl_adv, "kl_clean": kl_clean}


def iad_loss(
    student_logits_clean,
    student_logits_adv,
    teacher_logits_adv,
    labels,
    *,
    introspection,
    alpha=1.0,
    beta=0.1,
    temperature=30.0,
    global_batch_size=None,
):
    """IAD (Zhu et al. 2022) as the DGAD reference repository runs it.

        total = alpha * T^2 / B * sum_i KL(softmax(t(x'_i)/T) || softmax(s(x'_i)/T))
              + introspection * alpha / B * sum_i (1 - w_i) * KL(softmax(s(x_i)) || softmax(s(x'_i)))
              + (1 - alpha) * CE(s(x), y),
        w_i   = softmax(t(x'_i))[y_i] ** beta      (a constant: no gradient)

    The introspection term is off during the warm-up epochs (`introspection` 0) and on after them
    (1). Gradients flow through both student outputs of the introspection term.

    Args:
        student_logits_clean: `[B, C]` student logits on clean inputs (training mode).
        student_logits_adv: `[B, C]` student logits on adversarial inputs.
        teacher_logits_adv: `[B, C]` teacher logits on the adversarial inputs (no gradient).
        labels: `[B]` integer labels.
        introspection: 0 or 1 (a scalar tensor or number): whether the introspection term counts.
        alpha: weight of the distillation terms, in [0, 1]. Defaults to `1.0`.
        beta: exponent of the teacher's true-class confidence, >= 0. Defaults to `0.1`.
        temperature: distillation temperature T > 0. Defaults to `30.0`.
        global_batch_size: batch size across replicas, or None. Defaults to `None`.

    Returns:
        Dict of float32 scalars `total`, `kl_adv` (at temperature T, without T^2),
        `introspection` (the weighted mean, whether or not it counts yet) and `ce_clean`.
    """
    _check_unit_interval("alpha", alpha)
    _check_non_negative("beta", beta)
    _check_positive("temperature", temperature)
    divisor = _batch_denominator(labels, global_batch_size)
    teacher_adv = tf.stop_gradient(_logits(teacher_logits_adv))
    kl_adv = _kl_term(teacher_adv, student_logits_adv, divisor, temperature)
    true_confidence = tf.gather(tf.nn.softmax(teacher_adv, axis=-1), _as_labels(labels),
                                axis=-1, batch_dims=1)
    reliability = tf.stop_gradient(tf.pow(true_confidence, beta))
    introspective = tf.reduce_sum(
        (1.0 - reliability) * kl_divergence(student_logits_clean, student_logits_adv)) / divisor
    ce_clean = tf.reduce_sum(_cross_entropy(student_logits_clean, labels)) / divisor
    switch = tf.cast(introspection, tf.float32)
    total = (alpha * temperature**2 * kl_adv + switch * alpha * introspective
             + (1.0 - alpha) * ce_clean)
    return {"total": total, "kl_adv": kl_adv, "introspection": introspective,
            "ce_clean": ce_clean}


def clean_loss(student_logits_clean, labels, *, global_batch_size=None):
    """Standard (non-adversarial) training: cross-entropy on clean inputs.

    Args:
        student_logits_clean: `[B, C]` student logits on clean inputs.
        labels: `[B]` integer labels.
        global_batch_size: batch size across replicas, or None. Defaults to `None`.

    Returns:
        Dict of float32 scalars `total` and `ce_clean` (equal).
    """
    divisor = _batch_denominator(labels, global_batch_size)
    ce_clean = tf.reduce_sum(_cross_entropy(student_logits_clean, labels)) / divisor
    return {"total": ce_clean, "ce_clean": ce_clean}

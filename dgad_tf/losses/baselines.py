"""The baselines' losses the paper compares with: PGD-AT, TRADES, ARD, RSLAD, AdaAD, IAD,
AdaIAD, and clean training (docs/method.md §9; their reference scales, §9.9)."""

import tensorflow as tf

from dgad_tf.losses._checks import _check_kl_reduction
from dgad_tf.losses._common import (
    _as_labels,
    _batch_denominator,
    _check_non_negative,
    _check_positive,
    _check_unit_interval,
    _cross_entropy,
    _logits,
    kl_divergence,
)


def _kl_term(
    p_logits,
    q_logits,
    batch_divisor,
    temperature=1.0,
    kl_reduction="batchmean",
    kl_scale=1.0,
    p_log_epsilon=0.0,
):
    """kl_scale * sum_i KL_i / B, further divided by C for `kl_reduction="class_mean"`."""
    per_sample = kl_divergence(p_logits, q_logits, temperature, p_log_epsilon)
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


def trades_loss(
    student_logits_clean, student_logits_adv, labels, *, beta=6.0, global_batch_size=None
):
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
    `10 * torch.mean` on CIFAR-100 (add `kl_scale=10`), and writes each KL as
    `-a*b + log(b + 1e-5)*b` with a the student's log-softmax and b the teacher's softmax
    (`log_epsilon=1e-5`): the epsilon sits on the teacher's side, so it shifts the value by a
    constant and leaves the gradient the exact KL gradient.

    Args:
        student_logits_clean: `[B, C]` student logits on clean inputs.
        student_logits_adv: `[B, C]` student logits on adversarial inputs.
        teacher_logits_clean: `[B, C]` teacher logits on clean inputs (no gradient).
        kl_reduction: `"batchmean"` or `"class_mean"` (KL / C). Defaults to `"batchmean"`.
        kl_scale: constant factor on both KL terms. Defaults to `1.0`.
        log_epsilon: the teacher's term is sum b·log(b + log_epsilon) (b the teacher's softmax),
            as the reference writes it; 0 is the exact KL. Defaults to `0.0`.
        global_batch_size: batch size across replicas, or None. Defaults to `None`.

    Returns:
        Dict of float32 scalars `total`, `kl_adv`, `kl_clean`.
    """
    _check_kl_reduction(kl_reduction, kl_scale)
    divisor = _batch_denominator(teacher_logits_clean, global_batch_size)
    teacher = tf.stop_gradient(_logits(teacher_logits_clean))
    scale = dict(kl_reduction=kl_reduction, kl_scale=kl_scale, p_log_epsilon=log_epsilon)
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
    kl_adv = _kl_term(
        tf.stop_gradient(_logits(teacher_logits_adv)), student_logits_adv, divisor, **scale
    )
    kl_clean = _kl_term(
        tf.stop_gradient(_logits(teacher_logits_clean)), student_logits_clean, divisor, **scale
    )
    total = alpha * kl_adv + (1.0 - alpha) * kl_clean
    return {"total": total, "kl_adv": kl_adv, "kl_clean": kl_clean}


def _introspective_distillation(
    student_logits_clean,
    student_logits_adv,
    teacher_logits_distill,
    teacher_logits_adv,
    labels,
    introspection,
    alpha,
    beta,
    temperature,
    global_batch_size,
):
    """The loss IAD and AdaIAD share; they differ in the teacher input of the distilled term."""
    _check_unit_interval("alpha", alpha)
    _check_non_negative("beta", beta)
    _check_positive("temperature", temperature)
    divisor = _batch_denominator(labels, global_batch_size)
    teacher_distill = tf.stop_gradient(_logits(teacher_logits_distill))
    kl_adv = _kl_term(teacher_distill, student_logits_adv, divisor, temperature)
    true_confidence = tf.gather(
        tf.nn.softmax(tf.stop_gradient(_logits(teacher_logits_adv)), axis=-1),
        _as_labels(labels),
        axis=-1,
        batch_dims=1,
    )
    reliability = tf.stop_gradient(tf.pow(true_confidence, beta))
    introspective = (
        tf.reduce_sum((1.0 - reliability) * kl_divergence(student_logits_clean, student_logits_adv))
        / divisor
    )
    ce_clean = tf.reduce_sum(_cross_entropy(student_logits_clean, labels)) / divisor
    switch = tf.cast(introspection, tf.float32)
    total = (
        alpha * temperature**2 * kl_adv + switch * alpha * introspective + (1.0 - alpha) * ce_clean
    )
    return {"total": total, "kl_adv": kl_adv, "introspection": introspective, "ce_clean": ce_clean}


def adaiad_loss(
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
    """AdaIAD: AdaAD's attack with IAD's loss on the teacher's ADVERSARIAL outputs.

    What the DGAD reference repository runs as its IAD baseline (`AdaAD_with_IAD1`), and what
    AdaAD's README calls AdaIAD:

        total = alpha * T^2 / B * sum_i KL(softmax(t(x'_i)/T) || softmax(s(x'_i)/T))
              + introspection * alpha / B
                * sum_i (1 - w_i) * KL(softmax(s(x_i)) || softmax(s(x'_i)))
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
    return _introspective_distillation(
        student_logits_clean,
        student_logits_adv,
        teacher_logits_adv,
        teacher_logits_adv,
        labels,
        introspection,
        alpha,
        beta,
        temperature,
        global_batch_size,
    )


def iad_loss(
    student_logits_clean,
    student_logits_adv,
    teacher_logits_clean,
    teacher_logits_adv,
    labels,
    *,
    introspection,
    alpha=1.0,
    beta=0.1,
    temperature=1.0,
    global_batch_size=None,
):
    """IAD (Zhu et al. 2022, ZFancy/IAD `IAD-I.py`): ARD's loss with introspection.

        total = alpha * T^2 / B * sum_i KL(softmax(t(x_i)/T) || softmax(s(x'_i)/T))
              + introspection * alpha / B
                * sum_i (1 - w_i) * KL(softmax(s(x_i)) || softmax(s(x'_i)))
              + (1 - alpha) * CE(s(x), y),
        w_i   = softmax(t(x'_i))[y_i] ** beta      (a constant: no gradient)

    Unlike AdaIAD (`adaiad_loss`), the distilled teacher output is the one on the CLEAN input;
    the reliability w_i still comes from the teacher on the adversarial input. Its code's
    default temperature is 1.

    Args:
        student_logits_clean: `[B, C]` student logits on clean inputs (training mode).
        student_logits_adv: `[B, C]` student logits on adversarial inputs.
        teacher_logits_clean: `[B, C]` teacher logits on the clean inputs (no gradient).
        teacher_logits_adv: `[B, C]` teacher logits on the adversarial inputs (no gradient).
        labels: `[B]` integer labels.
        introspection: 0 or 1: whether the introspection term counts.
        alpha: weight of the distillation terms, in [0, 1]. Defaults to `1.0`.
        beta: exponent of the teacher's true-class confidence, >= 0. Defaults to `0.1`.
        temperature: distillation temperature T > 0. Defaults to `1.0`.
        global_batch_size: batch size across replicas, or None. Defaults to `None`.

    Returns:
        Dict of float32 scalars `total`, `kl_adv` (at temperature T, without T^2),
        `introspection` and `ce_clean`.
    """
    return _introspective_distillation(
        student_logits_clean,
        student_logits_adv,
        teacher_logits_clean,
        teacher_logits_adv,
        labels,
        introspection,
        alpha,
        beta,
        temperature,
        global_batch_size,
    )


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

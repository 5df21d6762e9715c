"""IGDM's term (Lee et al., ICLR 2025): the student's output difference across the adversarial
perturbation matched to the teacher's, a term any distillation method's loss can add."""

import tensorflow as tf

from dgad_tf.losses._common import _batch_denominator, _check_non_negative, _logits, kl_divergence


def igdm_loss(s_adv, s_mirror, t_adv, t_mirror, *, alpha=1.0, ramp=1.0, global_batch_size=None):
    """alpha·ramp·KL(softmax(t(x+δ) - t(x-δ)) ‖ softmax(s(x+δ) - s(x-δ))), mean over the batch.

    With δ = x' - x the perturbation of the method's training attack, the difference of a
    network's logits at x + δ and x - δ is, to first order, twice its input gradient along δ;
    matching the student's difference to the teacher's matches their input gradients without
    computing either (docs/method.md §9.11). The KL is summed over the batch and divided by
    `global_batch_size`, as PyTorch's `reduction="batchmean"` of the reference code
    (HongsinLee/saad igdm.py:40,57). No gradient flows to the teacher's logits.

    Args:
        s_adv: `[B, C]` student logits on x' = x + δ (training mode).
        s_mirror: `[B, C]` student logits on x - δ (training mode).
        t_adv: `[B, C]` teacher logits on x'.
        t_mirror: `[B, C]` teacher logits on x - δ.
        alpha: weight of the term, >= 0. Defaults to 1.0.
        ramp: the epoch ramp the caller computed, (epoch + 1) / total_epochs. Defaults to 1.0.
        global_batch_size: divisor of the summed KL. Defaults to None (this batch's size).

    Returns:
        A dict with `'total'`, the weighted term (what a method's loss adds), and `'igdm_kl'`,
        the batch-mean KL before weighting.
    """
    _check_non_negative("alpha", alpha)
    teacher_difference = tf.stop_gradient(_logits(t_adv) - _logits(t_mirror))
    student_difference = _logits(s_adv) - _logits(s_mirror)
    per_sample = kl_divergence(teacher_difference, student_difference)
    kl = tf.reduce_sum(per_sample) / _batch_denominator(per_sample, global_batch_size)
    weight = tf.cast(alpha, tf.float32) * tf.cast(ramp, tf.float32)
    return {"total": weight * kl, "igdm_kl": kl}

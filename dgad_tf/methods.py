"""The training methods: what each attacks, which forwards its loss needs, and its loss.

`METHOD_SPECS` maps `method.name` to a `MethodSpec`; the distiller's train step looks its method up
here, so adding a method is one spec and one loss function in `dgad_tf.losses`.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Optional

import tensorflow as tf

from dgad_tf import losses
from dgad_tf.config import METHODS, TEACHER_METHODS


@dataclasses.dataclass(frozen=True)
class StepContext:
    """What a method's loss may need besides the forward passes and its options.

    Args:
        introspection: IAD's switch (a float tensor, 0 during warm-up, 1 after it).
        batch_size: the configured global batch size (the reference's MobileNetV2 weighting
            divides by it), or None for each batch's own size.
    """

    introspection: tf.Tensor
    batch_size: Optional[int]


@dataclasses.dataclass(frozen=True)
class MethodSpec:
    """What a training method attacks and how it scores the student.

    Args:
        attack: "none", "ce" (CE to labels), "kl_teacher" (KL(t(x')‖s(x')), both moving),
            "kl_student_clean" (KL(s(x)‖s(x'))) or "kl_teacher_clean" (KL(t(x)‖s(x'))).
        needs_teacher: whether the method distils from a teacher.
        student_clean: whether the student's clean forward (training mode) enters the loss.
        loss: `(forwards, options: MethodConfig, global_batch, StepContext) -> dict` of terms.
        reference_forwards: the student's training-mode forwards in the order of the method's
            reference code ("clean", "adv"; a "+" marks a forward whose output the loss does not
            use: it only moves batch-norm statistics). Defaults to ("clean", "adv").
        reference_train_mode_attack: the reference attacks with the student in training mode.
            Defaults to False.
    """

    attack: str
    needs_teacher: bool
    student_clean: bool
    loss: Callable[..., dict]
    reference_forwards: tuple = ("clean", "adv")
    reference_train_mode_attack: bool = False


def _clean(f, o, gbs, step):
    return losses.clean_loss(f["s_clean"], f["y"], global_batch_size=gbs)


def _pgd_at(f, o, gbs, step):
    return losses.pgd_at_loss(f["s_adv"], f["y"], global_batch_size=gbs)


def _trades(f, o, gbs, step):
    return losses.trades_loss(
        f["s_clean"], f["s_adv"], f["y"], beta=o.trades_beta, global_batch_size=gbs
    )


def _ard(f, o, gbs, step):
    return losses.ard_loss(
        f["s_clean"],
        f["s_adv"],
        f["t_clean"],
        f["y"],
        alpha=o.ard_alpha,
        temperature=o.ard_temperature,
        kl_reduction=o.kl_reduction,
        kl_scale=o.kl_scale,
        global_batch_size=gbs,
    )


def _rslad(f, o, gbs, step):
    return losses.rslad_loss(
        f["s_clean"],
        f["s_adv"],
        f["t_clean"],
        kl_reduction=o.kl_reduction,
        kl_scale=o.kl_scale,
        log_epsilon=o.rslad_log_epsilon,
        global_batch_size=gbs,
    )


def _adaad(f, o, gbs, step):
    return losses.adaad_loss(
        f["s_clean"],
        f["s_adv"],
        f["t_clean"],
        f["t_adv"],
        alpha=o.adaad_alpha,
        kl_reduction=o.kl_reduction,
        kl_scale=o.kl_scale,
        global_batch_size=gbs,
    )


def _iad(f, o, gbs, step):
    return losses.iad_loss(
        f["s_clean"],
        f["s_adv"],
        f["t_adv"],
        f["y"],
        introspection=step.introspection,
        alpha=o.iad_alpha,
        beta=o.iad_beta,
        temperature=o.iad_temperature,
        global_batch_size=gbs,
    )


def _dgad(f, o, gbs, step):
    return losses.dgad_loss(
        f["s_clean"],
        f["s_adv"],
        f["t_clean"],
        f["t_adv"],
        f["y"],
        beta=o.beta,
        use_map=o.use_map,
        use_els=o.use_els,
        distill_weight=o.distill_weight,
        weighting=o.dgad_weighting,
        reference_batch_size=step.batch_size,
        global_batch_size=gbs,
    )


METHOD_SPECS = {
    "clean": MethodSpec("none", False, True, _clean, reference_forwards=("clean",)),
    # AdaAD's SAT baseline: a training-mode clean forward after the adversarial one, unused.
    "pgd_at": MethodSpec("ce", False, False, _pgd_at, reference_forwards=("adv", "+clean")),
    # TRADES evaluates model(x_adv) and then model(x_natural) again inside its KL; in training
    # mode on the same batch that third forward equals the first, so only its statistics count.
    "trades": MethodSpec(
        "kl_student_clean", False, True, _trades, reference_forwards=("clean", "adv", "+clean")
    ),
    "ard": MethodSpec(
        "ce",
        True,
        True,
        _ard,
        reference_forwards=("adv", "clean"),
        reference_train_mode_attack=True,
    ),
    "rslad": MethodSpec(
        "kl_teacher_clean", True, True, _rslad, reference_forwards=("adv", "clean")
    ),
    "adaad": MethodSpec("kl_teacher", True, True, _adaad),
    "iad": MethodSpec("kl_teacher", True, True, _iad),
    "dgad": MethodSpec("kl_teacher", True, True, _dgad),
}
assert set(METHOD_SPECS) == set(METHODS)
assert {m for m, s in METHOD_SPECS.items() if s.needs_teacher} == set(TEACHER_METHODS)

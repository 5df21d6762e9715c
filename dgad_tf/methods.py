"""The training methods: what each attacks, which forwards its loss takes, and its loss.

`METHOD_SPECS` maps `method.name` to a `MethodSpec`, which binds the method's `MethodConfig`
options to its loss function in `dgad_tf.losses`; the distiller's train step looks its method up
here, so adding a method is one loss function and one spec. The attacks are described in
docs/method.md §3.2, the reference forwards in §9.10.
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
class Forward:
    """One training-mode forward of the student in a step.

    Args:
        kind: "clean" (the batch) or "adv" (its adversarial examples).
        used: whether the loss reads its output. An unused forward only moves batch-norm
            statistics (a reference code's repeated call). Defaults to True.
    """

    kind: str
    used: bool = True

    def __post_init__(self):
        if self.kind not in ("clean", "adv"):
            raise ValueError(f'`kind` must be "clean" or "adv"; received kind={self.kind!r}')


CLEAN, ADV = Forward("clean"), Forward("adv")


@dataclasses.dataclass(frozen=True, kw_only=True)
class MethodSpec:
    """What a training method attacks and how it scores the student: its loss with options bound.

    Args:
        attack: "none", "ce" (CE to labels), "kl_teacher" (KL(t(x')‖s(x')), both moving),
            "kl_student_clean" (KL(s(x)‖s(x'))) or "kl_teacher_clean" (KL(t(x)‖s(x'))).
        needs_teacher: whether the method distils from a teacher.
        student_clean: whether the student's clean forward (training mode) enters the loss.
        loss_fn: the method's loss in `dgad_tf.losses`.
        inputs: the forwards `loss_fn` takes, in order (keys of the train step's forwards:
            "s_clean", "s_adv", "t_clean", "t_adv", "y").
        options: (keyword of `loss_fn`, field of `MethodConfig`) pairs. Defaults to ().
        context: (keyword of `loss_fn`, field of `StepContext`) pairs. Defaults to ().
        reference_forwards: the student's training-mode forwards (`Forward`s) in the order of
            the method's reference code. Defaults to (CLEAN, ADV).
        reference_train_mode_attack: the reference attacks with the student in training mode.
            Defaults to False.
        reference_forwards_after_warmup: the reference's forwards once the introspection term
            is on (IAD, AdaIAD): `reference_forwards` followed by further unused ones.
            Defaults to None (the same forwards in every epoch).
    """

    attack: str
    needs_teacher: bool
    student_clean: bool
    loss_fn: Callable[..., dict]
    inputs: tuple
    options: tuple = ()
    context: tuple = ()
    reference_forwards: tuple[Forward, ...] = (CLEAN, ADV)
    reference_train_mode_attack: bool = False
    reference_forwards_after_warmup: Optional[tuple[Forward, ...]] = None

    def __post_init__(self):
        after, before = self.reference_forwards_after_warmup, self.reference_forwards
        if after is not None and (
            tuple(after[: len(before)]) != tuple(before)
            or any(forward.used for forward in after[len(before) :])
        ):
            raise ValueError(
                "reference_forwards_after_warmup must extend reference_forwards with unused "
                f"forwards; received {after!r} after {before!r}"
            )

    @property
    def forwards_added_after_warmup(self) -> tuple[Forward, ...]:
        """The unused forwards the reference adds once the introspection term is on."""
        after = self.reference_forwards_after_warmup
        return () if after is None else tuple(after[len(self.reference_forwards) :])

    def loss(self, forwards: dict, options, global_batch, step: StepContext) -> dict:
        """The loss dict of `loss_fn` on `forwards`, with the method's options bound."""
        kwargs = {arg: getattr(options, field) for arg, field in self.options}
        kwargs.update({arg: getattr(step, field) for arg, field in self.context})
        return self.loss_fn(
            *(forwards[key] for key in self.inputs), global_batch_size=global_batch, **kwargs
        )


_KL_SCALE = (("kl_reduction", "kl_reduction"), ("kl_scale", "kl_scale"))
_IAD_OPTIONS = (("alpha", "iad_alpha"), ("beta", "iad_beta"), ("temperature", "iad_temperature"))

METHOD_SPECS = {
    "clean": MethodSpec(
        attack="none",
        needs_teacher=False,
        student_clean=True,
        loss_fn=losses.clean_loss,
        inputs=("s_clean", "y"),
        reference_forwards=(CLEAN,),
    ),
    # AdaAD's SAT baseline: a training-mode clean forward after the adversarial one, unused.
    "pgd_at": MethodSpec(
        attack="ce",
        needs_teacher=False,
        student_clean=False,
        loss_fn=losses.pgd_at_loss,
        inputs=("s_adv", "y"),
        reference_forwards=(ADV, Forward("clean", used=False)),
    ),
    # TRADES evaluates model(x_adv) and then model(x_natural) again inside its KL; in training
    # mode on the same batch that third forward equals the first, so only its statistics count.
    "trades": MethodSpec(
        attack="kl_student_clean",
        needs_teacher=False,
        student_clean=True,
        loss_fn=losses.trades_loss,
        inputs=("s_clean", "s_adv", "y"),
        options=(("beta", "trades_beta"),),
        reference_forwards=(CLEAN, ADV, Forward("clean", used=False)),
    ),
    "ard": MethodSpec(
        attack="ce",
        needs_teacher=True,
        student_clean=True,
        loss_fn=losses.ard_loss,
        inputs=("s_clean", "s_adv", "t_clean", "y"),
        options=(("alpha", "ard_alpha"), ("temperature", "ard_temperature")) + _KL_SCALE,
        reference_forwards=(ADV, CLEAN),
        reference_train_mode_attack=True,
    ),
    "rslad": MethodSpec(
        attack="kl_teacher_clean",
        needs_teacher=True,
        student_clean=True,
        loss_fn=losses.rslad_loss,
        inputs=("s_clean", "s_adv", "t_clean"),
        options=_KL_SCALE + (("log_epsilon", "rslad_log_epsilon"),),
        reference_forwards=(ADV, CLEAN),
    ),
    "adaad": MethodSpec(
        attack="kl_teacher",
        needs_teacher=True,
        student_clean=True,
        loss_fn=losses.adaad_loss,
        inputs=("s_clean", "s_adv", "t_clean", "t_adv"),
        options=(("alpha", "adaad_alpha"),) + _KL_SCALE,
    ),
    # Zhu et al.'s IAD-I.py: the attack's last forward (adversarial, used), basic_net(x_adv)
    # again (unused), then basic_net(x) once in the cross-entropy and, after the warm-up, once
    # more in the introspection term; in training mode on one batch those equal the first.
    "iad": MethodSpec(
        attack="ce",
        needs_teacher=True,
        student_clean=True,
        loss_fn=losses.iad_loss,
        inputs=("s_clean", "s_adv", "t_clean", "t_adv", "y"),
        options=_IAD_OPTIONS,
        context=(("introspection", "introspection"),),
        reference_forwards=(ADV, Forward("adv", used=False), CLEAN),
        reference_train_mode_attack=True,
        reference_forwards_after_warmup=(
            ADV,
            Forward("adv", used=False),
            CLEAN,
            Forward("clean", used=False),
        ),
    ),
    # The DGAD repository's AdaAD_with_IAD1: net(inputs) (unused), net(x_adv), then net(inputs)
    # again in the cross-entropy and, after the warm-up, in the introspection term.
    "adaiad": MethodSpec(
        attack="kl_teacher",
        needs_teacher=True,
        student_clean=True,
        loss_fn=losses.adaiad_loss,
        inputs=("s_clean", "s_adv", "t_adv", "y"),
        options=_IAD_OPTIONS,
        context=(("introspection", "introspection"),),
        reference_forwards=(CLEAN, ADV, Forward("clean", used=False)),
        reference_forwards_after_warmup=(
            CLEAN,
            ADV,
            Forward("clean", used=False),
            Forward("clean", used=False),
        ),
    ),
    "dgad": MethodSpec(
        attack="kl_teacher",
        needs_teacher=True,
        student_clean=True,
        loss_fn=losses.dgad_loss,
        inputs=("s_clean", "s_adv", "t_clean", "t_adv", "y"),
        options=(
            ("beta", "beta"),
            ("use_map", "use_map"),
            ("use_els", "use_els"),
            ("distill_weight", "distill_weight"),
            ("weighting", "dgad_weighting"),
        ),
        context=(("reference_batch_size", "batch_size"),),
    ),
}
assert set(METHOD_SPECS) == set(METHODS)
assert {m for m, s in METHOD_SPECS.items() if s.needs_teacher} == set(TEACHER_METHODS)

"""The training methods: what each attacks, which student forwards it runs, and its loss class.

`METHOD_SPECS` maps `method.name` to a `MethodSpec`: the method's loss class in `dgad_tf.losses`
(`DGAD`, `TRADES`, ...), the config keys that fill that loss's options, its attack objective and
its forwards. The distiller's train step looks the spec of its loss up here (`method_of`), so
adding a method is one loss function, one loss class and one spec. The attacks are described in
docs/method.md §3.2, the reference forwards in §9.10.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

from dgad_tf import losses
from dgad_tf.config import METHODS, TEACHER_METHODS


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
    """What a training method attacks, which forwards it runs, and the class of its loss.

    Args:
        loss: the method's loss class in `dgad_tf.losses` (a `MethodLoss`).
        config_options: (option of `loss`, dotted config key) pairs: which config value fills
            which option when a run builds the loss (`dgad_tf.build.method_loss`). Defaults
            to ().
        attack: "none", "ce" (CE to labels), "kl_teacher" (KL(t(x')‖s(x')), both moving),
            "kl_student_clean" (KL(s(x)‖s(x'))) or "kl_teacher_clean" (KL(t(x)‖s(x'))).
        needs_teacher: whether the method distils from a teacher.
        reference_forwards: the student's training-mode forwards (`Forward`s) in the order of
            the method's reference code. Defaults to (CLEAN, ADV).
        reference_train_mode_attack: the reference attacks with the student in training mode.
            Defaults to False.
        reference_forwards_after_warmup: the reference's forwards once the introspection term
            is on (IAD, AdaIAD): `reference_forwards` followed by further unused ones.
            Defaults to None (the same forwards in every epoch).
    """

    loss: type
    config_options: tuple[tuple[str, str], ...] = ()
    attack: str
    needs_teacher: bool
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
    def student_clean(self) -> bool:
        """Whether the loss reads the student's clean forward (training mode)."""
        return "s_clean" in self.loss.inputs

    @property
    def forwards_added_after_warmup(self) -> tuple[Forward, ...]:
        """The unused forwards the reference adds once the introspection term is on."""
        after = self.reference_forwards_after_warmup
        return () if after is None else tuple(after[len(self.reference_forwards) :])


_KL_SCALE = (("kl_reduction", "method.kl_reduction"), ("kl_scale", "method.kl_scale"))
_IAD_OPTIONS = (
    ("alpha", "method.iad_alpha"),
    ("beta", "method.iad_beta"),
    ("temperature", "method.iad_temperature"),
    ("warmup_epochs", "method.iad_warmup_epochs"),
)

METHOD_SPECS = {
    "clean": MethodSpec(
        loss=losses.Clean,
        attack="none",
        needs_teacher=False,
        reference_forwards=(CLEAN,),
    ),
    # AdaAD's SAT baseline: a training-mode clean forward after the adversarial one, unused.
    "pgd_at": MethodSpec(
        loss=losses.PGDAT,
        attack="ce",
        needs_teacher=False,
        reference_forwards=(ADV, Forward("clean", used=False)),
    ),
    # TRADES evaluates model(x_adv) and then model(x_natural) again inside its KL; in training
    # mode on the same batch that third forward equals the first, so only its statistics count.
    "trades": MethodSpec(
        loss=losses.TRADES,
        config_options=(("beta", "method.trades_beta"),),
        attack="kl_student_clean",
        needs_teacher=False,
        reference_forwards=(CLEAN, ADV, Forward("clean", used=False)),
    ),
    "ard": MethodSpec(
        loss=losses.ARD,
        config_options=(
            ("alpha", "method.ard_alpha"),
            ("temperature", "method.ard_temperature"),
        )
        + _KL_SCALE,
        attack="ce",
        needs_teacher=True,
        reference_forwards=(ADV, CLEAN),
        reference_train_mode_attack=True,
    ),
    "rslad": MethodSpec(
        loss=losses.RSLAD,
        config_options=_KL_SCALE + (("log_epsilon", "method.rslad_log_epsilon"),),
        attack="kl_teacher_clean",
        needs_teacher=True,
        reference_forwards=(ADV, CLEAN),
    ),
    "adaad": MethodSpec(
        loss=losses.AdaAD,
        config_options=(("alpha", "method.adaad_alpha"),) + _KL_SCALE,
        attack="kl_teacher",
        needs_teacher=True,
    ),
    # Zhu et al.'s IAD-I.py: the attack's last forward (adversarial, used), basic_net(x_adv)
    # again (unused), then basic_net(x) once in the cross-entropy and, after the warm-up, once
    # more in the introspection term; in training mode on one batch those equal the first.
    "iad": MethodSpec(
        loss=losses.IAD,
        config_options=_IAD_OPTIONS,
        attack="ce",
        needs_teacher=True,
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
        loss=losses.AdaIAD,
        config_options=_IAD_OPTIONS,
        attack="kl_teacher",
        needs_teacher=True,
        reference_forwards=(CLEAN, ADV, Forward("clean", used=False)),
        reference_forwards_after_warmup=(
            CLEAN,
            ADV,
            Forward("clean", used=False),
            Forward("clean", used=False),
        ),
    ),
    "dgad": MethodSpec(
        loss=losses.DGAD,
        config_options=(
            ("beta", "method.beta"),
            ("use_map", "method.use_map"),
            ("use_els", "method.use_els"),
            ("distill_weight", "method.distill_weight"),
            ("weighting", "method.dgad_weighting"),
            # The reference's MobileNetV2 weighting divides by the configured batch size.
            ("reference_batch_size", "train.batch_size"),
        ),
        attack="kl_teacher",
        needs_teacher=True,
    ),
}
assert set(METHOD_SPECS) == set(METHODS)
assert {m for m, s in METHOD_SPECS.items() if s.needs_teacher} == set(TEACHER_METHODS)


def method_of(loss) -> str:
    """The name in `METHOD_SPECS` of the method whose loss object `loss` is.

    Raises:
        TypeError: `loss` is not one of the method losses of `dgad_tf.losses`.
    """
    for name, spec in METHOD_SPECS.items():
        if isinstance(loss, spec.loss):
            return name
    classes = ", ".join(f"dgad_tf.losses.{spec.loss.__name__}" for spec in METHOD_SPECS.values())
    raise TypeError(f"`loss` must be one of {classes}; received loss={loss!r}")

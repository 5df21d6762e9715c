"""One loss object per training method: what `AdversarialDistiller(loss=...)` takes.

Each object holds only its own method's options, checked when it is made, and calling it applies
that method's loss function (`dgad_loss`, `trades_loss`, ...) to the step's forwards. Each class
also says what its method's step is (`dgad_tf.losses.MethodLoss`): its teacher, its attack, its
start, its forwards. The classes are frozen dataclasses registered by method name (`register`);
`dgad_tf.distiller` registers them with Keras under the package "dgad_tf", so
`keras.saving.serialize_keras_object` and a distiller's `get_config` carry them.

The defaults are those of each method's own code; a config's `method:` section holds exactly a
class's fields (`method: {name: trades, beta: 6.0}`), with these defaults.

Example:
    >>> loss = DGAD(beta=1.0, use_map=True, use_els=True)
    >>> distiller = AdversarialDistiller(teacher=teacher, student=student, loss=loss)
"""

from __future__ import annotations

import dataclasses
import numbers
from typing import Optional

from dgad_tf.losses._checks import (
    DGAD_WEIGHTINGS,
    _check_choice,
    _check_kl_reduction,
    _check_non_negative,
    _check_positive,
    _check_unit_interval,
)
from dgad_tf.losses.method_loss import (
    ADV,
    CE_TO_LABELS,
    CLEAN,
    KL_STUDENT_CLEAN,
    KL_TEACHER_CLEAN,
    MIRROR,
    Forward,
    LossFunction,
    MethodLoss,
    name_of,
    register,
)

_frozen = dataclasses.dataclass(frozen=True, kw_only=True)


def _check_bool(name, value):
    if not isinstance(value, bool):
        raise TypeError(f"`{name}` must be True or False; received {name}={value!r}")


@register("dgad")
@_frozen
class DGAD(MethodLoss):
    """DGAD: MAP-partitioned, label-swapped distillation plus PCR (`dgad_tf.losses.dgad_loss`).

    Args:
        beta: weight of the predictive-consistency regulariser, >= 0 (0 turns PCR off).
            Defaults to 1.0.
        use_map: misclassification-aware partitioning. Defaults to True.
        use_els: error-corrective label swapping. Defaults to True.
        distill_weight: weight of the distillation term, >= 0. Defaults to 1.0.
        weighting: "standard" (the paper's loss) or "reference_mobilenetv2" (the reference
            code's MobileNetV2 branch). Defaults to "standard".
        reference_batch_size: the configured batch size the "reference_mobilenetv2" weighting
            divides by. Defaults to None (each batch's global size).
    """

    loss_fn = LossFunction("dgad", "dgad_loss")
    inputs = ("s_clean", "s_adv", "t_clean", "t_adv", "y")

    beta: float = 1.0
    use_map: bool = True
    use_els: bool = True
    distill_weight: float = 1.0
    weighting: str = "standard"
    reference_batch_size: Optional[int] = None

    def __post_init__(self):
        _check_non_negative("beta", self.beta)
        _check_bool("use_map", self.use_map)
        _check_bool("use_els", self.use_els)
        _check_non_negative("distill_weight", self.distill_weight)
        _check_choice("weighting", self.weighting, DGAD_WEIGHTINGS)
        size = self.reference_batch_size
        if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
            raise ValueError(
                f"`reference_batch_size` must be a positive int or None; received {size!r}"
            )

    def for_batch_size(self, batch_size: int) -> "DGAD":
        """The reference's MobileNetV2 weighting divides by the configured batch size."""
        if self.reference_batch_size is not None:
            return self
        return dataclasses.replace(self, reference_batch_size=batch_size)


@register("adaad")
@_frozen
class AdaAD(MethodLoss):
    """AdaAD: alpha·KL(t(x')‖s(x')) + (1 - alpha)·KL(t(x)‖s(x)) (`adaad_loss`).

    Args:
        alpha: weight of the adversarial term, in [0, 1]. Defaults to 1.0.
        kl_reduction: "batchmean" or "class_mean" (KL / C, the reference's CIFAR-10 scale).
            Defaults to "batchmean".
        kl_scale: constant factor on both KL terms, > 0. Defaults to 1.0.
    """

    loss_fn = LossFunction("baselines", "adaad_loss")
    inputs = ("s_clean", "s_adv", "t_clean", "t_adv")

    alpha: float = 1.0
    kl_reduction: str = "batchmean"
    kl_scale: float = 1.0

    def __post_init__(self):
        _check_unit_interval("alpha", self.alpha)
        _check_kl_reduction(self.kl_reduction, self.kl_scale)


@register("trades")
@_frozen
class TRADES(MethodLoss):
    """TRADES: CE(s(x), y) + beta·KL(s(x)‖s(x')) (`trades_loss`); no teacher.

    Args:
        beta: weight of the robustness term, >= 0. Defaults to 6.0.
    """

    loss_fn = LossFunction("baselines", "trades_loss")
    inputs = ("s_clean", "s_adv", "y")
    needs_teacher = False
    ascent = KL_STUDENT_CLEAN
    # TRADES evaluates model(x_adv) and then model(x_natural) again inside its KL; in training
    # mode on the same batch that third forward equals the first, so only its statistics count.
    reference_forwards = (CLEAN, ADV, Forward("clean", used=False))

    beta: float = 6.0

    def __post_init__(self):
        _check_non_negative("beta", self.beta)


@register("ard")
@_frozen
class ARD(MethodLoss):
    """ARD: alpha·T²·KL(t(x)/T‖s(x')/T) + (1 - alpha)·CE(s(x), y) (`ard_loss`).

    Args:
        alpha: weight of the distillation term, in [0, 1]. Defaults to 1.0.
        temperature: distillation temperature, > 0. Defaults to 30.0.
        kl_reduction: "batchmean" or "class_mean". Defaults to "batchmean".
        kl_scale: constant factor on the KL term, > 0. Defaults to 1.0.
    """

    loss_fn = LossFunction("baselines", "ard_loss")
    inputs = ("s_clean", "s_adv", "t_clean", "y")
    ascent = CE_TO_LABELS
    default_start = "uniform"
    reference_forwards = (ADV, CLEAN)
    reference_train_mode_attack = True

    alpha: float = 1.0
    temperature: float = 30.0
    kl_reduction: str = "batchmean"
    kl_scale: float = 1.0

    def __post_init__(self):
        _check_unit_interval("alpha", self.alpha)
        _check_positive("temperature", self.temperature)
        _check_kl_reduction(self.kl_reduction, self.kl_scale)


@register("rslad")
@_frozen
class RSLAD(MethodLoss):
    """RSLAD: 5/6·KL(t(x)‖s(x')) + 1/6·KL(t(x)‖s(x)) (`rslad_loss`).

    Args:
        kl_reduction: "batchmean" or "class_mean". Defaults to "batchmean".
        kl_scale: constant factor on both KL terms, > 0. Defaults to 1.0.
        log_epsilon: epsilon inside the teacher's log as the reference writes its KL, >= 0
            (0: the exact KL). Defaults to 0.0.
    """

    loss_fn = LossFunction("baselines", "rslad_loss")
    inputs = ("s_clean", "s_adv", "t_clean")
    ascent = KL_TEACHER_CLEAN
    reference_forwards = (ADV, CLEAN)

    kl_reduction: str = "batchmean"
    kl_scale: float = 1.0
    log_epsilon: float = 0.0

    def __post_init__(self):
        _check_kl_reduction(self.kl_reduction, self.kl_scale)
        _check_non_negative("log_epsilon", self.log_epsilon)


class _Introspective(MethodLoss):
    """What IAD and AdaIAD share: options checked alike, and the warm-up switch."""

    def __post_init__(self):
        _check_unit_interval("alpha", self.alpha)
        _check_non_negative("beta", self.beta)
        _check_positive("temperature", self.temperature)
        epochs = self.warmup_epochs
        if isinstance(epochs, bool) or not isinstance(epochs, numbers.Integral):
            raise TypeError(f"`warmup_epochs` must be an int; received warmup_epochs={epochs!r}")
        object.__setattr__(self, "warmup_epochs", int(epochs))  # serialises as a plain int
        _check_non_negative("warmup_epochs", self.warmup_epochs)

    def introspection(self, epoch):
        """1.0 from the 0-based epoch `warmup_epochs` on, else 0.0: the introspection switch."""
        import tensorflow as tf

        return tf.cast(tf.convert_to_tensor(epoch) >= self.warmup_epochs, tf.float32)

    def _loss_options(self, epoch) -> dict:
        options = self.get_config()
        del options["warmup_epochs"]
        return dict(options, introspection=self.introspection(epoch))


@register("iad")
@_frozen
class IAD(_Introspective):
    """IAD (Zhu et al., `IAD-I.py`): ARD's loss with introspection after a warm-up (`iad_loss`).

    Args:
        alpha: weight of the distillation terms, in [0, 1]. Defaults to 1.0.
        beta: exponent of the teacher's true-class confidence, >= 0. Defaults to 0.1.
        temperature: distillation temperature, > 0. Defaults to 1.0 (its code's).
        warmup_epochs: epochs before the introspection term counts. Defaults to 60.
    """

    loss_fn = LossFunction("baselines", "iad_loss")
    inputs = ("s_clean", "s_adv", "t_clean", "t_adv", "y")
    ascent = CE_TO_LABELS
    default_start = "uniform"
    # Zhu et al.'s IAD-I.py: the attack's last forward (adversarial, used), basic_net(x_adv)
    # again (unused), then basic_net(x) once in the cross-entropy and, after the warm-up, once
    # more in the introspection term; in training mode on one batch those equal the first.
    reference_forwards = (ADV, Forward("adv", used=False), CLEAN)
    reference_train_mode_attack = True
    reference_forwards_after_warmup = (
        ADV,
        Forward("adv", used=False),
        CLEAN,
        Forward("clean", used=False),
    )

    alpha: float = 1.0
    beta: float = 0.1
    temperature: float = 1.0
    warmup_epochs: int = 60


@register("adaiad")
@_frozen
class AdaIAD(_Introspective):
    """AdaIAD (the DGAD repository's `AdaAD_with_IAD1`): IAD's loss on the teacher's
    adversarial outputs (`adaiad_loss`).

    Args:
        alpha: weight of the distillation terms, in [0, 1]. Defaults to 1.0.
        beta: exponent of the teacher's true-class confidence, >= 0. Defaults to 0.1.
        temperature: distillation temperature, > 0. Defaults to 30.0.
        warmup_epochs: epochs before the introspection term counts. Defaults to 60.
    """

    loss_fn = LossFunction("baselines", "adaiad_loss")
    inputs = ("s_clean", "s_adv", "t_adv", "y")
    # The DGAD repository's AdaAD_with_IAD1: net(inputs) (unused), net(x_adv), then net(inputs)
    # again in the cross-entropy and, after the warm-up, in the introspection term.
    reference_forwards = (CLEAN, ADV, Forward("clean", used=False))
    reference_forwards_after_warmup = (
        CLEAN,
        ADV,
        Forward("clean", used=False),
        Forward("clean", used=False),
    )

    alpha: float = 1.0
    beta: float = 0.1
    temperature: float = 30.0
    warmup_epochs: int = 60


@register("pgd_at")
@_frozen
class PGDAT(MethodLoss):
    """PGD adversarial training (Madry et al.): cross-entropy on the adversarial examples
    (`pgd_at_loss`); no options, no teacher."""

    loss_fn = LossFunction("baselines", "pgd_at_loss")
    inputs = ("s_adv", "y")
    needs_teacher = False
    ascent = CE_TO_LABELS
    # AdaAD's SAT baseline: a training-mode clean forward after the adversarial one, unused.
    reference_forwards = (ADV, Forward("clean", used=False))

    def random_start(self, reference_forwards: bool = False) -> str:
        """Uniform in the ball as Madry et al.; Gaussian as the AdaAD code's SAT baseline when
        following the reference forwards."""
        return "gaussian" if reference_forwards else "uniform"


@register("clean")
@_frozen
class Clean(MethodLoss):
    """Standard training: cross-entropy on the clean batch (`clean_loss`); no attack, no
    teacher, no options."""

    loss_fn = LossFunction("baselines", "clean_loss")
    inputs = ("s_clean", "y")
    needs_teacher = False
    ascent = None
    default_start = "uniform"
    reference_forwards = (CLEAN,)


# The class attributes of a method that `IGDM` takes from the loss it wraps.
_DELEGATED = ("needs_teacher", "ascent", "default_start", "reference_train_mode_attack")


@_frozen
class IGDM(MethodLoss):
    """A teacher-based method's loss plus IGDM's term (Lee et al., ICLR 2025; `igdm_loss`).

    With δ = x' - x the perturbation of the wrapped method's own training attack, adds
    alpha·((epoch + 1) / total_epochs)·KL(softmax(t(x+δ) - t(x-δ)) ‖ softmax(s(x+δ) - s(x-δ)))
    (batch mean; 0-based epoch, so the factor runs 1/E, ..., 1 as the reference's epoch/E for
    epochs 1..E) to `base`'s loss. The student's x - δ forward runs in training mode after
    the base's forwards, the teacher's in inference mode without gradient; the attack, its
    start, the other forwards and the logged terms are the base's, plus `igdm` (the added
    term) and `igdm_kl` (its KL before weighting). A config writes it as the base method's
    section with an `igdm:` block, `method: {name: adaad, igdm: {alpha: 1.0}}` (docs/method.md
    §9.11).

    Args:
        base: the loss of a method that distils from a teacher (`AdaAD()`, `AdaIAD()`,
            `RSLAD()`, `DGAD()`, ... or a user's own teacher-based `MethodLoss`).
        alpha: weight of the term, >= 0: 1 on CIFAR-10, 10 on CIFAR-100 and Tiny ImageNet in
            the paper. Defaults to 1.0.
        total_epochs: E of the ramp, a positive int; None is filled with the run's epochs by a
            config (`train.epochs`) and must be given from Python. Defaults to None.

    Example:
        >>> IGDM(base=AdaAD(), alpha=1.0, total_epochs=200)
    """

    loss_fn = LossFunction("igdm", "igdm_loss")

    base: MethodLoss
    alpha: float = 1.0
    total_epochs: Optional[int] = None

    def __post_init__(self):
        if isinstance(self.base, IGDM) or not isinstance(self.base, MethodLoss):
            raise TypeError(
                "`base` must be the loss of a method that distils from a teacher, e.g. "
                f"IGDM(base=dgad_tf.losses.AdaAD()); received base={self.base!r}"
            )
        if not self.base.needs_teacher:
            raise ValueError(
                f"IGDM matches the student to a teacher, but {type(self.base).__name__} trains "
                "without one; wrap a method that distils from a teacher (AdaAD, AdaIAD, "
                "RSLAD, ARD, IAD, DGAD or your own MethodLoss with needs_teacher = True)"
            )
        _check_non_negative("alpha", self.alpha)
        epochs = self.total_epochs
        if epochs is not None:
            if isinstance(epochs, bool) or not isinstance(epochs, numbers.Integral):
                raise TypeError(
                    "`total_epochs` must be a positive int or None; received "
                    f"total_epochs={epochs!r}"
                )
            object.__setattr__(self, "total_epochs", int(epochs))
            _check_positive("total_epochs", self.total_epochs)
        for attribute in _DELEGATED:  # the base's method, read by the distiller as its own
            object.__setattr__(self, attribute, getattr(self.base, attribute))
        object.__setattr__(self, "inputs", tuple(self.base.inputs))
        # The reference order: the base's forwards, then x - δ; after a warm-up, the base's
        # unused ones after that (the distiller runs them last).
        forwards = self.student_forwards(reference_forwards=True)
        object.__setattr__(self, "reference_forwards", forwards)
        after = self.base.reference_forwards_after_warmup
        if after is not None:
            after = forwards + tuple(after[len(self.base.reference_forwards) :])
        object.__setattr__(self, "reference_forwards_after_warmup", after)

    # ------------------------------------------------------------------ the base's step

    def validate_model_compatibility(self, teacher, student) -> None:
        """The base's checks, and `total_epochs` set (a run from a config fills it)."""
        if self.total_epochs is None:
            raise ValueError(
                "IGDM(total_epochs=None): give total_epochs=<the number of epochs you train>, "
                "the E of the ramp (epoch + 1) / E; a config fills it from train.epochs"
            )
        self.base.validate_model_compatibility(teacher, student)

    def attack_objective(self, x, y, *, student, teacher):
        return self.base.attack_objective(x, y, student=student, teacher=teacher)

    def random_start(self, reference_forwards: bool = False) -> str:
        return self.base.random_start(reference_forwards)

    def student_forwards(self, reference_forwards: bool = False) -> tuple:
        """The base's forwards, its adversarial one if it has none, then x - δ (training mode)."""
        forwards = tuple(self.base.student_forwards(reference_forwards))
        if not any(f.kind == "adv" and f.used for f in forwards):
            forwards += (ADV,)
        return forwards + (MIRROR,)

    def forwards_added_after_warmup(self, reference_forwards: bool = False) -> tuple:
        return self.base.forwards_added_after_warmup(reference_forwards)

    def introspection(self, epoch):
        """The base's warm-up switch (IAD's and AdaIAD's)."""
        return self.base.introspection(epoch)

    def logged_terms(self, num_classes: int) -> list:
        return sorted({*self.base.logged_terms(num_classes), "igdm", "igdm_kl"})

    def for_batch_size(self, batch_size: int) -> "IGDM":
        return dataclasses.replace(self, base=self.base.for_batch_size(batch_size))

    def for_epochs(self, epochs: int) -> "IGDM":
        """E of the ramp defaults to the run's epochs."""
        base = self.base.for_epochs(epochs)
        return dataclasses.replace(self, base=base, total_epochs=self.total_epochs or epochs)

    # ------------------------------------------------------------------ the loss

    def ramp(self, epoch):
        """(epoch + 1) / total_epochs for the 0-based `epoch`: the reference's epoch / E with
        epochs counted from 1 (HongsinLee/saad igdm.py:43,59)."""
        import tensorflow as tf

        epoch = tf.cast(tf.convert_to_tensor(epoch), tf.float32)
        return (epoch + 1.0) / float(self.total_epochs)

    def compute_loss(self, forwards: dict, *, global_batch_size=None, epoch=0) -> dict:
        terms = dict(self.base(forwards, global_batch_size=global_batch_size, epoch=epoch))
        if self.total_epochs is None:
            raise ValueError("IGDM needs total_epochs; see IGDM.validate_model_compatibility")
        term = self.loss_fn(
            forwards["s_adv"],
            forwards["s_mirror"],
            forwards["t_adv"],
            forwards["t_mirror"],
            alpha=self.alpha,
            ramp=self.ramp(epoch),
            global_batch_size=global_batch_size,
        )
        terms["total"] = terms["total"] + term["total"]
        terms["igdm"], terms["igdm_kl"] = term["total"], term["igdm_kl"]
        return terms

    # ------------------------------------------------------------------ config

    def get_config(self) -> dict:
        """{"base": {"method": <its name or dotted path>, "config": <its config>}, "alpha",
        "total_epochs"}: what `from_config` (and Keras's serialisation) reads back."""
        base = {"method": name_of(self.base), "config": self.base.get_config()}
        return {"base": base, "alpha": self.alpha, "total_epochs": self.total_epochs}

    @classmethod
    def from_config(cls, config: dict):
        from dgad_tf.losses.method_loss import get

        config = dict(config)
        base = config.pop("base")
        if isinstance(base, dict):
            base = get(base["method"]).from_config(base["config"])
        return cls(base=base, **config)

    def section_options(self) -> dict:
        """The base's options and the `igdm:` block, as a config's `method:` section holds them."""
        own = {"alpha": self.alpha, "total_epochs": self.total_epochs}
        return {**self.base.section_options(), "igdm": own}

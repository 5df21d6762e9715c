"""One loss object per training method: what `AdversarialDistiller(loss=...)` takes.

Each object holds only its own method's options, checked when it is made, and calling it applies
that method's loss function (`dgad_loss`, `trades_loss`, ...) to the step's forwards. The classes
are frozen dataclasses registered with Keras under the package "dgad_tf", so
`keras.saving.serialize_keras_object` and a distiller's `get_config` carry them.

The defaults are those of each loss function, which follow the method's own code; the config's
`method:` section (`dgad_tf.config.MethodConfig`) fills them in `dgad_tf.build.method_loss`.

Example:
    >>> loss = DGAD(beta=1.0, use_map=True, use_els=True)
    >>> distiller = AdversarialDistiller(teacher=teacher, student=student, loss=loss)
"""

from __future__ import annotations

import dataclasses
import numbers
from typing import Optional

import keras
import tensorflow as tf

from dgad_tf.config import DGAD_WEIGHTINGS
from dgad_tf.losses._common import (
    _check_choice,
    _check_non_negative,
    _check_positive,
    _check_unit_interval,
)
from dgad_tf.losses.baselines import (
    _check_kl_reduction,
    adaad_loss,
    adaiad_loss,
    ard_loss,
    clean_loss,
    iad_loss,
    pgd_at_loss,
    rslad_loss,
    trades_loss,
)
from dgad_tf.losses.dgad import dgad_loss

_registered = keras.saving.register_keras_serializable(package="dgad_tf")
_frozen = dataclasses.dataclass(frozen=True, kw_only=True)


class MethodLoss:
    """Base of the method losses: options as dataclass fields, `get_config`, `from_config`.

    Calling a method loss returns its loss dict: `total` (the value to differentiate) and the
    method's separate terms for the log. `forwards` holds "y" (integer labels) and the logits the
    method reads: "s_clean", "s_adv" (student, training mode, on the batch and on its adversarial
    examples), "t_clean", "t_adv" (teacher, inference mode). `global_batch_size` divides the
    per-sample sums (None: this batch's size); `epoch` is the 0-based epoch being trained.

    A subclass names its loss function (`loss_fn`) and the forwards it takes in order
    (`inputs`); its dataclass fields are that function's keyword options.
    """

    loss_fn = None
    inputs = ()

    def __call__(self, forwards: dict, *, global_batch_size=None, epoch=0) -> dict:
        return self.loss_fn(
            *(forwards[key] for key in self.inputs),
            global_batch_size=global_batch_size,
            **self._loss_options(epoch),
        )

    def _loss_options(self, epoch) -> dict:
        return self.get_config()

    def get_config(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_config(cls, config: dict):
        return cls(**config)


def _check_bool(name, value):
    if not isinstance(value, bool):
        raise TypeError(f"`{name}` must be True or False; received {name}={value!r}")


@_registered
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

    loss_fn = staticmethod(dgad_loss)
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


@_registered
@_frozen
class AdaAD(MethodLoss):
    """AdaAD: alpha·KL(t(x')‖s(x')) + (1 - alpha)·KL(t(x)‖s(x)) (`adaad_loss`).

    Args:
        alpha: weight of the adversarial term, in [0, 1]. Defaults to 1.0.
        kl_reduction: "batchmean" or "class_mean" (KL / C, the reference's CIFAR-10 scale).
            Defaults to "batchmean".
        kl_scale: constant factor on both KL terms, > 0. Defaults to 1.0.
    """

    loss_fn = staticmethod(adaad_loss)
    inputs = ("s_clean", "s_adv", "t_clean", "t_adv")

    alpha: float = 1.0
    kl_reduction: str = "batchmean"
    kl_scale: float = 1.0

    def __post_init__(self):
        _check_unit_interval("alpha", self.alpha)
        _check_kl_reduction(self.kl_reduction, self.kl_scale)


@_registered
@_frozen
class TRADES(MethodLoss):
    """TRADES: CE(s(x), y) + beta·KL(s(x)‖s(x')) (`trades_loss`); no teacher.

    Args:
        beta: weight of the robustness term, >= 0. Defaults to 6.0.
    """

    loss_fn = staticmethod(trades_loss)
    inputs = ("s_clean", "s_adv", "y")

    beta: float = 6.0

    def __post_init__(self):
        _check_non_negative("beta", self.beta)


@_registered
@_frozen
class ARD(MethodLoss):
    """ARD: alpha·T²·KL(t(x)/T‖s(x')/T) + (1 - alpha)·CE(s(x), y) (`ard_loss`).

    Args:
        alpha: weight of the distillation term, in [0, 1]. Defaults to 1.0.
        temperature: distillation temperature, > 0. Defaults to 30.0.
        kl_reduction: "batchmean" or "class_mean". Defaults to "batchmean".
        kl_scale: constant factor on the KL term, > 0. Defaults to 1.0.
    """

    loss_fn = staticmethod(ard_loss)
    inputs = ("s_clean", "s_adv", "t_clean", "y")

    alpha: float = 1.0
    temperature: float = 30.0
    kl_reduction: str = "batchmean"
    kl_scale: float = 1.0

    def __post_init__(self):
        _check_unit_interval("alpha", self.alpha)
        _check_positive("temperature", self.temperature)
        _check_kl_reduction(self.kl_reduction, self.kl_scale)


@_registered
@_frozen
class RSLAD(MethodLoss):
    """RSLAD: 5/6·KL(t(x)‖s(x')) + 1/6·KL(t(x)‖s(x)) (`rslad_loss`).

    Args:
        kl_reduction: "batchmean" or "class_mean". Defaults to "batchmean".
        kl_scale: constant factor on both KL terms, > 0. Defaults to 1.0.
        log_epsilon: epsilon inside the teacher's log as the reference writes its KL, >= 0
            (0: the exact KL). Defaults to 0.0.
    """

    loss_fn = staticmethod(rslad_loss)
    inputs = ("s_clean", "s_adv", "t_clean")

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

    def introspection(self, epoch) -> tf.Tensor:
        """1.0 from the 0-based epoch `warmup_epochs` on, else 0.0: the introspection switch."""
        return tf.cast(tf.convert_to_tensor(epoch) >= self.warmup_epochs, tf.float32)

    def _loss_options(self, epoch) -> dict:
        options = self.get_config()
        del options["warmup_epochs"]
        return dict(options, introspection=self.introspection(epoch))


@_registered
@_frozen
class IAD(_Introspective):
    """IAD (Zhu et al., `IAD-I.py`): ARD's loss with introspection after a warm-up (`iad_loss`).

    Args:
        alpha: weight of the distillation terms, in [0, 1]. Defaults to 1.0.
        beta: exponent of the teacher's true-class confidence, >= 0. Defaults to 0.1.
        temperature: distillation temperature, > 0. Defaults to 1.0 (its code's).
        warmup_epochs: epochs before the introspection term counts. Defaults to 60.
    """

    loss_fn = staticmethod(iad_loss)
    inputs = ("s_clean", "s_adv", "t_clean", "t_adv", "y")

    alpha: float = 1.0
    beta: float = 0.1
    temperature: float = 1.0
    warmup_epochs: int = 60


@_registered
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

    loss_fn = staticmethod(adaiad_loss)
    inputs = ("s_clean", "s_adv", "t_adv", "y")

    alpha: float = 1.0
    beta: float = 0.1
    temperature: float = 30.0
    warmup_epochs: int = 60


@_registered
@_frozen
class PGDAT(MethodLoss):
    """PGD adversarial training (Madry et al.): cross-entropy on the adversarial examples
    (`pgd_at_loss`); no options, no teacher."""

    loss_fn = staticmethod(pgd_at_loss)
    inputs = ("s_adv", "y")


@_registered
@_frozen
class Clean(MethodLoss):
    """Standard training: cross-entropy on the clean batch (`clean_loss`); no attack, no
    teacher, no options."""

    loss_fn = staticmethod(clean_loss)
    inputs = ("s_clean", "y")

"""`MethodLoss`: a training method as one object, and the registry that names the methods.

A method loss is everything `AdversarialDistiller` needs to know about a method: its loss
(`compute_loss`), whether it distils from a teacher (`needs_teacher`,
`validate_model_compatibility`), what its training attack ascends (`ascent`), its random start
(`default_start`), the student's forwards (`student_forwards`, and those of its reference code),
and its logged terms (`logged_terms`). Its options are its dataclass fields; the config's
`method:` section holds exactly those fields (`method: {name: trades, beta: 6.0}`).

This module and the loss classes import no TensorFlow (the loss functions they call do, on first
use), so that a config naming a method is checked before TensorFlow loads.

Example:
    >>> import dataclasses
    >>> from dgad_tf.losses import ADV, CE_TO_LABELS, MethodLoss
    >>> @dataclasses.dataclass(frozen=True, kw_only=True)
    ... class Smoothed(MethodLoss):
    ...     smoothing: float = 0.1
    ...     needs_teacher = False
    ...     ascent = CE_TO_LABELS
    ...     inputs = ("s_adv", "y")
    ...     def compute_loss(self, forwards, *, global_batch_size=None, epoch=0):
    ...         ...  # {"total": <scalar tensor>, <other logged terms>}
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Callable, Optional


@dataclasses.dataclass(frozen=True)
class Forward:
    """One training-mode forward of the student in a step.

    Args:
        kind: "clean" (the batch x), "adv" (its adversarial examples x') or "mirror" (the
            adversarial perturbation mirrored about the batch, x - (x' - x): IGDM's).
        used: whether the loss reads its output. An unused forward only moves batch-norm
            statistics (a reference code's repeated call). Defaults to True.
    """

    kind: str
    used: bool = True

    def __post_init__(self):
        if self.kind not in ("clean", "adv", "mirror"):
            raise ValueError(
                f'`kind` must be "clean", "adv" or "mirror"; received kind={self.kind!r}'
            )


CLEAN, ADV, MIRROR = Forward("clean"), Forward("adv"), Forward("mirror")


@dataclasses.dataclass(frozen=True)
class Ascent:
    """What a method's training attack ascends (docs/method.md §3.2).

    Args:
        formula: the objective in words, x' the adversarial batch, x the clean one, s the
            student, t the teacher, e.g. "CE(s(x'), y)".
        objective: `(x, y, student, teacher) -> per-sample objective of x'`, the networks given
            as callables (the teacher None without one); built from `dgad_tf.attacks`.
    """

    formula: str
    objective: Callable


def _attacks():
    return importlib.import_module("dgad_tf.attacks")


CE_TO_LABELS = Ascent(
    "CE(s(x'), y)", lambda x, y, student, teacher: _attacks().ce_objective(student, y)
)
KL_TEACHER_ADV = Ascent(
    "KL(t(x') || s(x'))",
    lambda x, y, student, teacher: _attacks().kl_objective(teacher, student),
)
KL_STUDENT_CLEAN = Ascent(
    "KL(s(x) || s(x'))",
    lambda x, y, student, teacher: _attacks().kl_to_fixed_objective(student(x), student),
)
KL_TEACHER_CLEAN = Ascent(
    "KL(t(x) || s(x'))",
    lambda x, y, student, teacher: _attacks().kl_to_fixed_objective(teacher(x), student),
)

START_RULES = ("uniform", "gaussian", "none")


class LossFunction:
    """A loss function of `dgad_tf.losses`, imported (with TensorFlow) on first use.

    Args:
        module: the module under `dgad_tf.losses`, e.g. "baselines".
        name: the function's name in it, e.g. "trades_loss".
    """

    def __init__(self, module: str, name: str):
        self.module, self.name = module, name

    def __get__(self, instance, owner):
        return getattr(importlib.import_module(f"dgad_tf.losses.{self.module}"), self.name)


class MethodLoss:
    """Base of the method losses: a frozen dataclass whose fields are the method's options.

    Calling a method loss returns its loss dict: `total` (the value to differentiate) and the
    method's separate terms for the log. `forwards` holds "y" (integer labels) and the logits the
    method reads: "s_clean", "s_adv" (student, training mode, on the batch and on its adversarial
    examples), "t_clean", "t_adv" (teacher, inference mode). `global_batch_size` divides the
    per-sample sums (None: this batch's size; the distiller always passes it); `epoch` is the
    0-based epoch being trained. A loss whose student forwards include a "mirror" forward
    (`IGDM`) also gets "s_mirror" and "t_mirror", the networks on x - (x' - x).

    A subclass is a frozen, keyword-only dataclass. It overrides `compute_loss` (or names a
    `loss_fn` that takes the `inputs` in order and its fields as keywords), and sets the class
    attributes below that differ from the defaults.

    Class attributes:
        inputs: the forwards `compute_loss` reads, e.g. ("s_adv", "y"). A step runs the
            student's clean forward only when "s_clean" is among them.
        needs_teacher: whether the method distils from a teacher. Defaults to True.
        ascent: what the training attack ascends (an `Ascent`), None for no attack. Defaults
            to `KL_TEACHER_ADV`.
        default_start: the attack's random start when `PGD(start="auto")`: "gaussian"
            (x + 0.001·N(0, I), the distillation methods' and TRADES's code), "uniform" or
            "none". Defaults to "gaussian".
        reference_forwards: the student's training-mode forwards in the order of the method's
            reference code (docs/method.md §9.10). Defaults to (CLEAN, ADV).
        reference_train_mode_attack: the reference attacks with the student in training mode.
            Defaults to False.
        reference_forwards_after_warmup: the reference's forwards once a warm-up is over:
            `reference_forwards` followed by unused ones, run when `introspection(epoch)` is
            positive. Defaults to None (the same forwards in every epoch).
    """

    loss_fn = None
    inputs: tuple = ()
    needs_teacher = True
    ascent: Optional[Ascent] = KL_TEACHER_ADV
    default_start = "gaussian"
    reference_forwards = (CLEAN, ADV)
    reference_train_mode_attack = False
    reference_forwards_after_warmup = None

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        after, before = cls.reference_forwards_after_warmup, tuple(cls.reference_forwards)
        if after is not None and (
            tuple(after[: len(before)]) != before or any(f.used for f in after[len(before) :])
        ):
            raise ValueError(
                f"{cls.__name__}.reference_forwards_after_warmup must extend reference_forwards "
                f"with unused forwards; received {after!r} after {before!r}"
            )
        if cls.default_start not in START_RULES:
            raise ValueError(
                f"{cls.__name__}.default_start must be one of {', '.join(START_RULES)}; "
                f"received {cls.default_start!r}"
            )

    def __call__(self, forwards: dict, *, global_batch_size=None, epoch=0) -> dict:
        return self.compute_loss(forwards, global_batch_size=global_batch_size, epoch=epoch)

    def compute_loss(self, forwards: dict, *, global_batch_size=None, epoch=0) -> dict:
        """The loss dict of one step: `loss_fn` on the `inputs`, with the fields as options."""
        if self.loss_fn is None:
            raise NotImplementedError(
                f"{type(self).__name__} must override compute_loss(forwards, *, "
                "global_batch_size=None, epoch=0) or set loss_fn"
            )
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

    # ------------------------------------------------------------------ the method's step

    def validate_model_compatibility(self, teacher, student) -> None:
        """Refuse a teacher the method does not use, a missing one, or one that does not fit.

        Raises:
            ValueError: a teacher is missing or unwanted, is the student, or has another input
                shape or number of classes.
            TypeError: the teacher is not a `keras.Model`.
        """
        kind = type(self).__name__
        if self.needs_teacher and teacher is None:
            raise ValueError(
                f"{kind} distils from a teacher; pass teacher=<a trained keras.Model with the "
                "student's input shape and classes>"
            )
        if teacher is None:
            return
        if not self.needs_teacher:
            distilling = ", ".join(c.__name__ for c in METHOD_LOSSES.values() if c.needs_teacher)
            raise ValueError(
                f"{kind} trains without a teacher; received teacher={teacher.name!r}. Pass "
                f"teacher=None, or a loss that distils ({distilling})"
            )
        import keras

        if not isinstance(teacher, keras.Model):
            raise TypeError(f"`teacher` must be a keras.Model; received {type(teacher).__name__}")
        if teacher is student:
            raise ValueError("teacher and student are the same model; the teacher must be another")
        s_in, t_in = tuple(student.input_shape[1:]), tuple(teacher.input_shape[1:])
        if s_in != t_in:
            raise ValueError(f"teacher input shape {t_in} differs from the student's {s_in}")
        s_out, t_out = student.output_shape[-1], teacher.output_shape[-1]
        if s_out != t_out:
            raise ValueError(f"teacher has {t_out} classes but the student has {s_out}")

    def attack_objective(self, x, y, *, student, teacher):
        """The per-sample objective the training attack ascends on (x, y), or None (no attack).

        Args:
            x: the clean batch.
            y: its integer labels.
            student: the student as a callable (inference mode, or training mode for a
                reference train-mode attack).
            teacher: the teacher as a callable (inference mode), or None.
        """
        return None if self.ascent is None else self.ascent.objective(x, y, student, teacher)

    def random_start(self, reference_forwards: bool = False) -> str:
        """The attack's random start for `PGD(start="auto")` (docs/method.md §3.3).

        Args:
            reference_forwards: whether the run follows the reference code's forwards.
                Defaults to False.
        """
        return self.default_start

    def student_forwards(self, reference_forwards: bool = False) -> tuple[Forward, ...]:
        """The student's training-mode forwards of a step, in order.

        Args:
            reference_forwards: the reference code's order and repeated calls
                (`reference_forwards`) instead of one clean forward when the loss reads it and
                one adversarial forward when the method attacks. Defaults to False.
        """
        if reference_forwards:
            return tuple(self.reference_forwards)
        return ((CLEAN,) if "s_clean" in self.inputs else ()) + (
            (ADV,) if self.ascent is not None else ()
        )

    def forwards_added_after_warmup(self, reference_forwards: bool = False) -> tuple:
        """The unused forwards the reference adds once `introspection(epoch)` is positive."""
        after = self.reference_forwards_after_warmup
        if not reference_forwards or after is None:
            return ()
        return tuple(after[len(self.reference_forwards) :])

    def logged_terms(self, num_classes: int) -> list[str]:
        """The keys of the loss dict (`total` and the terms the distiller logs), sorted."""
        import tensorflow as tf

        logits = tf.zeros([2, num_classes])
        dummy = dict(
            s_clean=logits, s_adv=logits, t_clean=logits, t_adv=logits, y=tf.zeros([2], tf.int32)
        )
        return sorted(self(dummy, global_batch_size=2, epoch=0).keys())

    def for_batch_size(self, batch_size: int) -> "MethodLoss":
        """This loss for a run whose configured global batch size is `batch_size` (itself,
        unless an option defaults to the batch size)."""
        return self

    def for_epochs(self, epochs: int) -> "MethodLoss":
        """This loss for a run of `epochs` epochs (itself, unless an option defaults to the
        run's length, as `IGDM.total_epochs` does)."""
        return self

    def section_options(self) -> dict:
        """The options a config's `method:` section holds for this loss: its fields (a wrapper
        such as `IGDM` writes its base's fields and its own block)."""
        return self.get_config()


# --------------------------------------------------------------------------- the registry

METHOD_LOSSES: dict[str, type] = {}
"""Method name (`method.name` of a config) -> its loss class: the one registry of methods."""


def register(name: str):
    """Class decorator: `name` resolves to the class in `get` and in a config's `method.name`."""

    def decorate(cls):
        if name in METHOD_LOSSES:
            raise ValueError(f"a method loss named {name!r} is already registered")
        METHOD_LOSSES[name] = cls
        return cls

    return decorate


def get(identifier) -> type:
    """The `MethodLoss` subclass a method name or a dotted class path names.

    Args:
        identifier: a registered name ("dgad", "trades", ...), a dotted path to a subclass
            defined anywhere importable ("mypkg.losses.MyLoss"), or the class itself.

    Raises:
        ValueError: an unknown name, a path that does not import, or not a `MethodLoss`.

    Example:
        >>> get("trades")(beta=6.0)
        TRADES(beta=6.0)
    """
    if isinstance(identifier, type):
        cls = identifier
    elif isinstance(identifier, str) and identifier in METHOD_LOSSES:
        return METHOD_LOSSES[identifier]
    elif isinstance(identifier, str) and "." in identifier.strip("."):
        module, _, attribute = identifier.rpartition(".")
        try:
            cls = getattr(importlib.import_module(module), attribute)
        except (ImportError, AttributeError) as err:
            raise ValueError(
                f"method {identifier!r}: cannot import {attribute!r} from {module!r} ({err}); "
                "a dotted path must name a MethodLoss subclass in a module on the Python path"
            ) from None
    else:
        raise ValueError(
            f"unknown method {identifier!r}; known methods: {', '.join(METHOD_LOSSES)}, or a "
            "dotted path to a dgad_tf.losses.MethodLoss subclass (mypkg.mymodule.MyLoss)"
        )
    if not (
        isinstance(cls, type) and issubclass(cls, MethodLoss) and dataclasses.is_dataclass(cls)
    ):
        raise ValueError(
            f"method {identifier!r} must be a dataclass subclass of dgad_tf.losses.MethodLoss; "
            f"received {cls!r}"
        )
    return cls


def name_of(loss) -> str:
    """The method name of a loss object or class: its registered name, else its dotted path."""
    cls = loss if isinstance(loss, type) else type(loss)
    for name, registered in METHOD_LOSSES.items():
        if registered is cls:
            return name
    return f"{cls.__module__}.{cls.__qualname__}"


def option_names(cls) -> tuple[str, ...]:
    """The options of a method loss class: its dataclass fields, in order."""
    return tuple(f.name for f in dataclasses.fields(cls))

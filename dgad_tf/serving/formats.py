"""Export formats by name: what `export_student(formats=)`, `export.formats` and `--formats` take.

Each name maps to an `ExportFormat`: where its artifact goes in the version folder, how it is
written, how it is loaded back to be checked, its parity rule against the Keras model, its size
estimate and what the model card says about it. `export_student`, `verify.build_and_verify`, the
size estimate, `dgad_tf.config` and `python -m dgad_tf.export` ask this table, so adding a format
is one `register_export_format` call beside its writer: `savedmodel.py` registers `saved_model`,
`tflite.py` the TFLite variants. (The Model Garden's `official/core/export_base.py` gives each
export module its own serving functions the same way; here a format also carries its check.)

This module imports no TensorFlow; the writers and loaders do.

Example:
    >>> from dgad_tf.serving import EXPORT_FORMATS
    >>> EXPORT_FORMATS.get("tflite_float").parity
    ProbabilityTolerance(tolerance=0.0001)
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional

import numpy as np

from dgad_tf.registry import Registry


class ExportVerificationError(RuntimeError):
    """An exported artifact disagrees with the Keras model beyond its tolerance."""


def softmax(logits):
    """Softmax over the last axis of a NumPy array, shifted by the row maximum."""
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)


@dataclasses.dataclass(frozen=True)
class ProbabilityTolerance:
    """Parity rule: max abs difference of softmax probabilities at most `tolerance`.

    For formats that compute in float: a near-copy of the model (a bias a hundredth off) must
    fail it, so the tolerance sits a few orders above the measured float error and below that.

    Args:
        tolerance: the largest max abs difference of probabilities accepted.
    """

    tolerance: float

    def check_probabilities(self, name, reference_probabilities, probabilities):
        """Figures of the check on probabilities; raises naming `name` on a miss."""
        diff = float(np.max(np.abs(reference_probabilities - probabilities)))
        figures = {
            "max_abs_diff_probabilities": diff,
            "tolerance": self.tolerance,
            "top1_agreement": float(
                np.mean(reference_probabilities.argmax(-1) == probabilities.argmax(-1))
            ),
        }
        if not diff <= self.tolerance:
            raise ExportVerificationError(
                f"{name}: max abs difference of probabilities {diff:.3g} exceeds {self.tolerance:g}"
            )
        return figures

    def check(self, name, reference_logits, logits):
        """Figures of the check on logits (compared as probabilities); raises on a miss."""
        figures = self.check_probabilities(name, softmax(reference_logits), softmax(logits))
        figures["max_abs_diff_logits"] = float(np.max(np.abs(reference_logits - logits)))
        return figures


@dataclasses.dataclass(frozen=True)
class Top1Agreement:
    """Parity rule: the artifact keeps the Keras model's top-1 class on at least `minimum`.

    For quantised formats, whose probabilities move too much for a tolerance to mean anything.

    Args:
        minimum: the smallest fraction of the parity batch that must agree.
    """

    minimum: float

    def check(self, name, reference_logits, logits):
        """Figures of the check; ExportVerificationError naming `name` on a miss."""
        agreement = float(np.mean(reference_logits.argmax(-1) == logits.argmax(-1)))
        if not agreement >= self.minimum:
            raise ExportVerificationError(
                f"{name}: top-1 agreement with the float model {agreement:.4f} is below "
                f"{self.minimum:g}"
            )
        return {
            "top1_agreement": agreement,
            "min_top1_agreement": self.minimum,
            "max_abs_diff_logits": float(np.max(np.abs(reference_logits - logits))),
        }


@dataclasses.dataclass(frozen=True)
class ExportInputs:
    """What every writer and card entry is built with.

    Args:
        image_shape: (H, W, C) of one image.
        num_classes: the number of logits.
        representative_x: uint8 calibration images, or None.
        representative_n: how many calibration images to use.
    """

    image_shape: tuple
    num_classes: int
    representative_x: Any = None
    representative_n: int = 200


@dataclasses.dataclass(frozen=True)
class ExportFormat:
    """One named export format (see the module docstring).

    The loaded artifact (`load(path)`) is any object with `logits(x)` (float images in [0, 1] to
    float logits) and `classes(x)` (uint8 images to class indices); TFLite's is `TFLiteRunner`.

    Args:
        path: where the artifact goes, relative to the version folder ("." for the folder
            itself); also the card's `path`.
        write: `write(model, path, inputs)` writes the artifact for `ExportInputs` `inputs`.
        load: `load(path) -> artifact` reads it back from disk.
        parity: the rule the artifact's logits must meet on the parity batch
            (`ProbabilityTolerance` or `Top1Agreement`, or any object with
            `check(name, reference_logits, logits) -> figures`).
        describe: `describe(artifact, path, inputs) -> dict`, the card's `artifacts` entry.
        weight_copies: bytes written per float32 byte of the weights, for the disk-space
            estimate (a SavedModel 2, float TFLite 1, int8 weights 0.25).
        needs_representative_data: the writer calibrates on `representative_x`. Defaults to
            False.
        white_box: the artifact runs the very float graph the PGD-20 images were made on, so its
            attacked accuracy is the card's `robust_accuracy_pgd20` rather than
            `transfer_accuracy_pgd20`. Defaults to False.
        default: exported when no formats are named. Defaults to True.
        check: `check(fmt, artifact, parity_u8, reference_logits) -> figures` replacing the
            default check (`parity.check` on `artifact.logits` of the float parity batch), for
            a format with more to check. Defaults to None.
    """

    path: str
    write: Callable
    load: Callable
    parity: Any
    describe: Callable
    weight_copies: float
    needs_representative_data: bool = False
    white_box: bool = False
    default: bool = True
    check: Optional[Callable] = None


EXPORT_FORMATS = Registry("export format", entry_type=ExportFormat)


def register_export_format(name: str, fmt: ExportFormat, *, replace: bool = False):
    """Register `fmt` as `name` in `EXPORT_FORMATS`; returns `fmt`.

    Args:
        name: a lower-case identifier, e.g. "tflite_float16".
        fmt: the `ExportFormat`.
        replace: allow replacing a format of that name. Defaults to False.
    """
    return EXPORT_FORMATS.register(name, fmt, replace=replace)


def default_formats() -> tuple[str, ...]:
    """The formats exported when none are named, in registration order."""
    return tuple(n for n in EXPORT_FORMATS.names() if EXPORT_FORMATS.get(n).default)

"""Argument checks of the losses and their options; no TensorFlow, so that a config that
names a method loss is checked before TensorFlow loads."""

import numbers

# The KL scales of the distillation baselines, and DGAD's weightings (docs/method.md §9.9, §7.5).
KL_REDUCTIONS = ("batchmean", "class_mean")
DGAD_WEIGHTINGS = ("standard", "reference_mobilenetv2")


def _check_non_negative(name, value):
    if isinstance(value, numbers.Number) and not value >= 0:
        raise ValueError(f"`{name}` must be >= 0; received {name}={value}")


def _check_unit_interval(name, value):
    if isinstance(value, numbers.Number) and not 0 <= value <= 1:
        raise ValueError(f"`{name}` must be in [0, 1]; received {name}={value}")


def _check_positive(name, value):
    if isinstance(value, numbers.Number) and not value > 0:
        raise ValueError(f"`{name}` must be > 0; received {name}={value}")


def _check_choice(name, value, choices):
    if value not in choices:
        raise ValueError(f"`{name}` must be one of {', '.join(choices)}; received {name}={value!r}")


def _check_kl_reduction(kl_reduction, kl_scale):
    _check_choice("kl_reduction", kl_reduction, KL_REDUCTIONS)
    _check_positive("kl_scale", kl_scale)

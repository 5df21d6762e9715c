"""CIFAR model zoo: a name -> builder registry of Keras functional models returning logits.

All models take float32 images in [0, 1] (NHWC) and return logits; an optional mean/std
normalisation is a `keras.layers.Normalization` layer inside the model. Batch norm is
`FusedBatchNormalization` (PyTorch's moving-variance update) unless synchronized; every other
layer is a standard Keras layer. `save_model` writes `.keras` files that plain
`keras.saving.load_model` loads (safe mode, no custom objects, no dgad_tf import), and
`load_model` reads them back with `FusedBatchNormalization` restored (see `saving.py`).
Weight-carrying layers are named after the PyTorch reference module paths, so PyTorch
checkpoints convert by name (`dgad_tf.teachers.conversion`).

Example:
    >>> from dgad_tf.models import build_model
    >>> model = build_model("wrn-34-10", num_classes=10)
    >>> model.name
    'wrn-34-10'
"""

import re

from dgad_tf.models.mobilenet_v2 import build_mobilenet_v2
from dgad_tf.models.preact_resnet import build_preact_resnet
from dgad_tf.models.resnet import build_resnet
from dgad_tf.models.saving import load_model, save_model
from dgad_tf.models.small import build_small_cnn
from dgad_tf.models.wide_resnet import build_wide_resnet

__all__ = [
    "MODEL_NAMES",
    "build_model",
    "canonical_model_name",
    "build_mobilenet_v2",
    "build_preact_resnet",
    "build_resnet",
    "build_small_cnn",
    "build_wide_resnet",
    "load_model",
    "save_model",
]

_FIXED_BUILDERS = {
    "small-cnn": build_small_cnn,
    "resnet-18": lambda num_classes, input_shape, **kw: build_resnet(
        18, num_classes, input_shape, **kw
    ),
    "resnet-34": lambda num_classes, input_shape, **kw: build_resnet(
        34, num_classes, input_shape, **kw
    ),
    "preact-resnet-18": lambda num_classes, input_shape, **kw: build_preact_resnet(
        18, num_classes, input_shape, **kw
    ),
    "mobilenetv2": build_mobilenet_v2,
}
# Compact spellings ("resnet18", "PreActResNet18") of the fixed names.
_COMPACT = {name.replace("-", ""): name for name in _FIXED_BUILDERS}
_WRN_PATTERN = re.compile(r"^(?:wrn|wide-?resnet)-?(\d+)-(\d+)$")
_WRN_EXAMPLES = ("wrn-16-4", "wrn-28-10", "wrn-34-10", "wrn-34-20")

MODEL_NAMES = tuple(_FIXED_BUILDERS) + _WRN_EXAMPLES
"""Known model names; any "wrn-D-W" with (D - 4) % 6 == 0 and W >= 1 is accepted too."""


def _unknown(name):
    return ValueError(
        f"Unknown model name {name!r}; known names: {', '.join(MODEL_NAMES)} "
        f"(and any 'wrn-D-W' with (D - 4) % 6 == 0, W >= 1)"
    )


def canonical_model_name(name):
    """Return the canonical spelling of a model name, or raise ValueError.

    Case, underscores and missing hyphens are forgiven: "ResNet18", "resnet_18" -> "resnet-18",
    "WRN_34_10" -> "wrn-34-10".

    Args:
        name: a model name.
    """
    if not isinstance(name, str):
        raise ValueError(f"`name` must be a string; received name={name!r}")
    spelled = name.strip().lower().replace("_", "-")
    match = _WRN_PATTERN.match(spelled)
    if match:
        depth, width = int(match.group(1)), int(match.group(2))
        if depth < 10 or (depth - 4) % 6 or width < 1:
            raise ValueError(
                f"WideResNet `name` needs depth D >= 10 with (D - 4) % 6 == 0 and width W >= 1; "
                f"received name={name!r}"
            )
        return f"wrn-{depth}-{width}"
    compact = spelled.replace("-", "")
    if compact in _COMPACT:
        return _COMPACT[compact]
    raise _unknown(name)


def build_model(
    name,
    num_classes,
    input_shape=(32, 32, 3),
    *,
    normalize=None,
    sync_batchnorm=False,
    name_prefix=None,
    init="torch",
):
    """Build a model of the zoo by name.

    The returned `keras.Model` is named after the canonical name (with `name_prefix` prepended),
    e.g. "resnet-18", and maps [0, 1] images to logits.

    Args:
        name: model name, see `MODEL_NAMES`; "wrn-D-W" for any valid depth and width.
        num_classes: number of output logits (>= 2).
        input_shape: (H, W, C) of the input images. Defaults to (32, 32, 3).
        normalize: optional (mean, std) pair of per-channel sequences, applied inside the model
            as `(x - mean) / std`. Defaults to None.
        sync_batchnorm: use `BatchNormalization(synchronized=True)` (for multi-replica
            training). Defaults to False.
        name_prefix: string prepended to every layer name and the model name, so that a teacher
            and a student can live in one graph without clashes. Defaults to None.
        init: initial weights: "torch" draws them as the PyTorch reference networks do
            (U(+-1/sqrt(fan_in)) for conv and linear layers; the WideResNet's own scheme), "keras"
            keeps the Keras initialisers (he_normal convs, glorot_uniform linear, zero biases).
            Defaults to "torch".

    Example:
        >>> model = build_model("resnet18", 10, normalize=((0.49, 0.48, 0.45), (0.25, 0.24, 0.26)))
        >>> model.name
        'resnet-18'
    """
    canonical = canonical_model_name(name)
    kwargs = dict(
        normalize=normalize, sync_batchnorm=bool(sync_batchnorm), name_prefix=name_prefix, init=init
    )
    if canonical.startswith("wrn-"):
        _, depth, width = canonical.split("-")
        return build_wide_resnet(int(depth), int(width), num_classes, input_shape, **kwargs)
    return _FIXED_BUILDERS[canonical](num_classes, input_shape, **kwargs)

"""The one argument convention of the evaluations: any model, images and labels, checked.

`evaluate_robustness`, `evaluate_model`, `adversarial_images`, `AutoAttack` and `run_autoattack`
all take `(model, x, y, *, eps=8/255, batch_size=256, seed=0, input_scale=1.0, signature=None)`
and pass the first three through here:

* `model` is a Keras model (called with `training=False`), a path (a SavedModel directory, a
  `.keras` file or a run folder), a SavedModel already loaded with `tf.saved_model.load`, or a
  callable mapping a float32 batch to logits [N, classes]. `logits_function` turns each into a
  `LogitsFunction`: a callable of float [0, 1] images, so every attack works in one pixel scale.
* `input_scale` is the pixel scale the *model* takes: 1 for [0, 1] (dgad_tf's networks and the
  `logits` signature of its exports), 255 for models or signatures that take 0-255 pixels (the
  `serving_default` signature of dgad_tf's exports takes uint8). The images handed to the
  evaluation stay uint8 0..255 or float [0, 1] whatever the model's scale: they are multiplied by
  `input_scale` on the way in, and rounded when the signature takes integer pixels.
* `signature` picks a SavedModel's signature. Defaults to `serving_default` (or the only one).
  Its output is the one named `logits`, else the one named `probabilities` taken as
  log-probabilities (logits up to a per-image constant, which no attack loss here sees), else
  its only output.
* `x` is uint8 0..255 or float in [0, 1], `[N, H, W, C]` (`float_images`); `y` holds class
  indices `[N]` (`class_labels`). `check_inputs` checks both against the model's input shape and
  the number of classes it returns, with errors naming the problem.

A signature that takes integer pixels passes no gradient to them: it can be scored clean and by
Square (AutoAttack's query-only attack, whose candidates lie on the 1/255 grid when eps is a
multiple of 1/255), and the gradient attacks refuse it (`require_gradients`).
"""

import logging
import os
import pathlib
import warnings

import keras
import numpy as np
import tensorflow as tf

from dgad_tf.models import load_model
from dgad_tf.rundir import is_saved_model_dir, keras_model_path

logger = logging.getLogger(__name__)

DEFAULT_SIGNATURE = "serving_default"
_SMALLEST_PROBABILITY = float(np.finfo(np.float32).tiny)
_PROBABILITY_TOLERANCE = 1e-5
_RANDOMNESS_TOLERANCE = 1e-4


class LogitsFunction:
    """A model as a function of float [0, 1] images `[N, H, W, C]` to logits `[N, classes]`.

    Attributes:
        fn: the callable the attacks differentiate (the caller's own callable when it needs no
            rescaling, so traced attack loops cached for it are reused).
        input_shape: the shape of one image the model takes, None where unknown.
        differentiable: False when the model takes integer pixels (no input gradient).
        description: what the model is, for reports and errors.
    """

    def __init__(self, fn, *, input_shape=None, differentiable=True, description="callable"):
        self.fn = fn
        self.input_shape = None if input_shape is None else tuple(input_shape)
        self.differentiable = bool(differentiable)
        self.description = description

    def __call__(self, x):
        return self.fn(x)

    def __repr__(self):
        return f"LogitsFunction({self.description})"


def logits_function(model, *, input_scale=1.0, signature=None) -> LogitsFunction:
    """`model` as a `LogitsFunction` of float [0, 1] images (see the module docstring).

    Args:
        model: a Keras model, a path (SavedModel directory, `.keras` file or run folder), a
            loaded SavedModel, a callable returning logits, or a `LogitsFunction` (returned as
            is).
        input_scale: the pixel scale the model takes (1 for [0, 1], 255 for 0-255). Defaults
            to 1.0.
        signature: the SavedModel signature to call. Defaults to None (`serving_default`, or
            the only signature).

    Raises:
        ValueError: a path that is no model, a signature that is missing or has no logits, an
            input scale that does not fit the signature's input dtype.
        FileNotFoundError: nothing at the path.
        TypeError: `model` is none of the kinds above.
    """
    if isinstance(model, LogitsFunction):
        return model
    if isinstance(input_scale, bool) or not isinstance(input_scale, (int, float, np.number)):
        raise ValueError(f"`input_scale` must be a positive number; received {input_scale!r}")
    if not input_scale > 0:
        raise ValueError(f"`input_scale` must be a positive number; received {input_scale!r}")
    scale = float(input_scale)
    if isinstance(model, (str, os.PathLike)):
        path = pathlib.Path(model)
        if is_saved_model_dir(path):
            return _saved_model_function(
                tf.saved_model.load(str(path)), scale, signature, f"SavedModel {path}"
            )
        model = load_model(keras_model_path(path))
        description = f"Keras model {path}"
    elif isinstance(model, keras.Layer):
        description = f"Keras model {model.name!r}"
    elif hasattr(model, "signatures") and not callable(getattr(model, "signatures")):
        return _saved_model_function(model, scale, signature, "loaded SavedModel")
    elif callable(model):
        _no_signature_for(signature, "a callable")
        fn = model if scale == 1.0 else _rescaled(model, scale)
        return LogitsFunction(fn, description=_described("callable", scale))
    else:
        raise TypeError(
            "`model` must be a Keras model, a SavedModel directory or .keras path, a loaded "
            f"SavedModel or a callable returning logits; received {type(model).__name__}"
        )
    _no_signature_for(signature, "a Keras model")
    return LogitsFunction(
        _rescaled(_inference_mode(model), scale),
        input_shape=_keras_input_shape(model),
        description=_described(description, scale),
    )


def _inference_mode(model):
    def call(x):
        return model(x, training=False)

    return call


def _rescaled(fn, scale):
    if scale == 1.0:
        return fn

    def call(x):
        return fn(x * scale)

    return call


def _no_signature_for(signature, kind):
    if signature is not None:
        raise ValueError(
            f"`signature` chooses a SavedModel's signature; received signature={signature!r} "
            f"for {kind}"
        )


def _described(description, scale):
    return description if scale == 1.0 else f"{description}, input scale {scale:g}"


def _keras_input_shape(model):
    try:
        shape = model.input_shape
    except (AttributeError, ValueError):
        return None
    if isinstance(shape, list):
        raise ValueError(
            f"`model` must take one image input; the Keras model takes {len(shape)} inputs"
        )
    return tuple(shape[1:])


def _saved_model_function(loaded, scale, signature, description):
    signatures = dict(getattr(loaded, "signatures", {}) or {})
    if not signatures:
        raise ValueError(f"`model`: {description} has no signatures to call")
    if signature is None:
        if DEFAULT_SIGNATURE not in signatures and len(signatures) > 1:
            raise ValueError(
                f"`model`: {description} has no {DEFAULT_SIGNATURE!r} signature; choose one "
                f"of {sorted(signatures)} with `signature` (--signature)"
            )
        signature = DEFAULT_SIGNATURE if DEFAULT_SIGNATURE in signatures else next(iter(signatures))
    if signature not in signatures:
        raise ValueError(
            f"`model`: {description} has no signature {signature!r}; it has {sorted(signatures)}"
        )
    function = signatures[signature]
    inputs = function.structured_input_signature[1]
    if function.structured_input_signature[0] or len(inputs) != 1:
        raise ValueError(
            f"`model`: signature {signature!r} of {description} must take one image input; "
            f"it takes {sorted(inputs)}"
        )
    ((input_name, spec),) = inputs.items()
    output_key, from_probabilities = _output_key(function.structured_outputs, signature)
    dtype = spec.dtype
    integer = dtype.is_integer
    if integer and scale != 255.0:
        raise ValueError(
            f"`model`: signature {signature!r} of {description} takes {dtype.name} pixels "
            f"(0..255); pass input_scale=255 (--input-scale 255), or choose a float signature "
            f"of {sorted(signatures)} with `signature`"
        )
    if not (integer or dtype.is_floating):
        raise ValueError(
            f"`model`: signature {signature!r} of {description} takes {dtype.name} input, "
            "not images"
        )

    def call(x):
        x = tf.convert_to_tensor(x, tf.float32) * scale
        x = tf.cast(tf.round(x), dtype) if integer else tf.cast(x, dtype)
        out = function(**{input_name: x})[output_key]
        if from_probabilities:
            out = tf.math.log(tf.maximum(tf.cast(out, tf.float32), _SMALLEST_PROBABILITY))
        return out

    call.saved_model = loaded  # the signature's variables live as long as the loaded object
    detail = f"signature {signature!r}, {dtype.name} images, output {output_key!r}" + (
        " as log-probabilities" if from_probabilities else ""
    )
    shape = spec.shape[1:] if spec.shape.rank else None
    return LogitsFunction(
        call,
        input_shape=None if shape is None else tuple(shape.as_list()),
        differentiable=not integer,
        description=_described(f"{description} ({detail})", scale),
    )


def _output_key(outputs, signature):
    if not isinstance(outputs, dict):
        raise ValueError(f"`model`: signature {signature!r} must return a dict of tensors")
    if "logits" in outputs:
        return "logits", False
    # Before the single-output rule: a signature returning only `probabilities` is no logits.
    if "probabilities" in outputs:
        return "probabilities", True
    if len(outputs) == 1:
        return next(iter(outputs)), False
    raise ValueError(
        f"`model`: signature {signature!r} returns {sorted(outputs)}; it needs an output named "
        "'logits' (or 'probabilities'), or a single output"
    )


def float_images(x, input_shape=None) -> np.ndarray:
    """`x` as float32 [0, 1]: uint8 is divided by 255, float must already be in [0, 1].

    Args:
        x: uint8 0..255 or float [0, 1] images `[N, H, W, C]`.
        input_shape: the shape of one image the model takes (None entries match anything).
            Defaults to None (not checked).

    Raises:
        ValueError: another dtype, values outside [0, 1], or a shape the model does not take.
    """
    x = np.asarray(x)
    if x.dtype == np.uint8:
        images = x.astype(np.float32) / 255.0
    elif np.issubdtype(x.dtype, np.floating):
        images = x.astype(np.float32, copy=False)
        if images.size and not (images.min() >= 0.0 and images.max() <= 1.0):
            raise ValueError(
                f"`x` must be uint8 0..255 or float in [0, 1]; received {x.dtype} values in "
                f"[{float(np.nanmin(images))}, {float(np.nanmax(images))}] (divide 0-255 floats "
                "by 255; a model that takes 0-255 pixels is given input_scale=255)"
            )
    else:
        raise ValueError(f"`x` must be uint8 0..255 or float in [0, 1]; received dtype {x.dtype}")
    if images.ndim < 2:
        raise ValueError(f"`x` must be a batch of images [N, H, W, C]; received shape {x.shape}")
    if input_shape is not None and not _shape_fits(images.shape[1:], input_shape):
        shown = tuple("?" if d is None else d for d in input_shape)
        raise ValueError(
            f"the model takes images of shape {shown} but `x` has {tuple(images.shape[1:])}"
        )
    return images


def _shape_fits(shape, expected):
    return len(shape) == len(expected) and all(e is None or e == s for s, e in zip(shape, expected))


def class_labels(y, n) -> np.ndarray:
    """`y` as int64 class indices `[n]` (a column `[n, 1]` is accepted).

    Raises:
        ValueError: not one integer label per image, or a negative label.
    """
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise ValueError(
            f"`y` must hold one class index per image, shape [{n}]; received shape {y.shape}"
            + (" (one-hot? pass y.argmax(-1))" if y.ndim == 2 else "")
        )
    if len(y) != n:
        raise ValueError(f"{n} images but {len(y)} labels")
    if not np.issubdtype(y.dtype, np.integer):
        if not (np.issubdtype(y.dtype, np.floating) and np.all(np.mod(y, 1) == 0)):
            raise ValueError(f"`y` must hold integer class indices; received dtype {y.dtype}")
    y = y.astype(np.int64)
    if y.size and y.min() < 0:
        raise ValueError(f"`y` holds label {int(y.min())}; class indices start at 0")
    return y


def check_inputs(model_fn, x, y):
    """Images and labels in the one convention, checked against the model on one image.

    Args:
        model_fn: a `LogitsFunction` (from `logits_function`).
        x: uint8 0..255 or float [0, 1] images `[N, H, W, C]`.
        y: class indices `[N]`.

    Returns:
        (float32 images in [0, 1], int64 labels, the number of classes), the number of classes
        None for an empty `x`.

    Raises:
        ValueError: the images or labels do not fit the convention or the model, or the model
            does not return logits `[N, classes]`.
    """
    x = float_images(x, getattr(model_fn, "input_shape", None))
    y = class_labels(y, len(x))
    if not len(x):
        return x, y, None
    num_classes = output_classes(model_fn(tf.constant(x[:2])), 2 if len(x) > 1 else 1, model_fn)
    check_label_range(y, num_classes)
    return x, y, num_classes


def check_label_range(y, num_classes: int) -> None:
    """Raise ValueError if class indices `y` (from `class_labels`) reach `num_classes`."""
    if len(y) and y.max() >= num_classes:
        raise ValueError(
            f"`y` holds label {int(y.max())} but the model has {num_classes} classes "
            f"(labels 0..{num_classes - 1})"
        )


def output_classes(outputs, n, model_fn=None) -> int:
    """The number of classes of model outputs on `n` images, or an error if not `[n, C]`."""
    shape = tuple(tf.convert_to_tensor(outputs).shape)
    if len(shape) != 2 or shape[0] != n or shape[1] < 2:
        what = getattr(model_fn, "description", "the model")
        raise ValueError(
            f"`model` ({what}) returned shape {shape} for {n} image(s); it must return logits "
            f"[{n}, classes] with classes >= 2"
        )
    return int(shape[1])


def require_gradients(model_fn, attacks):
    """Raises when gradient attacks `attacks` (names) are asked of a model without gradients."""
    if attacks and not getattr(model_fn, "differentiable", True):
        raise ValueError(
            f"`model` ({model_fn.description}) takes integer pixels, through which no gradient "
            f"flows, so {', '.join(attacks)} cannot run; choose a float signature (dgad_tf "
            "exports: signature='logits', --signature logits) or only gradient-free attacks "
            "(clean; in Python also AutoAttack's square)"
        )


def warn(message, stacklevel: int = 3):
    """Log `message` as a warning and raise it as a `RuntimeWarning` (the sanity checks' way).

    `stacklevel` counts from this function (3: the caller's caller), as `warnings.warn`'s does.
    """
    logger.warning(message)
    warnings.warn(message, RuntimeWarning, stacklevel=stacklevel)


def looks_like_probabilities(outputs, tolerance: float = _PROBABILITY_TOLERANCE) -> bool:
    """Whether model outputs `[N, classes]` are probabilities: rows non-negative summing to 1.

    Logits of a trained or freshly initialised network are not: some are negative, or the rows
    sum to something else. Reference AutoAttack warns on the same test; `AdversarialDistiller`
    refuses such a teacher or student on its first training batch.

    Args:
        outputs: a model's outputs on a batch (array or tensor).
        tolerance: how far from [0, 1] and from a sum of 1 a value may be (a float16 softmax
            sums to 1 only within its precision). Defaults to 1e-5.
    """
    values = np.asarray(outputs, dtype=np.float64)
    if values.ndim != 2 or not values.size:
        return False
    return bool(
        values.max() < 1.0 + tolerance
        and values.min() > -tolerance
        and np.all(np.abs(values.sum(-1) - 1.0) < tolerance)
    )


def check_model_outputs(model_fn, x, labels, n_calls=3):
    """The reference AutoAttack's checks on one batch: logits not probabilities, determinism.

    Also refuses outputs that are not `[N, classes]`. Warns through `warnings` and `logging`;
    returns the number of classes.
    """
    outputs = [
        tf.cast(model_fn(tf.convert_to_tensor(x)), tf.float32).numpy() for _ in range(n_calls)
    ]
    first = outputs[0]
    num_classes = output_classes(first, len(x), model_fn)
    if looks_like_probabilities(first):
        warn(
            "the model's outputs look like a probability distribution; AutoAttack needs "
            "logits (remove the final softmax)."
        )
    normalised = [out / (np.linalg.norm(out, axis=1, keepdims=True) + 1e-10) for out in outputs]
    n_correct = [int((out.argmax(1) == labels).sum()) for out in outputs]
    largest_change = max(
        float(np.linalg.norm(a - b, axis=1).max()) for a in normalised for b in normalised
    )
    if len(set(n_correct)) > 1 or largest_change > _RANDOMNESS_TOLERANCE:
        warn(
            "the model's output changes between identical calls (randomised defence or "
            "training-mode layers?); the standard AutoAttack evaluation is not reliable "
            "for it."
        )
    return num_classes

"""The one argument convention of the evaluations: any model as a function of [0, 1] images.

`evaluate_robustness`, `evaluate_model`, `adversarial_images`, `AutoAttack` and `run_autoattack`
all take `(model, x, y, *, eps=8/255, batch_size=256, seed=0, input_scale=1.0, signature=None)`
and pass the model through here:

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
* `x` (uint8 0..255 or float in [0, 1], `[N, H, W, C]`) and `y` (class indices `[N]`) are
  checked against the model's input shape and the number of classes it returns by
  `dgad_tf.model_checks.check_inputs`, with errors naming the problem.

A signature that takes integer pixels passes no gradient to them: it can be scored clean and by
Square (AutoAttack's query-only attack, whose candidates lie on the 1/255 grid when eps is a
multiple of 1/255), and the gradient attacks refuse it (`model_checks.require_gradients`).
"""

import os
import pathlib

import keras
import numpy as np
import tensorflow as tf

from dgad_tf.models import load_model
from dgad_tf.rundir import is_saved_model_dir, keras_model_path

DEFAULT_SIGNATURE = "serving_default"
_SMALLEST_PROBABILITY = float(np.finfo(np.float32).tiny)


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

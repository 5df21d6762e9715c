"""The checks of the evaluations' argument convention: images, labels and a model's outputs.

`dgad_tf.logits` turns any model into a `LogitsFunction`; the functions here check what is
handed to it and what it returns, before any attack runs, with errors naming the problem and
the fix:

* `float_images`: `x` uint8 0..255 or float in [0, 1], `[N, H, W, C]`, of the shape the model
  takes; `class_labels`: `y` one class index per image; `check_inputs` both, and the labels
  against the number of classes the model returns on one image (`check_label_range`,
  `output_classes`).
* `require_gradients`: gradient attacks refused on a model that takes integer pixels.
* `looks_like_probabilities`, `check_model_outputs`: the reference AutoAttack's checks (logits,
  not probabilities; the same output for the same input), warned through `warn`.

The training side (`batch_checks.py`, `build.py`) reuses the label, probability and warning
checks on its first batch and its teacher.
"""

import logging
import warnings

import numpy as np
import tensorflow as tf

logger = logging.getLogger(__name__)

_PROBABILITY_TOLERANCE = 1e-5
_RANDOMNESS_TOLERANCE = 1e-4


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

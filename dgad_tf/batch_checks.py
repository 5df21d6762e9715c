"""What `AdversarialDistiller` accepts as training batches, checked before training or at tracing.

Batches are (images in [0, 1], integer class labels); sample and class weights are refused (every
method's loss is its published formula, a sum over the batch divided by the global batch size).
The images may also come as a dict with one entry keyed by the student's input name (as a Keras
model with a named input takes them), `({"image": x}, y)`; the attack perturbs that one tensor.

The costly mistakes train without an error, or fail only after minutes of tracing, so the first
batch is checked before Keras starts training (`check_first_batch`):

* images outside [0, 1]: every attack clips its iterates into [0, 1], so images in 0-255 (or
  standardised to mean 0) would train as a destroyed batch;
* labels that are not one class index per image in 0..classes-1 (one-hot rows, floats,
  negative or too large indices);
* a teacher or student that returns probabilities (a final softmax) instead of logits: every
  loss takes logits, and a softmax teacher's "logits" distil almost nothing (refused);
* a teacher at chance level on the batch, with `dgad_tf.fit`'s threshold (warned, through
  `warnings` and `logging`: one batch is too few images to refuse on).

The check runs in Python on one batch, so the compiled step carries nothing of it: `fit` peeks
at the first batch of its data (a `tf.data.Dataset` is iterated once more for one batch, an
array sliced, a `PyDataset` indexed, a Python generator wrapped so that its first batch is
checked as it is drawn), and `train_on_batch` checks its first call's batch. That is done for
the first training call of a distiller only: its later `fit` calls (a benchmark's timed rounds)
pay nothing. A distributed dataset (`strategy.experimental_distribute_dataset`) is not peeked at.
"""

from __future__ import annotations

import types
from typing import Optional

import keras
import numpy as np
import tensorflow as tf

from dgad_tf import model_checks
from dgad_tf.stats import at_chance_level, chance_threshold

_HALF_PRECISION_TOLERANCE = 1e-2  # a float16 / bfloat16 softmax sums to 1 within this


def check_unit_range(images) -> None:
    """Raise ValueError unless every value of `images` is in [0, 1] (nothing for an empty batch).

    Raises:
        ValueError: naming the observed minimum and maximum and how to rescale.
    """
    values = tf.convert_to_tensor(images)
    if values.shape.num_elements() == 0:
        return
    low, high = float(tf.reduce_min(values)), float(tf.reduce_max(values))
    if 0.0 <= low and high <= 1.0:
        return
    if high > 1.0 and low >= 0.0:
        how = "images in 0-255 train on x / 255 (e.g. `dataset.map(lambda x, y: (x / 255, y))`)"
    else:
        how = (
            "normalise inside the model instead (a keras.layers.Normalization layer, or "
            "model.normalize_mean/normalize_std in a config), so that the attack's [0, 1] box and "
            "eps are in pixel units"
        )
    raise ValueError(
        "AdversarialDistiller trains on images in [0, 1] (the attack clips its adversarial "
        f"examples to that range and eps is in pixel units); the first training batch has "
        f"values in [{low:g}, {high:g}]: {how}"
    )


def first_batch(x, y, batch_size: Optional[int]):
    """(data to give Keras instead of `x`, the first batch as (inputs, labels) or None).

    `x` is returned unchanged except for a Python iterator, which is wrapped so that its first
    batch, drawn here, is still trained on. The labels are None when the data gives none.
    """
    if isinstance(x, tf.data.Dataset):
        for element in x.take(1):
            return x, _split(element)
        return x, None
    if isinstance(x, keras.utils.PyDataset):
        return x, _split(x[0]) if len(x) else None
    if isinstance(x, types.GeneratorType):  # what is drawn here must still be trained on
        try:
            element = next(x)
        except StopIteration:
            return x, None
        return _prepended(element, x), _split(element)
    size = batch_size or 32
    if isinstance(x, dict) and all(_sliceable(v) for v in x.values()):  # named inputs
        return x, ({key: value[:size] for key, value in x.items()}, _head(y, size))
    if _sliceable(x):  # an array or a tensor
        return x, (x[:size], _head(y, size))
    return x, None


def _sliceable(x):
    return hasattr(x, "shape") and hasattr(x, "__getitem__")


def _head(y, size):
    return y[:size] if _sliceable(y) else None


def _prepended(first, rest):
    yield first
    yield from rest


def _split(element):
    if isinstance(element, (tuple, list)):
        inputs = element[0] if element else None
        labels = element[1] if len(element) > 1 else None
        return inputs, labels
    return element, None


def batch_images(inputs, student: keras.Model):
    """The image tensor of a batch's inputs: `inputs` itself, or the one entry of a dict.

    A dict is taken when it has one entry keyed by the name of the student's one input (the
    form a Keras model with a named input accepts); the attack perturbs that tensor, and the
    networks are called with it. Python only: `train_step` calls it while it is traced.

    Raises:
        ValueError: a dict of several entries, or keyed otherwise than the student's input.
    """
    if not isinstance(inputs, dict):
        return inputs
    names = [tensor.name for tensor in getattr(student, "inputs", None) or []]
    if len(inputs) == 1 and len(names) == 1 and names[0] in inputs:
        return inputs[names[0]]
    if len(names) == 1:
        expected = f"the student takes one input, named {names[0]!r}"
        fix = f"key the images by {names[0]!r}, or give them as a tensor"
    else:
        expected = "the student has no one named input"
        fix = "give the images as a tensor"
    raise ValueError(
        "AdversarialDistiller attacks one image tensor per batch; the batch's inputs are a "
        f"dict with keys {sorted(inputs)} and {expected}: {fix} (e.g. "
        "`dataset.map(lambda inputs, y: (inputs['image'], y))`)"
    )


def check_first_batch(inputs, labels, *, student: keras.Model, teacher=None) -> None:
    """Check the first training batch: images, labels, logits, and the teacher against chance.

    Args:
        inputs: the batch's images (or a dict of them, see `batch_images`).
        labels: the batch's labels, or None (`check_structure` refuses that when tracing).
        student: the network being trained.
        teacher: the frozen teacher, or None. Defaults to None.

    Raises:
        ValueError: images outside [0, 1], labels that are not class indices of the student's
            classes, or a network returning probabilities; each names the fix.

    Warns:
        RuntimeWarning (also logged): the teacher's accuracy on the batch is at chance level.
    """
    images = batch_images(inputs, student)
    if images is None or not hasattr(images, "shape"):
        return
    check_unit_range(images)
    images = tf.convert_to_tensor(images)
    n = int(images.shape[0] or 0)
    if not n:
        return
    num_classes = int(student.output_shape[-1])
    y = None if labels is None else _check_labels(labels, n, num_classes)
    for role, network in (("teacher", teacher), ("student", student)):
        if network is None:
            continue
        outputs = network(images, training=False)
        _refuse_probabilities(role, network, outputs)
        if role == "teacher" and y is not None:
            _warn_if_at_chance(network, outputs, y, num_classes)


def _check_labels(labels, n: int, num_classes: int) -> np.ndarray:
    try:
        y = model_checks.class_labels(labels, n)
        model_checks.check_label_range(y, num_classes)
    except ValueError as err:
        raise ValueError(
            f"AdversarialDistiller trains on integer class labels 0..{num_classes - 1}, one "
            f"per image; the first training batch's labels do not fit: {err}. Give class "
            "indices (one-hot rows become indices with y.argmax(-1), or "
            "`dataset.map(lambda x, y: (x, tf.argmax(y, -1)))`), numbered for the student's "
            f"{num_classes} classes"
        ) from None
    return y


def _refuse_probabilities(role: str, network: keras.Model, outputs) -> None:
    outputs = tf.convert_to_tensor(outputs)
    half = outputs.dtype in (tf.float16, tf.bfloat16)
    tolerance = _HALF_PRECISION_TOLERANCE if half else 1e-5
    if not model_checks.looks_like_probabilities(outputs, tolerance):
        return
    raise ValueError(
        f"the {role} {network.name!r} returns probabilities (its outputs on the first training "
        "batch are non-negative and every row sums to 1), but AdversarialDistiller's losses and "
        f"attacks take logits: give a {role} without its final softmax (a last Dense layer with "
        "activation=None, or `keras.Model(model.inputs, model.layers[-2].output)` when the "
        "softmax is a layer of its own)"
    )


def _warn_if_at_chance(teacher: keras.Model, outputs, y: np.ndarray, num_classes: int) -> None:
    predicted = np.argmax(np.asarray(tf.cast(outputs, tf.float32)), axis=-1)
    accuracy = float(np.mean(predicted == y))
    # On a batch so small that even a perfect teacher would not clear the threshold, say nothing.
    if chance_threshold(num_classes, len(y)) >= 1 or not at_chance_level(
        accuracy, num_classes, len(y)
    ):
        return
    model_checks.warn(
        f"the teacher {teacher.name!r} is at chance level on the first training batch: clean "
        f"accuracy {accuracy:.1%} on {len(y)} images, chance {1 / num_classes:.1%} (it must "
        f"exceed {chance_threshold(num_classes, len(y)):.1%}, the threshold of dgad_tf.fit). "
        "Distilling from it trains the student on noise: check that its class order is the "
        "data's, that it takes images in [0, 1] (normalisation inside the model), and that it "
        "is the trained network",
        # shown at the user's fit / train_on_batch call: warn < here < check_first_batch <
        # the distiller's _check_first_batch < fit
        stacklevel=6,
    )


def refuse_weights(arguments: dict):
    """Raise ValueError if `arguments` gives a `sample_weight` or `class_weight`."""
    given = [key for key in ("sample_weight", "class_weight") if arguments.get(key) is not None]
    if given:
        raise ValueError(
            f"AdversarialDistiller does not support {' or '.join(given)}: every method's loss "
            "is its published formula, a sum over the batch divided by the global batch size; "
            "resample the data instead"
        )


def check_structure(data, student):
    """Refuse a batch without labels, with sample weights, or a student with nothing to train.

    `train_step` calls it while it is traced: Python only, so the compiled step holds none of it.
    """
    if not isinstance(data, (tuple, list)) or len(data) < 2 or data[1] is None:
        raise ValueError(
            "AdversarialDistiller trains on (images, integer labels) batches; the data gave "
            "no labels"
        )
    if len(data) > 2 and data[2] is not None:
        refuse_weights({"sample_weight": data[2]})
    if not student.trainable_variables:
        raise ValueError(
            f"the student {student.name!r} has no trainable variables (student.trainable is "
            f"{student.trainable}); set student.trainable = True"
        )

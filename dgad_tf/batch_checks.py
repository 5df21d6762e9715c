"""What `AdversarialDistiller` accepts as training batches, checked before training or at tracing.

Batches are (images in [0, 1], integer labels); sample and class weights are refused (every
method's loss is its published formula, a sum over the batch divided by the global batch size).

Images outside [0, 1] are the costly mistake: every attack clips its iterates into [0, 1], so
images in 0-255 (or standardised to mean 0) would train as a destroyed batch without an error.
Their range is checked once, on the first batch. The check runs in Python before Keras
starts training, on one batch, so the compiled step carries nothing of it: `fit` peeks at the
first batch of its data (a `tf.data.Dataset` is iterated once more for one batch, an array
sliced, a `PyDataset` indexed, a Python generator wrapped so that its first batch is checked
as it is drawn), and `train_on_batch` checks its first call's images. That is done for the first
training call of a distiller only: its later `fit` calls (a benchmark's timed rounds) pay
nothing. A distributed dataset (`strategy.experimental_distribute_dataset`) is not peeked at.
"""

from __future__ import annotations

import types
from typing import Optional

import keras
import tensorflow as tf


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


def first_batch(x, batch_size: Optional[int]):
    """(data to give Keras instead of `x`, the images of its first batch or None).

    `x` is returned unchanged except for a Python iterator, which is wrapped so that its first
    batch, drawn here, is still trained on.
    """
    if isinstance(x, tf.data.Dataset):
        for element in x.take(1):
            return x, _images(element)
        return x, None
    if isinstance(x, keras.utils.PyDataset):
        return x, _images(x[0]) if len(x) else None
    if isinstance(x, types.GeneratorType):  # what is drawn here must still be trained on
        try:
            element = next(x)
        except StopIteration:
            return x, None
        return _prepended(element, x), _images(element)
    if hasattr(x, "shape") and hasattr(x, "__getitem__"):  # an array or a tensor
        return x, x[: batch_size or 32]
    return x, None


def _prepended(first, rest):
    yield first
    yield from rest


def _images(element):
    if isinstance(element, (tuple, list)):
        element = element[0] if element else None
    return element if tf.is_tensor(element) or hasattr(element, "shape") else None


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

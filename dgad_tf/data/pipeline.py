"""tf.data pipelines: seeded, augmented training batches and plain evaluation batches.

Batches are float32 in [0, 1]; epoch e's order and augmentation depend only on `(seed, e)`.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from dgad_tf.data.arrays import Arrays, _check_arrays, _is_int

# Offset between the shuffle's seed and the augmentation stream's seed, so the two ops never share
# a seed pair.
_AUGMENT_SEED_OFFSET = 1_000_003


def make_train_dataset(
    arrays: Arrays,
    batch_size: int,
    *,
    augment: bool = True,
    crop_padding: int | None = None,
    flip: bool = True,
    seed: int = 0,
    drop_remainder: bool = True,
    first_epoch: int = 0,
    epochs: int | None = None,
) -> tf.data.Dataset:
    """Shuffled, augmented float32 training batches from a uint8 split, epoch after epoch.

    Epoch e's order and augmentation are a pure function of `(seed, e)`: a stateless
    permutation of the split, and per-batch stateless crop/flip seeds. A run resumed at epoch e
    (`first_epoch=e`) therefore sees exactly the batches the uninterrupted run saw from there on,
    and parallel mapping cannot change the result. The augmentation is the paper's: zero-pad by
    `crop_padding` on every side, crop a random H x W window, flip horizontally with
    probability 1/2.

    With `epochs` set, the dataset holds epochs `first_epoch .. first_epoch + epochs - 1` back to
    back: give Keras `steps_per_epoch` (`steps_per_epoch(len(arrays), ...)`) so that it keeps
    one iterator across epochs. With `epochs=None` it holds epoch `first_epoch` only, and every
    new iterator replays it.

    Batches are `(x, y)` with x float32 [B, H, W, C] in [0, 1] and y int64 [B]; the last partial
    batch is dropped unless `drop_remainder` is False (the reference keeps it).

    Args:
        arrays: the training split.
        batch_size: images per batch.
        augment: apply random crop (and flip). Defaults to True.
        crop_padding: zero padding before the crop, in pixels. Defaults to None
            (round(H / 8): 4 for 32x32 images, 1 for 8x8).
        flip: random horizontal flips when augmenting (turn off for digits). Defaults to True.
        seed: seed of the shuffle and the augmentation. Defaults to 0.
        drop_remainder: drop the last partial batch of each epoch. Defaults to True.
        first_epoch: the (0-based) epoch the dataset starts at. Defaults to 0.
        epochs: how many epochs the dataset holds, or None for one. Defaults to None.

    Returns:
        A `tf.data.Dataset` of `(x, y)` batches.
    """
    _check_arrays(arrays)
    if not _is_int(batch_size) or batch_size < 1:
        raise ValueError(
            f"`batch_size` must be a positive integer; received batch_size={batch_size!r}"
        )
    n = len(arrays)
    if batch_size > n and drop_remainder:
        raise ValueError(
            f"`batch_size`={batch_size} exceeds the {n} training images; with drop_remainder "
            "the dataset would yield no batch"
        )
    height = arrays.x.shape[1]
    if crop_padding is None:
        crop_padding = int(round(height / 8))
    if not _is_int(crop_padding) or crop_padding < 0:
        raise ValueError(
            "`crop_padding` must be a non-negative integer or None; "
            f"received crop_padding={crop_padding!r}"
        )
    for name, value, low in (
        ("seed", seed, None),
        ("first_epoch", first_epoch, 0),
        ("epochs", 1 if epochs is None else epochs, 1),
    ):
        if not _is_int(value) or (low is not None and value < low):
            raise ValueError(
                f"`{name}` must be an integer{'' if low is None else f' >= {low}'};"
                f" received {name}={value!r}"
            )

    images = tf.constant(arrays.x)
    labels = tf.constant(arrays.y.astype(np.int64))
    batches = steps_per_epoch(n, batch_size, drop_remainder)
    base = tf.constant([seed, 0], tf.int64)

    def epoch_batches(epoch):
        order = tf.random.experimental.stateless_shuffle(
            tf.range(n, dtype=tf.int64), seed=base + tf.stack([0, 2 * epoch])
        )
        order = order[: batches * batch_size] if drop_remainder else order
        index = tf.data.Dataset.range(batches).map(lambda b: epoch * batches + b)
        return tf.data.Dataset.zip(
            tf.data.Dataset.from_tensor_slices(order).batch(batch_size), index
        )

    def make_batch(batch_indices, global_index):
        x = tf.cast(tf.gather(images, batch_indices), tf.float32) / 255.0
        if augment:
            # Keyed by the batch's position in the whole run: epoch * batches + b.
            x = augment_batch(
                x, base + tf.stack([_AUGMENT_SEED_OFFSET, 2 * global_index + 1]), crop_padding, flip
            )
        return x, tf.gather(labels, batch_indices)

    count = 1 if epochs is None else epochs
    return (
        tf.data.Dataset.range(first_epoch, first_epoch + count)
        .flat_map(epoch_batches)
        .map(make_batch, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        .prefetch(tf.data.AUTOTUNE)
    )


def steps_per_epoch(num_images: int, batch_size: int, drop_remainder: bool = True) -> int:
    """Batches in one epoch of `make_train_dataset`."""
    full, remainder = divmod(num_images, batch_size)
    return full + int(bool(remainder) and not drop_remainder)


def augment_batch(x, seed, crop_padding: int, flip: bool = True):
    """Random crop from the zero-padded images, then random horizontal flip.

    Every image gets its own offsets (uniform in [0, 2 * crop_padding] on each axis) and flip,
    drawn with stateless ops, so the output is a pure function of `(x, seed)`.

    Args:
        x: float32 images [B, H, W, C].
        seed: int32/int64 tensor of shape [2], the stateless seed.
        crop_padding: zero padding on every side, in pixels.
        flip: whether to flip. Defaults to True.

    Returns:
        Augmented images with the shape of `x`.
    """
    batch = tf.shape(x)[0]
    height, width = tf.shape(x)[1], tf.shape(x)[2]
    crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, num=2))
    if crop_padding > 0:
        p = crop_padding
        padded = tf.pad(x, [[0, 0], [p, p], [p, p], [0, 0]])
        offsets = tf.random.stateless_uniform(
            [batch, 2], seed=crop_seed, minval=0, maxval=2 * p + 1, dtype=tf.int32
        )
        rows = offsets[:, :1] + tf.range(height)[None, :]
        cols = offsets[:, 1:] + tf.range(width)[None, :]
        # Per-image windows via batched gathers: exact integer shifts, no interpolation.
        x = tf.gather(padded, rows, axis=1, batch_dims=1)
        x = tf.gather(x, cols, axis=2, batch_dims=1)
    if flip:
        flips = tf.random.stateless_uniform([batch], seed=flip_seed) < 0.5
        x = tf.where(flips[:, None, None, None], tf.reverse(x, axis=[2]), x)
    return x


def make_eval_dataset(arrays: Arrays, batch_size: int) -> tf.data.Dataset:
    """Float32 evaluation batches in file order: no shuffle, no augmentation, last batch kept.

    Args:
        arrays: the split to evaluate.
        batch_size: images per batch.

    Returns:
        A `tf.data.Dataset` of `(x, y)` with x float32 [B, H, W, C] in [0, 1], y int64 [B].
    """
    _check_arrays(arrays)
    if not _is_int(batch_size) or batch_size < 1:
        raise ValueError(
            f"`batch_size` must be a positive integer; received batch_size={batch_size!r}"
        )
    images = tf.constant(arrays.x)
    labels = tf.constant(arrays.y.astype(np.int64))

    def make_batch(batch_indices):
        x = tf.cast(tf.gather(images, batch_indices), tf.float32) / 255.0
        return x, tf.gather(labels, batch_indices)

    return (
        tf.data.Dataset.range(len(arrays))
        .batch(batch_size, drop_remainder=False)
        .map(make_batch, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        .prefetch(tf.data.AUTOTUNE)
    )

"""In-memory splits: `Arrays`, `DatasetSplits`, `to_float`, the validation carve-out and checks.

Every source is read into `DatasetSplits`: uint8 images [N, H, W, C] and int64 labels [N] per
split. The helpers here validate raw arrays, labels and limits for the readers and pipelines.
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class Arrays:
    """One in-memory split: uint8 images and int64 labels.

    Args:
        x: uint8 images [N, H, W, C] with values 0..255.
        y: int64 labels [N].
    """

    x: np.ndarray
    y: np.ndarray

    def __post_init__(self):
        if not isinstance(self.x, np.ndarray) or self.x.dtype != np.uint8 or self.x.ndim != 4:
            raise ValueError(
                f"`Arrays.x` must be a uint8 array [N, H, W, C]; received {_describe(self.x)}"
            )
        if (
            not isinstance(self.y, np.ndarray)
            or self.y.ndim != 1
            or not np.issubdtype(self.y.dtype, np.integer)
        ):
            raise ValueError(
                f"`Arrays.y` must be an integer array [N]; received {_describe(self.y)}"
            )
        if len(self.x) != len(self.y):
            raise ValueError(
                f"`Arrays.x` and `Arrays.y` differ in length: {len(self.x)} images, "
                f"{len(self.y)} labels"
            )
        if self.y.dtype != np.int64:
            # Frozen dataclass: the one sanctioned write, so every split carries int64 labels.
            object.__setattr__(self, "y", self.y.astype(np.int64))

    def __len__(self):
        return len(self.y)


@dataclasses.dataclass(frozen=True)
class DatasetSplits:
    """Train, validation and test splits of one dataset, with its metadata.

    Args:
        train: training data minus the validation carve-out.
        val: validation data carved from the training data (may hold 0 images).
        test: the test split (for Tiny ImageNet, the official labelled validation set).
        num_classes: number of classes.
        image_shape: (H, W, C) of every image.
        class_names: one name per class; generated ("0", "1", ...) when the source has none.
    """

    train: Arrays
    val: Arrays
    test: Arrays
    num_classes: int
    image_shape: tuple
    class_names: tuple


def to_float(x_uint8) -> np.ndarray:
    """Convert uint8 images (0..255) to float32 pixels in [0, 1].

    Args:
        x_uint8: uint8 array (or tensor) of any shape.

    Returns:
        float32 array of the same shape, `x / 255`.
    """
    x = np.asarray(x_uint8)
    if x.dtype != np.uint8:
        raise ValueError(
            "`x_uint8` must have dtype uint8 (values 0..255); received dtype "
            f"{x.dtype}. Float images are presumably already scaled."
        )
    return x.astype(np.float32) / np.float32(255.0)


def to_uint8_images(x, name="x") -> np.ndarray:
    """Images as uint8 0..255; float input must be in [0, 1] and is rounded to 8 bits.

    Args:
        x: uint8 or float array [N, H, W, C].
        name: argument name for error messages. Defaults to "x".
    """
    x = np.asarray(x)
    if x.ndim != 4:
        raise ValueError(f"`{name}` must be [N, H, W, C]; received shape {x.shape}")
    if x.dtype == np.uint8:
        return x
    if not np.issubdtype(x.dtype, np.floating):
        raise ValueError(f"`{name}` must be uint8 or float in [0, 1]; received dtype {x.dtype}")
    if x.size and (np.nanmin(x) < 0 or np.nanmax(x) > 1 or np.isnan(x).any()):
        raise ValueError(f"`{name}` must be in [0, 1]; received range [{x.min()}, {x.max()}]")
    return np.round(x * 255.0).astype(np.uint8)


def to_float_images(x, name="x") -> np.ndarray:
    """Images as float32 in [0, 1]: uint8 goes through `to_float`, float is checked and kept.

    Args:
        x: uint8 or float array [N, H, W, C].
        name: argument name for error messages. Defaults to "x".
    """
    x = np.asarray(x)
    if x.dtype == np.uint8:
        return to_float(x)
    to_uint8_images(x, name)  # validates shape, dtype and range
    return x.astype(np.float32)


def split_validation(arrays: Arrays, val_fraction: float, seed: int) -> tuple[Arrays, Arrays]:
    """Carve a class-stratified validation split out of `arrays`.

    The validation size is `round(val_fraction * N)`, shared among classes in proportion to their
    counts (largest remainders break ties). Both outputs keep the input's order.

    Args:
        arrays: the training data.
        val_fraction: fraction held out, in [0, 1).
        seed: seed of the per-class random choice.

    Returns:
        (train, val) `Arrays`.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(
            f"`val_fraction` must be in [0, 1); received val_fraction={val_fraction!r}"
        )
    n = len(arrays)
    n_val = int(round(val_fraction * n))
    if n_val == 0:
        return arrays, Arrays(arrays.x[:0], arrays.y[:0])
    if n_val >= n:
        raise ValueError(f"`val_fraction`={val_fraction} leaves no training data out of {n} images")
    classes, counts = np.unique(arrays.y, return_counts=True)
    quotas = counts * (n_val / n)
    per_class = np.floor(quotas).astype(np.int64)
    shortfall = n_val - int(per_class.sum())
    # Stable sort so that equal remainders go to the lower class index, independent of the seed.
    order = np.argsort(-(quotas - per_class), kind="stable")
    per_class[order[:shortfall]] += 1

    rng = np.random.default_rng(seed)
    val_mask = np.zeros(n, dtype=bool)
    for label, k in zip(classes, per_class):
        members = np.flatnonzero(arrays.y == label)
        val_mask[rng.permutation(members)[:k]] = True
    return (
        Arrays(arrays.x[~val_mask], arrays.y[~val_mask]),
        Arrays(arrays.x[val_mask], arrays.y[val_mask]),
    )


def _as_arrays(x, y, where):
    """Validate and convert raw image/label arrays from `where` into `Arrays`."""
    x = np.asarray(x)
    y = np.asarray(y)
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4:
        raise ValueError(
            f"images in {where} must be [N, H, W, C] or [N, H, W]; received shape {x.shape}"
        )
    if len(x) == 0:
        raise ValueError(f"{where} holds no images")
    if x.dtype != np.uint8:
        # Integer images already in 0..255 (e.g. int64 from a generic writer) lose nothing.
        if np.issubdtype(x.dtype, np.integer) and x.min() >= 0 and x.max() <= 255:
            x = x.astype(np.uint8)
        else:
            value_range = (
                f" with range [{x.min()}, {x.max()}]" if np.issubdtype(x.dtype, np.number) else ""
            )
            raise ValueError(
                f"images in {where} must be uint8 (0..255); received dtype {x.dtype}{value_range}"
            )
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise ValueError(f"labels in {where} must be [N]; received shape {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"labels in {where} must be integers; received dtype {y.dtype}")
    if len(x) != len(y):
        raise ValueError(f"{where} has {len(x)} images but {len(y)} labels")
    return Arrays(np.ascontiguousarray(x), y.astype(np.int64))


def _check_labels(y, num_classes, where):
    if len(y) == 0:
        return
    low, high = int(y.min()), int(y.max())
    if low < 0 or high >= num_classes:
        bad = low if low < 0 else high
        raise ValueError(
            f"label {bad} in {where} is out of range [0, {num_classes - 1}] ({num_classes} classes)"
        )


def _take(arrays, limit):
    if limit is None or limit >= len(arrays):
        return arrays
    return Arrays(arrays.x[:limit], arrays.y[:limit])


def _is_int(value):
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _describe(value):
    if isinstance(value, np.ndarray):
        return f"dtype {value.dtype}, shape {value.shape}"
    return f"{type(value).__name__}"


def _check_arrays(arrays):
    if not isinstance(arrays, Arrays):
        raise TypeError(f"`arrays` must be a dgad_tf.data.Arrays; received {type(arrays).__name__}")

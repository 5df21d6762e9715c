"""Image-classification data: sources read into uint8 arrays, then tf.data pipelines.

Every source (TFDS, NumPy ``.npz`` files, image-folder trees, Tiny ImageNet, and the embedded
scikit-learn digits) is read into the same in-memory form, `DatasetSplits`, holding uint8 images
[N, H, W, C] and int64 labels [N] for the train, validation and test splits. The validation split
is carved from the training data with a fixed seed, stratified by class, so model selection never
looks at the test split.

`make_train_dataset` turns an `Arrays` split into float32 batches in [0, 1] with the paper's
augmentation (random crop from the zero-padded image and random horizontal flip);
`make_eval_dataset` batches without shuffling or augmentation. Pixels stay in [0, 1]: any
normalisation belongs inside the model.

Example:

    splits = load_splits("digits", val_fraction=0.1, seed=0)
    train_ds = make_train_dataset(splits.train, batch_size=64, flip=False, seed=0)
    val_ds = make_eval_dataset(splits.val, batch_size=256)

The package: `arrays` (the in-memory splits and their checks), `sources` (the table of sources,
`DATA_SOURCES`, one loader signature; a new source is one `register_data_source` call),
`images` (image files decoded and resized to uint8 arrays), `pipeline` (the tf.data pipelines,
loaded on first use); `load_splits` lives here and uses them.
"""

from __future__ import annotations

import logging
import os

from dgad_tf.data.arrays import (
    Arrays,
    DatasetSplits,
    _check_labels,
    _is_int,
    _take,
    split_validation,
    to_float,
    to_float_images,
    to_uint8_images,
)
from dgad_tf.data.images import IMAGE_EXTENSIONS, resize_uint8
from dgad_tf.data.sources import (
    DATA_SOURCES,
    DIGITS_TEST_FRACTION,
    DIGITS_TEST_SEED,
    DataSource,
    SourceRequest,
    load_npz_arrays,
    register_data_source,
)

# The tf.data pipelines load TensorFlow, so they are imported on first use: the config (which
# asks `DATA_SOURCES` for the valid names) and the commands' argument checks stay TF-free.
_PIPELINE = ("augment_batch", "make_eval_dataset", "make_train_dataset", "steps_per_epoch")


def __getattr__(name):
    if name in _PIPELINE:
        from dgad_tf.data import pipeline

        return getattr(pipeline, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


logger = logging.getLogger(__name__)

__all__ = [
    "DATA_SOURCES",
    "DIGITS_TEST_FRACTION",
    "DIGITS_TEST_SEED",
    "IMAGE_EXTENSIONS",
    "Arrays",
    "DataSource",
    "DatasetSplits",
    "SourceRequest",
    "augment_batch",
    "load_npz_arrays",
    "load_splits",
    "make_eval_dataset",
    "make_train_dataset",
    "register_data_source",
    "split_validation",
    "splits_from_config",
    "steps_per_epoch",
    "to_float",
    "to_float_images",
    "to_uint8_images",
]


def load_splits(
    source: str,
    *,
    name: str | None = None,
    path: str | None = None,
    data_dir: str | None = None,
    val_fraction: float = 0.1,
    seed: int = 0,
    train_limit: int | None = None,
    test_limit: int | None = None,
    image_size: int | None = None,
) -> DatasetSplits:
    """Read a dataset into uint8 train/validation/test arrays.

    Sources:
    * "tfds": `tfds.load(name, data_dir=data_dir)` splits "train" and "test".
    * "npz": `path` is a directory with one `train*.npz` and `test.npz` (keys `x`, `y`), or a
      single `.npz` file with keys `x_train`, `y_train`, `x_test`, `y_test` (and optionally
      `class_names`). Grayscale [N, H, W] images get a channel axis.
    * "folder": `path/train/<class>/*.png|jpg|jpeg` and `path/test/<class>/...`; classes are the
      sorted train folder names.
    * "tinyimagenet": the Tiny ImageNet layout; its labelled `val` split serves as test.
    * "digits": scikit-learn's 8x8 handwritten digits (offline), with a fixed 20% test split.

    `train_limit`/`test_limit` keep the first n images in the source's order (for the folder
    sources that is class by class, so a small limit covers few classes). The validation split
    is carved from the (limited) training data, stratified by class, with `seed`.

    Args:
        source: one of "tfds", "npz", "folder", "tinyimagenet", "digits", or a source
            registered with `register_data_source` (see `dgad_tf.data.sources`).
        name: TFDS dataset name (e.g. "cifar10"); only for source "tfds". Defaults to None.
        path: file or directory to read; for "npz", "folder", "tinyimagenet". Defaults to None.
        data_dir: TFDS data directory; only for "tfds". Defaults to None (TFDS's default).
        val_fraction: fraction of the training data held out for validation, in [0, 1).
            Defaults to 0.1.
        seed: seed of the validation carve-out. Defaults to 0.
        train_limit: keep only the first n training images. Defaults to None (all).
        test_limit: keep only the first n test images. Defaults to None (all).
        image_size: resize images to image_size x image_size (bilinear, antialiased).
            Defaults to None (keep the source's size; folder images must then share one size).

    Returns:
        A `DatasetSplits`.
    """
    if source not in DATA_SOURCES:
        raise ValueError(
            f"`source` must be one of {DATA_SOURCES.names()}; received source={source!r}"
        )
    if not isinstance(val_fraction, (int, float)) or not 0.0 <= val_fraction < 1.0:
        raise ValueError(
            f"`val_fraction` must be in [0, 1); received val_fraction={val_fraction!r}"
        )
    for arg_name, value in (("train_limit", train_limit), ("test_limit", test_limit)):
        if value is not None and (not _is_int(value) or value < 1):
            raise ValueError(
                f"`{arg_name}` must be a positive integer or None; received {arg_name}={value!r}"
            )
    if image_size is not None and (not _is_int(image_size) or image_size < 1):
        raise ValueError(
            f"`image_size` must be a positive integer or None; received image_size={image_size!r}"
        )
    if not _is_int(seed):
        raise ValueError(f"`seed` must be an integer; received seed={seed!r}")
    data_source = DATA_SOURCES.get(source)
    request = SourceRequest(
        name=name,
        path=path,
        data_dir=data_dir,
        train_limit=train_limit,
        test_limit=test_limit,
        image_size=image_size,
    )
    for field, hint in data_source.needs.items():
        value = getattr(request, field)
        if not value:
            raise ValueError(f"source {source!r} needs `{field}`{hint}; received {field}={value!r}")
    if "path" in data_source.needs and not os.path.exists(path):
        raise FileNotFoundError(f"`path` does not exist: {path!r} (source {source!r})")

    train, test, num_classes, class_names = data_source.load(request)

    train = _take(train, train_limit)
    test = _take(test, test_limit)
    if train.x.shape[1:] != test.x.shape[1:]:
        raise ValueError(
            f"train and test images differ in shape: {train.x.shape[1:]} vs {test.x.shape[1:]} "
            f"(source {source!r})"
        )
    for split_name, arrays in (("train", train), ("test", test)):
        _check_labels(arrays.y, num_classes, f"{source} {split_name}")
    if image_size is not None and train.x.shape[1:3] != (image_size, image_size):
        train = Arrays(resize_uint8(train.x, image_size), train.y)
        test = Arrays(resize_uint8(test.x, image_size), test.y)

    train, val = split_validation(train, val_fraction, seed)
    splits = DatasetSplits(
        train=train,
        val=val,
        test=test,
        num_classes=int(num_classes),
        image_shape=tuple(int(d) for d in train.x.shape[1:]),
        class_names=tuple(class_names),
    )
    logger.info(
        "Loaded %s%s: train %d, val %d, test %d images of shape %s, %d classes",
        source,
        f" {name}" if name else "",
        len(splits.train),
        len(splits.val),
        len(splits.test),
        splits.image_shape,
        splits.num_classes,
    )
    return splits


def splits_from_config(data_cfg) -> DatasetSplits:
    """`load_splits` with the fields of a config's `data` section (`dgad_tf.config.DataConfig`).

    Args:
        data_cfg: a `DataConfig`, or any object with its attributes.
    """
    d = data_cfg
    return load_splits(
        d.source,
        name=d.name,
        path=d.path,
        data_dir=d.data_dir,
        val_fraction=d.val_fraction,
        seed=d.seed,
        train_limit=d.train_limit,
        test_limit=d.test_limit,
        image_size=d.image_size,
    )

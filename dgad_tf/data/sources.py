"""Data sources by name: TFDS, NumPy `.npz`, image folders, Tiny ImageNet and scikit-learn digits.

Every source is a `DataSource` in the table `DATA_SOURCES`, with one loader signature:
`load(request) -> (train, test, num_classes, class_names)`, uint8 `Arrays` for the train and
test splits, where `request` is a `SourceRequest` (the `data` section's name, path, data_dir,
limits and image size). `dgad_tf.data.load_splits` looks the source up, checks what it `needs`,
calls it, then limits, resizes and carves validation; `dgad_tf.config` asks the table for the
valid `data.source` names. A new source is one loader and one `register_data_source` call.
The module never imports TensorFlow at import time (the readers that decode or resize load it).

Example:
    >>> from dgad_tf.data import Arrays, DataSource, load_splits, register_data_source
    >>> def stripes(request):
    ...     x = np.zeros([20, 4, 4, 1], np.uint8); y = np.arange(20) % 2
    ...     x[y == 1, ::2] = 255
    ...     return Arrays(x[:16], y[:16]), Arrays(x[16:], y[16:]), 2, ("plain", "striped")
    >>> _ = register_data_source("stripes", DataSource(stripes))
    >>> load_splits("stripes", val_fraction=0.25).num_classes
    2
"""

from __future__ import annotations

import dataclasses
import glob
import logging
import os
import zipfile
from typing import Callable, Optional

import numpy as np

from dgad_tf.data.arrays import Arrays, _as_arrays, _check_labels, split_validation
from dgad_tf.data.images import (
    IMAGE_EXTENSIONS,
    decode_files,
    image_files,
    resize_image,
    subdirectories,
)
from dgad_tf.registry import Registry

logger = logging.getLogger(__name__)

# The digits test split must not move when the user changes `seed` (that seed only picks the
# validation carve-out), so it has its own constant seed.
DIGITS_TEST_FRACTION = 0.2
DIGITS_TEST_SEED = 20240901


@dataclasses.dataclass(frozen=True)
class SourceRequest:
    """What a loader is asked for (the `data` section's fields a source may use).

    Args:
        name: a dataset name (TFDS). Defaults to None.
        path: a file or folder to read. Defaults to None.
        data_dir: a TFDS data directory. Defaults to None.
        train_limit: keep only the first n training images. Defaults to None (all).
        test_limit: keep only the first n test images. Defaults to None (all).
        image_size: resize to this square size. Defaults to None (`load_splits` resizes later
            if the loader does not).
    """

    name: Optional[str] = None
    path: Optional[str] = None
    data_dir: Optional[str] = None
    train_limit: Optional[int] = None
    test_limit: Optional[int] = None
    image_size: Optional[int] = None


@dataclasses.dataclass(frozen=True)
class DataSource:
    """One named source of images (see the module docstring).

    Args:
        load: `load(request: SourceRequest) -> (train, test, num_classes, class_names)`.
        needs: the `SourceRequest` fields that must be given, each with a hint for the error
            (e.g. `{"name": " (e.g. name='cifar10')"}`); a needed `path` must also exist.
            Defaults to {} (nothing needed).
    """

    load: Callable
    needs: dict = dataclasses.field(default_factory=dict)


DATA_SOURCES = Registry("data source", entry_type=DataSource)


def register_data_source(name: str, source: DataSource, *, replace: bool = False) -> DataSource:
    """Make `source` available as `load_splits(name, ...)` and `data.source: <name>`.

    `DATA_SOURCES.register`: see `dgad_tf.registry.Registry.register` for the arguments
    (`replace` defaults to False) and the errors.
    """
    return DATA_SOURCES.register(name, source, replace=replace)


def _load_tfds(request):
    import tensorflow as tf

    name, data_dir, image_size = request.name, request.data_dir, request.image_size
    try:
        import tensorflow_datasets as tfds
    except ImportError as err:  # pragma: no cover - tfds is a requirement
        raise ImportError(
            "source 'tfds' needs tensorflow-datasets: pip install tensorflow-datasets"
        ) from err

    builder = tfds.builder(name, data_dir=data_dir)
    info = builder.info
    if not info.supervised_keys or len(info.supervised_keys) != 2:
        raise ValueError(
            f"TFDS dataset {name!r} has no (image, label) supervised keys; "
            f"received supervised_keys={info.supervised_keys!r}"
        )
    image_key, label_key = info.supervised_keys
    label_feature = info.features[label_key]
    if not hasattr(label_feature, "num_classes"):
        raise ValueError(f"TFDS dataset {name!r}: feature {label_key!r} is not a class label")
    image_feature = info.features[image_key]
    image_shape = getattr(image_feature, "shape", None)
    if image_size is None and (not image_shape or None in image_shape[:2]):
        raise ValueError(
            f"TFDS dataset {name!r} has images of varying size {image_shape}; pass `image_size`"
        )
    splits = {}
    for split_name, limit in (("train", request.train_limit), ("test", request.test_limit)):
        # Slicing in the split string avoids decoding images that the limit would drop.
        split = f"{split_name}[:{limit}]" if limit else split_name
        try:
            dataset = tfds.load(name, split=split, data_dir=data_dir, as_supervised=True)
        except ValueError as err:
            raise ValueError(
                f"TFDS dataset {name!r} could not provide split {split!r}: {err}"
            ) from err
        if image_size is not None:
            dataset = dataset.map(
                lambda image, label: (resize_image(image, image_size), label),
                num_parallel_calls=tf.data.AUTOTUNE,
            )
        # Batches rather than `batch_size=-1`: the latter sizes its buffer from the split's
        # metadata, which mocked datasets (tfds.testing.mock_data) leave inconsistent.
        chunks = list(tfds.as_numpy(dataset.batch(1024)))
        if not chunks:
            raise ValueError(f"TFDS dataset {name!r} split {split!r} holds no examples")
        images = np.concatenate([c[0] for c in chunks])
        labels = np.concatenate([c[1] for c in chunks])
        splits[split_name] = _as_arrays(images, labels, f"tfds {name} {split_name}")
    return splits["train"], splits["test"], label_feature.num_classes, tuple(label_feature.names)


def _load_npz(request):
    path = request.path
    if os.path.isdir(path):
        train_files = sorted(glob.glob(os.path.join(path, "train*.npz")))
        if not train_files:
            raise FileNotFoundError(f"no train*.npz file in npz directory {path!r}")
        if len(train_files) > 1:
            names = ", ".join(os.path.basename(f) for f in train_files)
            raise ValueError(
                f"npz directory {path!r} holds several train*.npz files ({names}), so the "
                "training file is ambiguous; keep exactly one there"
            )
        test_file = os.path.join(path, "test.npz")
        if not os.path.exists(test_file):
            raise FileNotFoundError(f"no test.npz in npz directory {path!r}")
        with _open_npz(train_files[0]) as data:
            train = _as_arrays(*_npz_keys(data, ("x", "y"), train_files[0]), train_files[0])
            class_names = _npz_class_names(data)
        with _open_npz(test_file) as data:
            test = _as_arrays(*_npz_keys(data, ("x", "y"), test_file), test_file)
    else:
        with _open_npz(path) as data:
            if {"x", "y"} <= set(data.files) and "x_train" not in data.files:
                raise ValueError(
                    f"{path!r} holds one split (keys x, y): training needs a folder with "
                    "train*.npz and test.npz, or one file with x_train, y_train, x_test, y_test "
                    "(a file with x, y serves `evaluate --data`)"
                )
            x_train, y_train, x_test, y_test = _npz_keys(
                data, ("x_train", "y_train", "x_test", "y_test"), path
            )
            class_names = _npz_class_names(data)
        train = _as_arrays(x_train, y_train, f"{path} (x_train, y_train)")
        test = _as_arrays(x_test, y_test, f"{path} (x_test, y_test)")
    if class_names is not None:
        num_classes = len(class_names)
    else:
        num_classes = int(max(train.y.max(initial=-1), test.y.max(initial=-1))) + 1
        class_names = tuple(str(i) for i in range(num_classes))
        _log_inferred_classes(path, train.y, num_classes)
    return train, test, num_classes, class_names


def _log_inferred_classes(path, train_labels, num_classes):
    """Say how many classes labels without `class_names` imply, and warn of empty classes
    (labels 1..10 or 0..10 where 10 classes were meant train an 11-way classifier)."""
    labels = np.asarray(train_labels, np.int64)
    # A negative label is refused later, by name (`_check_labels`); count the others.
    counts = np.bincount(labels[labels >= 0], minlength=num_classes)
    empty = np.flatnonzero(counts == 0)
    logger.info(
        "%s: no `class_names` array, so %d classes from the largest label (%d)",
        path,
        num_classes,
        num_classes - 1,
    )
    if empty.size:
        shown = ", ".join(str(c) for c in empty[:10]) + (", ..." if empty.size > 10 else "")
        logger.warning(
            "%s: %d of the %d classes inferred from the labels have no training image "
            "(class %s); if the labels are not 0..%d, relabel them or add a `class_names` "
            "array",
            path,
            empty.size,
            num_classes,
            shown,
            num_classes - 1,
        )


def _npz_keys(data, keys, filename):
    missing = [k for k in keys if k not in data.files]
    if missing:
        raise ValueError(
            f"{filename!r} lacks key(s) {missing}; it holds {sorted(data.files)} "
            f"and needs {list(keys)}"
        )
    return tuple(data[k] for k in keys)


def _open_npz(path):
    """`np.load(path)`, with any unreadable file reported as a ValueError naming it."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"no file at {path!r}")
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as err:
        raise ValueError(f"{path!r} is not a readable .npz file: {err}") from None


def load_npz_arrays(path, keys=("x", "y")) -> tuple:
    """The arrays `keys` of one `.npz` file, checked: images uint8 [N, H, W, C], labels [N].

    Args:
        path: the `.npz` file.
        keys: ("x",) for images only, or ("x", "y"). Defaults to ("x", "y").

    Raises:
        ValueError: the file is unreadable, lacks a key, or holds arrays of the wrong kind.
    """
    with _open_npz(path) as data:
        values = _npz_keys(data, keys, path)
    if len(keys) == 1:
        return (_as_arrays(values[0], np.zeros(len(values[0]), np.int64), path).x,)
    arrays = _as_arrays(values[0], values[1], path)
    _check_labels(arrays.y, int(arrays.y.max(initial=0)) + 1, path)
    return arrays.x, arrays.y


def _npz_class_names(data):
    if "class_names" not in data.files:
        return None
    return tuple(str(n) for n in data["class_names"].tolist())


def _load_folder(request):
    path, image_size = request.path, request.image_size
    split_dirs = {s: os.path.join(path, s) for s in ("train", "test")}
    missing = [d for d in split_dirs.values() if not os.path.isdir(d)]
    if missing:
        raise FileNotFoundError(
            f"image-folder source needs {path!r}/train/<class>/ and {path!r}/test/<class>/; "
            f"missing {missing}"
        )
    class_names = tuple(subdirectories(split_dirs["train"]))
    if not class_names:
        raise ValueError(f"no class folders in {split_dirs['train']!r}")
    index = {c: i for i, c in enumerate(class_names)}
    unknown = [c for c in subdirectories(split_dirs["test"]) if c not in index]
    if unknown:
        raise ValueError(
            f"test class folder(s) {unknown} in {split_dirs['test']!r} have no train folder; "
            f"train classes are {list(class_names)}"
        )
    arrays = {}
    for split_name, limit in (("train", request.train_limit), ("test", request.test_limit)):
        files, labels = [], []
        for class_name in class_names:
            class_dir = os.path.join(split_dirs[split_name], class_name)
            if split_name == "test" and not os.path.isdir(class_dir):
                continue
            class_files = image_files(class_dir)
            if not class_files:
                raise ValueError(
                    f"class folder {class_dir!r} holds no {'/'.join(IMAGE_EXTENSIONS)} images"
                )
            files += class_files
            labels += [index[class_name]] * len(class_files)
        files, labels = files[:limit], labels[:limit]
        arrays[split_name] = Arrays(decode_files(files, image_size), np.asarray(labels, np.int64))
    return arrays["train"], arrays["test"], len(class_names), class_names


def _load_tinyimagenet(request):
    path, image_size = request.path, request.image_size
    train_limit, test_limit = request.train_limit, request.test_limit
    train_dir = os.path.join(path, "train")
    val_dir = os.path.join(path, "val")
    annotations = os.path.join(val_dir, "val_annotations.txt")
    for needed in (train_dir, os.path.join(val_dir, "images"), annotations):
        if not os.path.exists(needed):
            raise FileNotFoundError(f"Tiny ImageNet layout incomplete: {needed!r} is missing")
    wnids_file = os.path.join(path, "wnids.txt")
    # Class index = position in the *sorted* wnids, as torchvision's ImageFolder numbers them and
    # so as PyTorch Tiny ImageNet checkpoints expect; wnids.txt is not sorted.
    if os.path.exists(wnids_file):
        with open(wnids_file) as f:
            wnids = tuple(sorted({line.strip() for line in f if line.strip()}))
    else:
        wnids = tuple(subdirectories(train_dir))
    if not wnids:
        raise ValueError(f"no classes found in {wnids_file!r} or {train_dir!r}")
    index = {w: i for i, w in enumerate(wnids)}

    train_files, train_labels = [], []
    for wnid in wnids:
        class_dir = os.path.join(train_dir, wnid, "images")
        class_files = image_files(class_dir) if os.path.isdir(class_dir) else []
        if not class_files:
            raise ValueError(
                f"Tiny ImageNet class folder {class_dir!r} is missing or holds no images"
            )
        train_files += class_files
        train_labels += [index[wnid]] * len(class_files)

    test_files, test_labels = [], []
    with open(annotations) as f:
        for line_number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            fields = line.rstrip("\n").split("\t")
            if len(fields) < 2:
                raise ValueError(
                    f"{annotations!r} line {line_number} is not 'file<TAB>wnid...': "
                    f"{line.strip()!r}"
                )
            filename, wnid = fields[0], fields[1]
            if wnid not in index:
                raise ValueError(
                    f"{annotations!r} line {line_number}: label {wnid!r} is out of range "
                    f"(not one of the {len(wnids)} training classes)"
                )
            image_path = os.path.join(val_dir, "images", filename)
            if not os.path.exists(image_path):
                raise FileNotFoundError(
                    f"{annotations!r} line {line_number} names a missing image {image_path!r}"
                )
            test_files.append(image_path)
            test_labels.append(index[wnid])
    if not test_files:
        raise ValueError(f"{annotations!r} lists no images")

    train_files, train_labels = train_files[:train_limit], train_labels[:train_limit]
    test_files, test_labels = test_files[:test_limit], test_labels[:test_limit]
    # Some Tiny ImageNet JPEGs are grayscale; decoding to three channels keeps one image shape.
    train = Arrays(
        decode_files(train_files, image_size, channels=3), np.asarray(train_labels, np.int64)
    )
    test = Arrays(
        decode_files(test_files, image_size, channels=3), np.asarray(test_labels, np.int64)
    )
    return train, test, len(wnids), wnids


def _load_digits(request):
    from sklearn.datasets import load_digits

    digits = load_digits()
    # Pixel values are counts 0..16 (of a 4x4 block of a 32x32 bitmap); stretch them to 0..255.
    x = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    everything = Arrays(x, digits.target.astype(np.int64))
    train, test = split_validation(everything, DIGITS_TEST_FRACTION, DIGITS_TEST_SEED)
    return train, test, 10, tuple(str(i) for i in range(10))


_PATH = {"path": ""}
register_data_source("digits", DataSource(_load_digits))
register_data_source("tfds", DataSource(_load_tfds, needs={"name": " (e.g. name='cifar10')"}))
register_data_source("npz", DataSource(_load_npz, needs=_PATH))
register_data_source("folder", DataSource(_load_folder, needs=_PATH))
register_data_source("tinyimagenet", DataSource(_load_tinyimagenet, needs=_PATH))

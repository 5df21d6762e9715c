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
"""

from __future__ import annotations

import dataclasses
import glob
import logging
import os
import zipfile

import numpy as np
import tensorflow as tf

logger = logging.getLogger(__name__)

SOURCES = ("tfds", "npz", "folder", "tinyimagenet", "digits")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
# The digits test split must not move when the user changes `seed` (that seed only picks the
# validation carve-out), so it has its own constant seed.
DIGITS_TEST_FRACTION = 0.2
DIGITS_TEST_SEED = 20240901
# Offset between the shuffle's seed and the augmentation stream's seed, so the two ops never share
# a seed pair.
_AUGMENT_SEED_OFFSET = 1_000_003


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
                "`Arrays.x` must be a uint8 array [N, H, W, C]; received "
                f"{_describe(self.x)}"
            )
        if not isinstance(self.y, np.ndarray) or self.y.ndim != 1 or not np.issubdtype(
            self.y.dtype, np.integer
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


# ----------------------------------------------------------------------------------------------
# Loading


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
        source: one of "tfds", "npz", "folder", "tinyimagenet", "digits".
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
    if source not in SOURCES:
        raise ValueError(f"`source` must be one of {SOURCES}; received source={source!r}")
    if not isinstance(val_fraction, (int, float)) or not 0.0 <= val_fraction < 1.0:
        raise ValueError(
            f"`val_fraction` must be in [0, 1); received val_fraction={val_fraction!r}"
        )
    for arg_name, value in (("train_limit", train_limit), ("test_limit", test_limit)):
        if value is not None and (not _is_int(value) or value < 1):
            raise ValueError(
                f"`{arg_name}` must be a positive integer or None; "
                f"received {arg_name}={value!r}"
            )
    if image_size is not None and (not _is_int(image_size) or image_size < 1):
        raise ValueError(
            "`image_size` must be a positive integer or None; "
            f"received image_size={image_size!r}"
        )
    if not _is_int(seed):
        raise ValueError(f"`seed` must be an integer; received seed={seed!r}")
    if source == "tfds":
        if not name:
            raise ValueError(
                f"source 'tfds' needs `name` (e.g. name='cifar10'); received name={name!r}"
            )
    elif source in ("npz", "folder", "tinyimagenet"):
        if not path:
            raise ValueError(f"source {source!r} needs `path`; received path={path!r}")
        if not os.path.exists(path):
            raise FileNotFoundError(f"`path` does not exist: {path!r} (source {source!r})")

    if source == "tfds":
        train, test, num_classes, class_names = _load_tfds(
            name, data_dir, train_limit, test_limit, image_size
        )
    elif source == "npz":
        train, test, num_classes, class_names = _load_npz(path)
    elif source == "folder":
        train, test, num_classes, class_names = _load_folder(
            path, image_size, train_limit, test_limit
        )
    elif source == "tinyimagenet":
        train, test, num_classes, class_names = _load_tinyimagenet(
            path, image_size, train_limit, test_limit
        )
    else:
        train, test, num_classes, class_names = _load_digits()

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
        train = Arrays(_resize_uint8(train.x, image_size), train.y)
        test = Arrays(_resize_uint8(test.x, image_size), test.y)

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
    return load_splits(d.source, name=d.name, path=d.path, data_dir=d.data_dir,
                       val_fraction=d.val_fraction, seed=d.seed, train_limit=d.train_limit,
                       test_limit=d.test_limit, image_size=d.image_size)


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
        raise ValueError(
            f"`val_fraction`={val_fraction} leaves no training data out of {n} images"
        )
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


def _load_tfds(name, data_dir, train_limit, test_limit, image_size):
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
    for split_name, limit in (("train", train_limit), ("test", test_limit)):
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
                lambda image, label: (_resize_image(image, image_size), label),
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


def _load_npz(path):
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
                    "(a file with x, y serves `evaluate --data`)")
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
    return train, test, num_classes, class_names


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
        keys: ("x",) for images only, or ("x", "y"). Default ("x", "y").

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


def _load_folder(path, image_size, train_limit, test_limit):
    split_dirs = {s: os.path.join(path, s) for s in ("train", "test")}
    missing = [d for d in split_dirs.values() if not os.path.isdir(d)]
    if missing:
        raise FileNotFoundError(
            f"image-folder source needs {path!r}/train/<class>/ and {path!r}/test/<class>/; "
            f"missing {missing}"
        )
    class_names = tuple(_subdirectories(split_dirs["train"]))
    if not class_names:
        raise ValueError(f"no class folders in {split_dirs['train']!r}")
    index = {c: i for i, c in enumerate(class_names)}
    unknown = [c for c in _subdirectories(split_dirs["test"]) if c not in index]
    if unknown:
        raise ValueError(
            f"test class folder(s) {unknown} in {split_dirs['test']!r} have no train folder; "
            f"train classes are {list(class_names)}"
        )
    arrays = {}
    for split_name, limit in (("train", train_limit), ("test", test_limit)):
        files, labels = [], []
        for class_name in class_names:
            class_dir = os.path.join(split_dirs[split_name], class_name)
            if split_name == "test" and not os.path.isdir(class_dir):
                continue
            class_files = _image_files(class_dir)
            if not class_files:
                raise ValueError(
                    f"class folder {class_dir!r} holds no {'/'.join(IMAGE_EXTENSIONS)} images"
                )
            files += class_files
            labels += [index[class_name]] * len(class_files)
        files, labels = files[:limit], labels[:limit]
        arrays[split_name] = Arrays(
            _decode_files(files, image_size), np.asarray(labels, np.int64)
        )
    return arrays["train"], arrays["test"], len(class_names), class_names


def _load_tinyimagenet(path, image_size, train_limit, test_limit):
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
        wnids = tuple(_subdirectories(train_dir))
    if not wnids:
        raise ValueError(f"no classes found in {wnids_file!r} or {train_dir!r}")
    index = {w: i for i, w in enumerate(wnids)}

    train_files, train_labels = [], []
    for wnid in wnids:
        class_dir = os.path.join(train_dir, wnid, "images")
        class_files = _image_files(class_dir) if os.path.isdir(class_dir) else []
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
        _decode_files(train_files, image_size, channels=3), np.asarray(train_labels, np.int64)
    )
    test = Arrays(
        _decode_files(test_files, image_size, channels=3), np.asarray(test_labels, np.int64)
    )
    return train, test, len(wnids), wnids


def _load_digits():
    from sklearn.datasets import load_digits

    digits = load_digits()
    # Pixel values are counts 0..16 (of a 4x4 block of a 32x32 bitmap); stretch them to 0..255.
    x = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    everything = Arrays(x, digits.target.astype(np.int64))
    train, test = split_validation(everything, DIGITS_TEST_FRACTION, DIGITS_TEST_SEED)
    return train, test, 10, tuple(str(i) for i in range(10))


def _subdirectories(directory):
    return sorted(e for e in os.listdir(directory) if os.path.isdir(os.path.join(directory, e)))


def _image_files(directory):
    return sorted(
        os.path.join(directory, f)
        for f in os.listdir(directory)
        if f.lower().endswith(IMAGE_EXTENSIONS) and os.path.isfile(os.path.join(directory, f))
    )


def _decode_files(files, image_size, channels=None):
    """Decode image files to one uint8 array [N, H, W, C] in the order given.

    Without `channels`, a mix of grayscale and colour files becomes colour (alpha is dropped).
    Without `image_size`, all files must share one height and width.
    """
    if not files:
        raise ValueError("no image files to decode")

    def decode(file_path):
        image = tf.io.decode_image(
            tf.io.read_file(file_path), channels=channels or 0, expand_animations=False
        )
        return image if image_size is None else _resize_image(image, image_size)

    dataset = tf.data.Dataset.from_tensor_slices(files).map(
        decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True
    )
    images = []
    try:
        for image in dataset.as_numpy_iterator():
            images.append(image)
    except tf.errors.InvalidArgumentError as err:
        raise ValueError(
            f"could not decode image {files[len(images)]!r}: {err.message}"
        ) from err
    if channels is None:
        # Gray+alpha (2) counts as gray, RGBA (4) as colour.
        target = 3 if any(im.shape[-1] >= 3 for im in images) else 1
        images = [_to_channels(im, target) for im in images]
    reference = images[0].shape
    for file_path, image in zip(files, images):
        if image.shape != reference:
            raise ValueError(
                f"image {file_path!r} has shape {image.shape}, but {files[0]!r} has {reference}; "
                "pass `image_size` to resize all images to one size"
            )
    return np.stack(images)


def _to_channels(image, target):
    if image.shape[-1] in (2, 4):
        image = image[..., :-1]
    if image.shape[-1] == 1 and target == 3:
        image = np.repeat(image, 3, axis=-1)
    return image


def _resize_image(image, size):
    """Bilinear, antialiased resize of uint8 image(s) to size x size, rounded back to uint8."""
    resized = tf.image.resize(image, (size, size), antialias=True)
    return tf.cast(tf.clip_by_value(tf.round(resized), 0.0, 255.0), tf.uint8)


def _resize_uint8(x, size, chunk=4096):
    out = np.empty((len(x), size, size, x.shape[-1]), np.uint8)
    for start in range(0, len(x), chunk):
        out[start : start + chunk] = _resize_image(x[start : start + chunk], size).numpy()
    return out


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
            f"label {bad} in {where} is out of range [0, {num_classes - 1}] "
            f"({num_classes} classes)"
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


# ----------------------------------------------------------------------------------------------
# Pipelines


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
    for name, value, low in (("seed", seed, None), ("first_epoch", first_epoch, 0),
                             ("epochs", 1 if epochs is None else epochs, 1)):
        if not _is_int(value) or (low is not None and value < low):
            raise ValueError(f"`{name}` must be an integer{'' if low is None else f' >= {low}'};"
                             f" received {name}={value!r}")

    images = tf.constant(arrays.x)
    labels = tf.constant(arrays.y.astype(np.int64))
    batches = steps_per_epoch(n, batch_size, drop_remainder)
    base = tf.constant([seed, 0], tf.int64)

    def epoch_batches(epoch):
        order = tf.random.experimental.stateless_shuffle(
            tf.range(n, dtype=tf.int64), seed=base + tf.stack([0, 2 * epoch]))
        order = order[: batches * batch_size] if drop_remainder else order
        index = tf.data.Dataset.range(batches).map(lambda b: epoch * batches + b)
        return tf.data.Dataset.zip(
            tf.data.Dataset.from_tensor_slices(order).batch(batch_size), index)

    def make_batch(batch_indices, global_index):
        x = tf.cast(tf.gather(images, batch_indices), tf.float32) / 255.0
        if augment:
            # Keyed by the batch's position in the whole run: epoch * batches + b.
            x = augment_batch(x, base + tf.stack([_AUGMENT_SEED_OFFSET, 2 * global_index + 1]),
                              crop_padding, flip)
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


def _check_arrays(arrays):
    if not isinstance(arrays, Arrays):
        raise TypeError(
            f"`arrays` must be a dgad_tf.data.Arrays; received {type(arrays).__name__}"
        )

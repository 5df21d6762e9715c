"""Tests for dgad_tf.data: every source on tiny files written here, the split, the pipelines."""

import os

import numpy as np
import pytest
import tensorflow as tf

from dgad_tf import data


def _tagged_images(n, size=4, channels=3):
    """Images whose first pixel encodes their index, so any output can be traced back."""
    rng = np.random.default_rng(123)
    x = rng.integers(0, 256, size=(n, size, size, channels), dtype=np.uint8)
    x[:, 0, 0, 0] = np.arange(n, dtype=np.uint8)
    return x


def _write_png(path, image):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tf.io.write_file(path, tf.io.encode_png(image))


def _write_jpeg(path, image):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tf.io.write_file(path, tf.io.encode_jpeg(image, quality=100))


def _rows(x):
    return {row.tobytes() for row in x.reshape(len(x), -1)}


# ---------------------------------------------------------------------------------------------
# npz


def test_npz_directory_form_reads_train_and_test(tmp_path):
    x_train, y_train = _tagged_images(20), np.arange(20) % 4
    x_test, y_test = _tagged_images(6, channels=3)[::-1], np.array([0, 1, 2, 3, 0, 1])
    np.savez(tmp_path / "train_small.npz", x=x_train, y=y_train.astype(np.uint8))
    np.savez(tmp_path / "test.npz", x=x_test, y=y_test.astype(np.uint8))

    splits = data.load_splits("npz", path=str(tmp_path), val_fraction=0.2, seed=0)

    np.testing.assert_array_equal(splits.test.x, x_test)
    np.testing.assert_array_equal(splits.test.y, y_test)
    assert splits.test.y.dtype == np.int64
    assert _rows(splits.train.x) | _rows(splits.val.x) == _rows(x_train)
    assert (len(splits.train), len(splits.val)) == (16, 4)
    assert splits.num_classes == 4
    assert splits.image_shape == (4, 4, 3)
    assert splits.class_names == ("0", "1", "2", "3")


def test_npz_single_file_adds_channel_to_grayscale(tmp_path):
    x_train = _tagged_images(10, channels=1)[..., 0]
    x_test = _tagged_images(3, channels=1)[..., 0]
    file = tmp_path / "mnist_like.npz"
    np.savez(file, x_train=x_train, y_train=np.arange(10) % 5, x_test=x_test, y_test=[0, 1, 2])

    splits = data.load_splits("npz", path=str(file), val_fraction=0.0)

    assert splits.image_shape == (4, 4, 1)
    np.testing.assert_array_equal(splits.train.x[..., 0], x_train)
    np.testing.assert_array_equal(splits.test.x[..., 0], x_test)
    assert len(splits.val) == 0 and splits.val.x.shape[1:] == (4, 4, 1)
    assert splits.num_classes == 5


def test_npz_limits_take_the_first_images(tmp_path):
    file = tmp_path / "d.npz"
    np.savez(
        file,
        x_train=_tagged_images(30),
        y_train=np.arange(30) % 3,
        x_test=_tagged_images(10),
        y_test=np.arange(10) % 3,
    )

    splits = data.load_splits("npz", path=str(file), val_fraction=0.0, train_limit=7, test_limit=4)

    np.testing.assert_array_equal(splits.train.x[:, 0, 0, 0], np.arange(7))
    np.testing.assert_array_equal(splits.test.x[:, 0, 0, 0], np.arange(4))


def test_npz_missing_key_is_named(tmp_path):
    file = tmp_path / "d.npz"
    np.savez(file, x_train=_tagged_images(4), y_train=[0, 1, 0, 1], x_test=_tagged_images(2))
    with pytest.raises(ValueError, match="y_test"):
        data.load_splits("npz", path=str(file))


def test_npz_ambiguous_train_files_are_an_error(tmp_path):
    for name in ("train_a.npz", "train_b.npz", "test.npz"):
        np.savez(tmp_path / name, x=_tagged_images(4), y=[0, 1, 0, 1])
    with pytest.raises(ValueError, match="train_a.npz, train_b.npz"):
        data.load_splits("npz", path=str(tmp_path))


def test_npz_label_out_of_range_is_named(tmp_path):
    file = tmp_path / "d.npz"
    np.savez(
        file,
        x_train=_tagged_images(4),
        y_train=[0, 1, 2, 1],
        x_test=_tagged_images(2),
        y_test=[0, 1],
        class_names=np.array(["cat", "dog"]),
    )
    with pytest.raises(ValueError, match=r"label 2 in npz train is out of range \[0, 1\]"):
        data.load_splits("npz", path=str(file))


def test_npz_labels_from_1_without_class_names_warn_of_the_empty_class(tmp_path, caplog):
    # Labels 1..10 meant as 10 classes: without class_names they imply 11, class 0 empty.
    file = tmp_path / "d.npz"
    labels = np.arange(1, 11)
    np.savez(
        file, x_train=_tagged_images(10), y_train=labels, x_test=_tagged_images(2), y_test=[1, 2]
    )
    with caplog.at_level("INFO", logger="dgad_tf.data.sources"):
        splits = data.load_splits("npz", path=str(file), val_fraction=0.0)
    assert splits.num_classes == 11
    assert "11 classes from the largest label (10)" in caplog.text
    warnings = [r for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "have no training image (class 0)" in warnings[0].getMessage()


def test_npz_labels_covering_every_class_do_not_warn(tmp_path, caplog):
    file = tmp_path / "d.npz"
    np.savez(
        file,
        x_train=_tagged_images(4),
        y_train=[0, 1, 2, 0],
        x_test=_tagged_images(2),
        y_test=[0, 1],
    )
    with caplog.at_level("INFO", logger="dgad_tf.data.sources"):
        data.load_splits("npz", path=str(file), val_fraction=0.0)
    assert "3 classes from the largest label (2)" in caplog.text
    assert not [r for r in caplog.records if r.levelname == "WARNING"]


def test_npz_negative_label_is_out_of_range(tmp_path):
    file = tmp_path / "d.npz"
    np.savez(
        file,
        x_train=_tagged_images(4),
        y_train=[0, -1, 1, 1],
        x_test=_tagged_images(2),
        y_test=[0, 1],
    )
    with pytest.raises(ValueError, match="label -1 .* out of range"):
        data.load_splits("npz", path=str(file))


def test_npz_float_images_are_rejected(tmp_path):
    file = tmp_path / "d.npz"
    np.savez(
        file,
        x_train=np.zeros((4, 4, 4, 3), np.float32),
        y_train=[0, 1, 0, 1],
        x_test=np.zeros((2, 4, 4, 3), np.float32),
        y_test=[0, 1],
    )
    with pytest.raises(ValueError, match="must be uint8.*float32"):
        data.load_splits("npz", path=str(file))


def test_missing_path_is_named(tmp_path):
    missing = str(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="nowhere"):
        data.load_splits("npz", path=missing)


def test_unknown_source_and_bad_fraction_are_named():
    with pytest.raises(ValueError, match="source='csv'"):
        data.load_splits("csv")
    with pytest.raises(ValueError, match="val_fraction=1.5"):
        data.load_splits("digits", val_fraction=1.5)


def test_the_config_takes_the_sources_the_data_package_registers():
    from dgad_tf import config

    assert data.DATA_SOURCES.names() == ("digits", "tfds", "npz", "folder", "tinyimagenet")
    with pytest.raises(config.ConfigError, match="one of digits, tfds, npz, folder, tinyimagenet"):
        config.load_config(overrides=["data.source=csv"])


def test_shared_cifar10_directory_loads(shared_cifar10):
    splits = data.load_splits("npz", path=str(shared_cifar10), train_limit=200, test_limit=50)
    assert splits.image_shape == (32, 32, 3)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (180, 20, 50)
    assert splits.num_classes == 10


# ---------------------------------------------------------------------------------------------
# Image folders and Tiny ImageNet


def test_folder_reads_png_tree_exactly(tmp_path):
    images = _tagged_images(6, size=5)
    layout = {"train/zebra": [0, 1], "train/ant": [2, 3], "test/ant": [4], "test/zebra": [5]}
    for folder, ids in layout.items():
        for i in ids:
            _write_png(str(tmp_path / folder / f"img{i}.png"), images[i])

    splits = data.load_splits("folder", path=str(tmp_path), val_fraction=0.0)

    assert splits.class_names == ("ant", "zebra")
    # File order is class by class (sorted), then file name.
    np.testing.assert_array_equal(splits.train.x, images[[2, 3, 0, 1]])
    np.testing.assert_array_equal(splits.train.y, [0, 0, 1, 1])
    np.testing.assert_array_equal(splits.test.x, images[[4, 5]])
    np.testing.assert_array_equal(splits.test.y, [0, 1])
    assert splits.image_shape == (5, 5, 3)


def test_folder_size_mismatch_names_the_file(tmp_path):
    _write_png(str(tmp_path / "train/a/first.png"), _tagged_images(1, size=4)[0])
    _write_png(str(tmp_path / "train/a/odd.png"), _tagged_images(1, size=6)[0])
    _write_png(str(tmp_path / "test/a/t.png"), _tagged_images(1, size=4)[0])
    with pytest.raises(ValueError, match="odd.png"):
        data.load_splits("folder", path=str(tmp_path))


def test_folder_image_size_resizes_every_image(tmp_path):
    _write_png(str(tmp_path / "train/a/x.png"), np.full((4, 4, 3), 200, np.uint8))
    _write_png(str(tmp_path / "train/b/y.png"), np.full((6, 6, 3), 10, np.uint8))
    _write_png(str(tmp_path / "test/a/t.png"), np.full((3, 3, 3), 99, np.uint8))

    splits = data.load_splits("folder", path=str(tmp_path), val_fraction=0.0, image_size=8)

    assert splits.train.x.shape == (2, 8, 8, 3)
    # Resizing a constant image keeps its value.
    np.testing.assert_array_equal(splits.train.x[0], 200)
    np.testing.assert_array_equal(splits.test.x[0], 99)


def test_folder_empty_class_is_named(tmp_path):
    _write_png(str(tmp_path / "train/a/x.png"), _tagged_images(1)[0])
    os.makedirs(tmp_path / "train/empty_one")
    _write_png(str(tmp_path / "test/a/t.png"), _tagged_images(1)[0])
    with pytest.raises(ValueError, match="empty_one"):
        data.load_splits("folder", path=str(tmp_path))


def test_folder_without_train_test_subfolders_is_an_error(tmp_path):
    _write_png(str(tmp_path / "cats/x.png"), _tagged_images(1)[0])
    with pytest.raises(FileNotFoundError, match="train/<class>"):
        data.load_splits("folder", path=str(tmp_path))


TINY_COLOURS = (40, 130, 220)


def _write_tiny_imagenet(root, wnids=("n02", "n01"), with_wnids_file=True):
    """Constant-colour JPEGs (lossless enough to compare), class k in TINY_COLOURS[k] of `wnids`.

    Validation image i shows class wnids[-1 - i]; the first one is grayscale, as Tiny ImageNet
    has a few.
    """
    colours = dict(zip(wnids, TINY_COLOURS))
    if with_wnids_file:
        (root / "wnids.txt").write_text("\n".join(wnids) + "\n")
    for wnid, value in colours.items():
        for k in range(3):
            _write_jpeg(
                str(root / "train" / wnid / "images" / f"{wnid}_{k}.JPEG"),
                np.full((8, 8, 3), value, np.uint8),
            )
    lines = []
    for i, wnid in enumerate(reversed(wnids)):
        _write_jpeg(
            str(root / f"val/images/val_{i}.JPEG"),
            np.full((8, 8, 1 if i == 0 else 3), colours[wnid], np.uint8),
        )
        lines.append(f"val_{i}.JPEG\t{wnid}\t0\t0\t7\t7\n")
    (root / "val/val_annotations.txt").write_text("".join(lines))


def test_tinyimagenet_layout_uses_val_as_test(tmp_path):
    _write_tiny_imagenet(tmp_path)

    splits = data.load_splits("tinyimagenet", path=str(tmp_path), val_fraction=0.0)

    assert splits.class_names == ("n01", "n02")
    assert len(splits.train.y) == 6
    np.testing.assert_array_equal(splits.test.y, [0, 1])  # val_0 is n01, val_1 is n02
    assert splits.image_shape == (8, 8, 3)
    # val_0 is grayscale, decoded to three channels; n01 is the second class of the fixture.
    np.testing.assert_allclose(splits.test.x[0], TINY_COLOURS[1], atol=2)


def test_tinyimagenet_labels_follow_sorted_wnids_not_the_file_order(tmp_path):
    # wnids.txt lists the classes unsorted, and not merely reversed; torchvision's ImageFolder
    # (and so every PyTorch Tiny ImageNet checkpoint) numbers them in sorted order.
    listed = ("n03", "n01", "n02")
    _write_tiny_imagenet(tmp_path, wnids=listed)
    colour_of = dict(zip(listed, TINY_COLOURS))

    splits = data.load_splits("tinyimagenet", path=str(tmp_path), val_fraction=0.0)

    assert splits.class_names == ("n01", "n02", "n03")
    for arrays in (splits.train, splits.test):
        assert set(arrays.y.tolist()) == {0, 1, 2}
        for image, label in zip(arrays.x, arrays.y):
            expected_colour = colour_of[sorted(listed)[label]]
            np.testing.assert_allclose(image, expected_colour, atol=2)
    np.testing.assert_array_equal(splits.train.y, [0, 0, 0, 1, 1, 1, 2, 2, 2])
    # val_0 is n02, val_1 is n01, val_2 is n03.
    np.testing.assert_array_equal(splits.test.y, [1, 0, 2])


def test_tinyimagenet_without_wnids_sorts_train_folders(tmp_path):
    _write_tiny_imagenet(tmp_path, with_wnids_file=False)
    splits = data.load_splits("tinyimagenet", path=str(tmp_path), val_fraction=0.0)
    assert splits.class_names == ("n01", "n02")
    np.testing.assert_array_equal(splits.test.y, [0, 1])


def test_tinyimagenet_unknown_val_label_is_named(tmp_path):
    _write_tiny_imagenet(tmp_path)
    with open(tmp_path / "val/val_annotations.txt", "a") as f:
        f.write("val_1.JPEG\tn99\t0\t0\t1\t1\n")
    with pytest.raises(ValueError, match="'n99' is out of range"):
        data.load_splits("tinyimagenet", path=str(tmp_path))


# ---------------------------------------------------------------------------------------------
# TFDS and the embedded digits


def test_tfds_via_mock_data(tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")
    # Offline there are no metadata files, so build the info from the dataset's code.
    with tfds.testing.mock_data(num_examples=12, policy=tfds.testing.MockPolicy.USE_CODE):
        splits = data.load_splits(
            "tfds", name="cifar10", data_dir=str(tmp_path), val_fraction=0.25, test_limit=5
        )
    assert splits.image_shape == (32, 32, 3)
    assert splits.train.x.dtype == np.uint8 and splits.train.y.dtype == np.int64
    assert (len(splits.train), len(splits.val), len(splits.test)) == (9, 3, 5)
    assert splits.num_classes == 10 and len(splits.class_names) == 10


def test_tfds_image_size_resizes(tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=4, policy=tfds.testing.MockPolicy.USE_CODE):
        splits = data.load_splits(
            "tfds", name="cifar10", data_dir=str(tmp_path), val_fraction=0.0, image_size=16
        )
    assert splits.image_shape == (16, 16, 3) and splits.test.x.shape == (4, 16, 16, 3)


def test_tfds_needs_a_name():
    with pytest.raises(ValueError, match="name"):
        data.load_splits("tfds")


def test_digits_shapes_ranges_and_fixed_test_split():
    from sklearn.datasets import load_digits

    a = data.load_splits("digits", val_fraction=0.1, seed=0)
    b = data.load_splits("digits", val_fraction=0.1, seed=1)

    assert a.image_shape == (8, 8, 1) and a.num_classes == 10
    assert len(a.train) + len(a.val) + len(a.test) == 1797
    assert len(a.test) == round(0.2 * 1797)
    assert a.train.x.dtype == np.uint8
    allowed = {round(v * 255 / 16) for v in range(17)}
    assert set(np.unique(a.train.x)) <= allowed and a.train.x.max() == 255
    assert set(np.unique(a.test.y)) == set(range(10))
    # The test split does not depend on the validation seed; the carve-out does.
    np.testing.assert_array_equal(a.test.x, b.test.x)
    assert _rows(a.val.x) != _rows(b.val.x)
    # Pixels are sklearn's 0..16 values scaled, image for image.
    raw = load_digits().images
    first_test = a.test.x[0, ..., 0]
    matches = np.all(np.round(raw * 255 / 16) == first_test, axis=(1, 2))
    assert matches.any()


# ---------------------------------------------------------------------------------------------
# Validation carve-out


def test_validation_split_disjoint_sized_and_stratified():
    y = np.repeat(np.arange(4), [40, 20, 20, 20])
    arrays = data.Arrays(_tagged_images(100, size=2), y)

    train, val = data.split_validation(arrays, 0.1, seed=0)

    assert (len(train), len(val)) == (90, 10)
    ids_train, ids_val = set(train.x[:, 0, 0, 0]), set(val.x[:, 0, 0, 0])
    assert not ids_train & ids_val and len(ids_train | ids_val) == 100
    np.testing.assert_array_equal(np.bincount(val.y), [4, 2, 2, 2])
    # Labels travel with their images.
    np.testing.assert_array_equal(val.y, y[val.x[:, 0, 0, 0]])


def test_validation_split_depends_only_on_seed():
    arrays = data.Arrays(_tagged_images(60, size=2), np.arange(60) % 3)
    same_a = data.split_validation(arrays, 0.2, seed=7)[1]
    same_b = data.split_validation(arrays, 0.2, seed=7)[1]
    other = data.split_validation(arrays, 0.2, seed=8)[1]
    np.testing.assert_array_equal(same_a.x, same_b.x)
    assert _rows(same_a.x) != _rows(other.x)


# ---------------------------------------------------------------------------------------------
# Pipelines


def _index_arrays(n, size=6, channels=3):
    """Random images whose label is their index, to find each output's source."""
    return data.Arrays(_tagged_images(n, size=size, channels=channels), np.arange(n))


def _epoch(dataset):
    return [(x.numpy(), y.numpy()) for x, y in dataset]


def test_to_float_scales_and_rejects_floats():
    out = data.to_float(np.array([0, 51, 255], np.uint8))
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [0.0, 0.2, 1.0], rtol=1e-7)
    with pytest.raises(ValueError, match="uint8"):
        data.to_float(np.array([0.5], np.float32))


def test_train_batches_are_true_shifts_and_flips_of_the_padded_image():
    arrays = _index_arrays(16)
    pad = 2
    dataset = data.make_train_dataset(arrays, 8, crop_padding=pad, seed=3)
    originals = data.to_float(arrays.x)
    seen = set()
    for x, y in _epoch(dataset):
        assert x.shape == (8, 6, 6, 3) and x.dtype == np.float32 and y.dtype == np.int64
        assert x.min() >= 0.0 and x.max() <= 1.0
        for image, label in zip(x, y):
            padded = np.pad(originals[label], ((pad, pad), (pad, pad), (0, 0)))
            found = [
                (dy, dx, flipped)
                for dy in range(2 * pad + 1)
                for dx in range(2 * pad + 1)
                for flipped in (False, True)
                if np.array_equal(
                    (lambda c: c[:, ::-1] if flipped else c)(padded[dy : dy + 6, dx : dx + 6]),
                    image,
                )
            ]
            assert found, f"augmented image of label {label} is no shift/flip of its original"
            seen.add(found[0])
    # Random noise images match exactly one window; many different windows must be drawn.
    assert len(seen) > 5 and {f for _, _, f in seen} == {False, True}
    assert any(dy != dx for dy, dx, _ in seen), "row and column offsets must be drawn separately"


def test_train_without_augmentation_is_a_permutation_of_the_data():
    arrays = _index_arrays(12)
    batches = _epoch(data.make_train_dataset(arrays, 4, augment=False, seed=0))
    labels = np.concatenate([y for _, y in batches])
    images = np.concatenate([x for x, _ in batches])
    assert sorted(labels) == list(range(12)) and list(labels) != list(range(12))
    np.testing.assert_array_equal(images, data.to_float(arrays.x)[labels])


def test_flip_off_and_zero_padding_leave_images_unchanged():
    arrays = _index_arrays(8)
    x, y = next(iter(data.make_train_dataset(arrays, 8, crop_padding=0, flip=False)))
    np.testing.assert_array_equal(x.numpy(), data.to_float(arrays.x)[y.numpy()])


def test_default_crop_padding_is_an_eighth_of_the_height():
    arrays = _index_arrays(8, size=8, channels=1)
    x, y = next(iter(data.make_train_dataset(arrays, 8, flip=False, seed=1)))
    originals = data.to_float(arrays.x)
    for image, label in zip(x.numpy(), y.numpy()):
        padded = np.pad(originals[label], ((1, 1), (1, 1), (0, 0)))
        windows = [padded[dy : dy + 8, dx : dx + 8] for dy in range(3) for dx in range(3)]
        assert any(np.array_equal(window, image) for window in windows)


def test_train_epochs_are_a_function_of_seed_and_epoch_so_a_resume_replays_them():
    arrays = _index_arrays(24)
    run = _epoch(data.make_train_dataset(arrays, 8, seed=5, epochs=3))  # 3 epochs of 3 batches
    again = _epoch(data.make_train_dataset(arrays, 8, seed=5, epochs=3))
    resumed = _epoch(data.make_train_dataset(arrays, 8, seed=5, first_epoch=1, epochs=2))
    other = _epoch(data.make_train_dataset(arrays, 8, seed=6, epochs=1))
    assert len(run) == 9 and len(resumed) == 6
    for (xa, ya), (xb, yb) in zip(run, again):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
    # A run resumed at epoch 1 sees exactly the batches (order and augmentation) of epochs 1, 2.
    for (xa, ya), (xb, yb) in zip(run[3:], resumed):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
    labels = lambda batches: np.concatenate([y for _, y in batches])  # noqa: E731
    assert sorted(labels(run[:3])) == list(range(24))  # each epoch is a permutation
    assert not np.array_equal(labels(run[:3]), labels(run[3:6]))  # reshuffled per epoch
    assert not np.array_equal(labels(run[:3]), labels(other))  # and per seed
    # One epoch (epochs=None) is replayed by every new iterator.
    single = data.make_train_dataset(arrays, 8, seed=5)
    np.testing.assert_array_equal(labels(_epoch(single)), labels(_epoch(single)))


def test_train_drops_the_remainder_and_eval_keeps_it_in_order():
    arrays = _index_arrays(10)
    train_sizes = [len(y) for _, y in _epoch(data.make_train_dataset(arrays, 4))]
    assert train_sizes == [4, 4]

    eval_batches = _epoch(data.make_eval_dataset(arrays, 4))
    assert [len(y) for _, y in eval_batches] == [4, 4, 2]
    np.testing.assert_array_equal(np.concatenate([y for _, y in eval_batches]), np.arange(10))
    np.testing.assert_array_equal(
        np.concatenate([x for x, _ in eval_batches]), data.to_float(arrays.x)
    )


def test_batch_larger_than_the_split_is_an_error():
    with pytest.raises(ValueError, match="batch_size`=16 exceeds the 10"):
        data.make_train_dataset(_index_arrays(10), 16)


def test_arrays_rejects_wrong_dtype():
    with pytest.raises(ValueError, match="uint8"):
        data.Arrays(np.zeros((2, 4, 4, 3), np.float32), np.zeros(2, np.int64))


def test_train_keeps_the_partial_batch_when_asked_and_covers_every_image_once():
    arrays = _index_arrays(10)
    batches = _epoch(data.make_train_dataset(arrays, 4, augment=False, drop_remainder=False))
    assert [len(y) for _, y in batches] == [4, 4, 2]
    np.testing.assert_array_equal(np.sort(np.concatenate([y for _, y in batches])), np.arange(10))
    # One partial batch when the batch is larger than the split.
    assert [
        len(y) for _, y in _epoch(data.make_train_dataset(arrays, 16, drop_remainder=False))
    ] == [10]

"""Shared test settings: quiet TensorFlow, fixed seeds, paths to optional real data."""

import os
import pathlib

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402

SHARED_CIFAR = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cifar10"


@pytest.fixture(autouse=True)
def _seed():
    import keras

    keras.utils.set_random_seed(0)
    yield


@pytest.fixture(scope="session")
def shared_cifar10():
    """Path to ../shared/data/cifar10, or skip when it is not beside the checkout."""
    if not (SHARED_CIFAR / "test.npz").exists():
        pytest.skip("../shared/data/cifar10 not present")
    return SHARED_CIFAR


@pytest.fixture(scope="session")
def digits_teacher(tmp_path_factory):
    """A small-cnn `.keras` teacher trained (plain cross-entropy) on the embedded digits.

    Teachers loaded by `dgad_tf.fit` must beat chance on the data; an untrained network does not.
    """
    import keras
    import numpy as np

    from dgad_tf import data as data_lib
    from dgad_tf.models import build_model

    keras.utils.set_random_seed(0)
    splits = data_lib.load_splits("digits", val_fraction=0.0)
    teacher = build_model("small-cnn", splits.num_classes, splits.image_shape)
    teacher.compile(optimizer=keras.optimizers.Adam(1e-2),
                    loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    teacher.fit(data_lib.to_float(splits.train.x), splits.train.y, epochs=5, batch_size=64,
                verbose=0)
    logits = teacher.predict(data_lib.to_float(splits.test.x), verbose=0)
    accuracy = np.mean(np.argmax(logits, -1) == splits.test.y)
    assert accuracy > 0.8, f"the digits teacher fixture only reached {accuracy:.1%}"
    path = tmp_path_factory.mktemp("teacher") / "digits_teacher.keras"
    teacher.save(path)
    return path

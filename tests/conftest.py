"""Shared test settings: quiet TensorFlow, fixed seeds, paths to optional real data."""

import os
import pathlib

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402

# Before any test module imports TensorFlow, so the suite runs with oneDNN as users get it.
import dgad_tf  # noqa: E402, F401

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
    teacher.compile(
        optimizer=keras.optimizers.Adam(1e-2),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    teacher.fit(
        data_lib.to_float(splits.train.x), splits.train.y, epochs=5, batch_size=64, verbose=0
    )
    logits = teacher.predict(data_lib.to_float(splits.test.x), verbose=0)
    accuracy = np.mean(np.argmax(logits, -1) == splits.test.y)
    assert accuracy > 0.8, f"the digits teacher fixture only reached {accuracy:.1%}"
    path = tmp_path_factory.mktemp("teacher") / "digits_teacher.keras"
    teacher.save(path)
    return path


# --- dgad_tf.serving (test_serving_*.py) ------------------------------------------------------
# One tiny convolutional student is trained for a few epochs on scikit-learn's 8x8 digits and
# exported once per session; the four test_serving_*.py modules share that export.


@pytest.fixture(scope="session")
def digits():
    """scikit-learn's 8x8 digits as uint8 [N, 8, 8, 1]: the first 1500 train, the rest test."""
    import numpy as np
    from sklearn.datasets import load_digits

    data = load_digits()
    x = np.round(data.images / 16.0 * 255.0).astype(np.uint8)[..., None]
    y = data.target.astype(np.int64)
    return {"train_x": x[:1500], "train_y": y[:1500], "test_x": x[1500:], "test_y": y[1500:]}


@pytest.fixture(scope="session")
def run_dir(digits, tmp_path_factory):
    """A run directory with a trained tiny student and a config.yaml."""
    import keras

    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 1))
    hidden = keras.layers.Rescaling(1 / 0.3, offset=-0.5)(inputs)
    hidden = keras.layers.Conv2D(16, 3, padding="same", activation="relu")(hidden)
    hidden = keras.layers.MaxPooling2D()(hidden)
    hidden = keras.layers.Conv2D(32, 3, padding="same", activation="relu")(hidden)
    hidden = keras.layers.GlobalAveragePooling2D()(hidden)
    model = keras.Model(inputs, keras.layers.Dense(10)(hidden))
    model.compile(
        keras.optimizers.Adam(1e-2), keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    model.fit(digits["train_x"] / 255.0, digits["train_y"], epochs=5, batch_size=64, verbose=0)
    path = tmp_path_factory.mktemp("run")
    model.save(path / "student_last.keras")
    (path / "config.yaml").write_text("data:\n  source: digits\n  seed: 0\n")
    return path


@pytest.fixture(scope="session")
def student(run_dir):
    import keras

    return keras.saving.load_model(run_dir / "student_last.keras", compile=False)


@pytest.fixture(scope="session")
def exported(run_dir, digits, tmp_path_factory):
    """All four formats exported once from the run directory; returns (base, card)."""
    from serving_helpers import N_EVAL, stand_in_attacks

    from dgad_tf import serving

    base = tmp_path_factory.mktemp("export") / "digits"
    with stand_in_attacks():
        card = serving.export_student(
            run_dir,
            base,
            representative_x=digits["train_x"],
            eval_arrays=(digits["test_x"][:N_EVAL], digits["test_y"][:N_EVAL]),
            eps=8 / 255,
        )
    return base, card


@pytest.fixture(scope="session")
def loaded(exported):
    """The exported SavedModel, loaded with TensorFlow's own loader."""
    import tensorflow as tf

    return tf.saved_model.load(str(exported[0] / "1"))

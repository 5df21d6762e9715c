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


@pytest.fixture
def shared_cifar10():
    """Path to ../shared/data/cifar10, or skip when it is not beside the checkout."""
    if not (SHARED_CIFAR / "test.npz").exists():
        pytest.skip("../shared/data/cifar10 not present")
    return SHARED_CIFAR

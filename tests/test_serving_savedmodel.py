"""Tests for dgad_tf.serving.savedmodel: the exported SavedModel's two signatures.

Each test checks the session's one export (conftest's `exported`) against the Keras model, with
TensorFlow's own loader and `saved_model_cli`.
"""

import numpy as np
import pytest
import tensorflow as tf
from serving_helpers import keras_probabilities
from subprocesses import run_command


def test_serving_default_returns_keras_probabilities_and_classes(loaded, student, digits):
    x = digits["test_x"][:32]
    outputs = loaded.signatures["serving_default"](images=tf.constant(x))
    expected = keras_probabilities(student, x)
    assert outputs["probabilities"].dtype == tf.float32
    assert outputs["classes"].dtype == tf.int64
    np.testing.assert_allclose(outputs["probabilities"].numpy(), expected, atol=1e-5)
    np.testing.assert_array_equal(outputs["classes"].numpy(), expected.argmax(axis=1))


def test_logits_signature_returns_keras_logits(loaded, student, digits):
    x = digits["test_x"][:32].astype(np.float32) / 255.0
    logits = loaded.signatures["logits"](images=tf.constant(x))["logits"].numpy()
    np.testing.assert_allclose(logits, student(x, training=False).numpy(), atol=1e-5)


def test_signature_input_names_and_specs(loaded):
    specs = {
        name: loaded.signatures[name].structured_input_signature[1]["images"]
        for name in ("serving_default", "logits")
    }
    assert specs["serving_default"].dtype == tf.uint8
    assert specs["logits"].dtype == tf.float32
    assert all(spec.shape.as_list() == [None, 8, 8, 1] for spec in specs.values())


@pytest.mark.parametrize(
    "signature, bad",
    [
        ("serving_default", np.zeros((2, 8, 8, 1), np.float32)),
        ("logits", np.zeros((2, 8, 8, 1), np.uint8)),
    ],
)
def test_signatures_reject_wrong_dtype(loaded, signature, bad):
    with pytest.raises((tf.errors.InvalidArgumentError, TypeError, ValueError)):
        loaded.signatures[signature](images=tf.constant(bad))


@pytest.mark.parametrize("shape", [(2, 9, 8, 1), (2, 8, 8, 3), (8, 8, 1)])
@pytest.mark.parametrize("signature", ["serving_default", "logits"])
def test_signatures_reject_wrong_shape(loaded, signature, shape):
    dtype = np.uint8 if signature == "serving_default" else np.float32
    with pytest.raises((tf.errors.InvalidArgumentError, ValueError)):
        loaded.signatures[signature](images=tf.constant(np.zeros(shape, dtype)))


@pytest.mark.parametrize("value", [1.5, -0.1, np.nan])
def test_logits_signature_rejects_values_outside_unit_interval(loaded, value):
    x = np.full((1, 8, 8, 1), value, np.float32)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"\[0, 1\]"):
        loaded.signatures["logits"](images=tf.constant(x))


def test_saved_model_cli_runs_the_export(exported, student, digits, tmp_path):
    x = digits["test_x"][:4]
    np.save(tmp_path / "x.npy", x)
    command = [
        "saved_model_cli", "run", "--dir", str(exported[0] / "1"), "--tag_set", "serve",
        "--signature_def", "serving_default", "--inputs", f"images={tmp_path / 'x.npy'}",
        "--outdir", str(tmp_path / "out"),
    ]  # fmt: skip
    result = run_command(command)
    assert result.returncode == 0, result.stderr[-2000:]
    probabilities = np.load(tmp_path / "out" / "probabilities.npy")
    np.testing.assert_allclose(probabilities, keras_probabilities(student, x), atol=1e-5)

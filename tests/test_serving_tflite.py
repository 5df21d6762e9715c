"""Tests for dgad_tf.serving.tflite: the three TFLite variants of the session's one export.

The files are run with a plain `tf.lite.Interpreter`, one image at a time, quantising by hand.
"""

import numpy as np
import pytest
import tensorflow as tf
from serving_helpers import N_EVAL, keras_probabilities


def _run_interpreter(path, x_float):
    """Logits from a TFLite file, one image at a time, quantising by hand."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        interpreter = tf.lite.Interpreter(model_path=str(path))
    interpreter.allocate_tensors()
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    rows = []
    for image in x_float:
        if inp["dtype"] == np.int8:
            scale, zero_point = inp["quantization"]
            image = np.clip(np.round(image / scale) + zero_point, -128, 127).astype(np.int8)
        interpreter.set_tensor(inp["index"], image[None])
        interpreter.invoke()
        row = interpreter.get_tensor(out["index"])[0].astype(np.float64)
        if out["dtype"] == np.int8:
            scale, zero_point = out["quantization"]
            row = (row - zero_point) * scale
        rows.append(row)
    return np.stack(rows)


def test_tflite_float_matcheskeras_probabilities(exported, student, digits):
    x = digits["test_x"][:N_EVAL].astype(np.float32) / 255.0
    logits = _run_interpreter(exported[0] / "1" / "model_float32.tflite", x)
    probabilities = np.exp(logits - logits.max(1, keepdims=True))
    probabilities /= probabilities.sum(1, keepdims=True)
    expected = keras_probabilities(student, digits["test_x"][:N_EVAL])
    assert np.max(np.abs(probabilities - expected)) <= 1e-4


@pytest.mark.parametrize("file", ["model_dynamic_range.tflite", "model_int8.tflite"])
def test_quantised_tflite_keeps_float_top1(exported, student, digits, file):
    x = digits["test_x"][:N_EVAL].astype(np.float32) / 255.0
    logits = _run_interpreter(exported[0] / "1" / file, x)
    expected = student(x, training=False).numpy().argmax(axis=1)
    assert np.mean(logits.argmax(axis=1) == expected) >= 0.98


def test_int8_tflite_has_int8_io_documented_in_card(exported):
    base, card = exported
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        interpreter = tf.lite.Interpreter(model_path=str(base / "1" / "model_int8.tflite"))
    detail = interpreter.get_input_details()[0]
    assert detail["dtype"] == np.int8
    scale, zero_point = detail["quantization"]
    documented = card["artifacts"]["tflite_int8"]["input"]["quantization"]
    assert documented == {"scale": pytest.approx(scale), "zero_point": zero_point}

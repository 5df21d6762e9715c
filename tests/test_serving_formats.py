"""Tests for dgad_tf.serving.EXPORT_FORMATS: the `tflite_float16` format, and that a format
registered from a test (a `.keras` file) is written, verified, scored, estimated, validated and
offered by the command line with no other file touched.

Truth comes from a plain `tf.lite.Interpreter`, the Keras model and NumPy, not from the code
under test.
"""

import contextlib
import json
import warnings

import keras
import numpy as np
import pytest
import serving_helpers
import tensorflow as tf
from serving_helpers import keras_probabilities

from dgad_tf import config, serving
from dgad_tf import export as export_cli
from dgad_tf.serving.tflite import FLOAT16_TOLERANCE

F16_FILE = "model_float16.tflite"


@pytest.fixture(scope="module", autouse=True)
def stand_in_attacks():
    with serving_helpers.stand_in_attacks():
        yield


def _interpreter(path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        interpreter = tf.lite.Interpreter(model_path=str(path))
    interpreter.allocate_tensors()
    return interpreter


def _interpreter_probabilities(path, x_float):
    """Softmax of a TFLite file's logits, one image at a time, in float64."""
    interpreter = _interpreter(path)
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    rows = []
    for image in x_float:
        interpreter.set_tensor(inp["index"], image[None])
        interpreter.invoke()
        rows.append(interpreter.get_tensor(out["index"])[0].astype(np.float64))
    logits = np.stack(rows)
    exp = np.exp(logits - logits.max(1, keepdims=True))
    return exp / exp.sum(1, keepdims=True)


# --- tflite_float16 -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def float16_export(student, digits, tmp_path_factory):
    base = tmp_path_factory.mktemp("f16") / "m"
    card = serving.export_student(
        student,
        base,
        formats="tflite_float16",
        eval_arrays=(digits["test_x"][:100], digits["test_y"][:100]),
        eps=2 / 255,
    )
    return base / "1", card


def test_float16_export_writes_only_its_file_and_the_card(float16_export):
    folder, card = float16_export
    assert sorted(p.name for p in folder.iterdir()) == ["model_card.json", F16_FILE]
    assert json.loads((folder / "model_card.json").read_text()) == card
    assert card["artifacts"]["tflite_float16"]["path"] == F16_FILE


def test_float16_file_stores_float16_weights_and_has_float32_io(float16_export):
    interpreter = _interpreter(float16_export[0] / F16_FILE)
    assert interpreter.get_input_details()[0]["dtype"] == np.float32
    assert interpreter.get_output_details()[0]["dtype"] == np.float32
    dtypes = {np.dtype(t["dtype"]) for t in interpreter.get_tensor_details()}
    assert np.dtype(np.float16) in dtypes
    assert np.dtype(np.int8) not in dtypes  # weights in float16, not int8 dynamic range


def test_float16_outputs_match_keras_within_the_tolerance(float16_export, student, digits):
    x_u8 = digits["test_x"][:200]
    probabilities = _interpreter_probabilities(
        float16_export[0] / F16_FILE, x_u8.astype(np.float32) / 255.0
    )
    gap = np.max(np.abs(probabilities - keras_probabilities(student, x_u8)))
    assert gap <= FLOAT16_TOLERANCE
    parity = float16_export[1]["parity"]["tflite_float16"]
    assert parity["tolerance"] == FLOAT16_TOLERANCE
    assert parity["max_abs_diff_probabilities"] <= FLOAT16_TOLERANCE


def test_float16_card_accuracy_is_its_own(float16_export, digits):
    x, y = digits["test_x"][:100], digits["test_y"][:100]
    probabilities = _interpreter_probabilities(
        float16_export[0] / F16_FILE, x.astype(np.float32) / 255.0
    )
    clean = float16_export[1]["evaluation"]["clean_accuracy"]["tflite_float16"]
    assert clean == pytest.approx(np.mean(probabilities.argmax(1) == y))
    assert "tflite_float16" in float16_export[1]["evaluation"]["transfer_accuracy_pgd20"]


def test_float16_of_another_network_fails_verification(student, tmp_path, monkeypatch):
    # Same architecture, fresh weights: the tolerance must not let a different model through.
    real_convert = serving.tflite.convert_tflite
    other = keras.models.clone_model(student)
    monkeypatch.setattr(
        serving.tflite,
        "convert_tflite",
        lambda model, *args, **kwargs: real_convert(other, *args, **kwargs),
    )
    with pytest.raises(serving.ExportVerificationError, match="tflite_float16"):
        serving.export_student(student, tmp_path / "m", formats="tflite_float16")
    assert list((tmp_path / "m").iterdir()) == []


def test_float16_is_not_a_default_format():
    assert "tflite_float16" in serving.EXPORT_FORMATS
    assert serving.FORMATS == ("saved_model", "tflite_float", "tflite_dynamic", "tflite_int8")
    assert serving.default_formats() == serving.FORMATS


# --- a format registered by a test ------------------------------------------------------------


class _KerasFileArtifact:
    """A `.keras` file loaded back with Keras."""

    def __init__(self, path):
        self.model = keras.saving.load_model(path, compile=False)

    def logits(self, x):
        return self.model.predict(x, verbose=0)

    def classes(self, x):
        return self.logits(x.astype(np.float32) / 255.0).argmax(-1)


def _keras_file_format(load=_KerasFileArtifact):
    return serving.ExportFormat(
        path="student.keras",
        write=lambda model, path, inputs: model.save(path),
        load=load,
        parity=serving.ProbabilityTolerance(1e-6),
        describe=lambda artifact, path, inputs: {"path": path.name, "bytes": path.stat().st_size},
        weight_copies=3.0,
        default=False,
    )


@contextlib.contextmanager
def _registered(name, fmt):
    serving.register_export_format(name, fmt)
    try:
        yield
    finally:
        serving.EXPORT_FORMATS.unregister(name)


def test_a_registered_format_is_written_verified_and_scored(student, digits, tmp_path):
    x, y = digits["test_x"][:64], digits["test_y"][:64]
    with _registered("keras_file", _keras_file_format()):
        card = serving.export_student(
            student, tmp_path / "m", formats="keras_file,tflite_float", eval_arrays=(x, y)
        )
    folder = tmp_path / "m" / "1"
    assert sorted(p.name for p in folder.iterdir()) == [
        "model_card.json",
        "model_float32.tflite",
        "student.keras",
    ]
    reloaded = keras.saving.load_model(folder / "student.keras", compile=False)
    assert np.array_equal(keras_probabilities(reloaded, x), keras_probabilities(student, x)), (
        "the written file is not the student"
    )
    assert card["artifacts"]["keras_file"] == {
        "path": "student.keras",
        "bytes": (folder / "student.keras").stat().st_size,
    }
    assert card["parity"]["keras_file"]["max_abs_diff_probabilities"] <= 1e-6
    expected = np.mean(keras_probabilities(student, x).argmax(1) == y)
    assert card["evaluation"]["clean_accuracy"]["keras_file"] == pytest.approx(expected)
    assert set(card["evaluation"]["transfer_accuracy_pgd20"]) == {"keras_file", "tflite_float"}


def test_a_registered_format_is_checked_by_its_own_rule(student, tmp_path):
    other = keras.models.clone_model(student)  # fresh weights

    class WrongModel(_KerasFileArtifact):
        def __init__(self, path):
            self.model = other

    with _registered("keras_file", _keras_file_format(load=WrongModel)):
        with pytest.raises(serving.ExportVerificationError, match="keras_file"):
            serving.export_student(student, tmp_path / "m", formats="keras_file")
    assert list((tmp_path / "m").iterdir()) == []


def test_a_registered_format_counts_in_the_size_estimate(student):
    weights = sum(int(np.prod(w.shape)) for w in student.weights) * 4
    with _registered("keras_file", _keras_file_format()):
        estimate = serving.estimated_export_bytes(student, ["keras_file", "tflite_float16"])
    assert estimate == int(weights * (3.0 + 0.5)) + 2**20


def test_config_and_command_line_accept_a_registered_format_and_list_it(tmp_path, capsys):
    with _registered("keras_file", _keras_file_format()):
        assert config.check_export_formats(["keras_file", "tflite_float16"]) == [
            "keras_file",
            "tflite_float16",
        ]
        cfg = config.load_config(overrides=["export.formats=[keras_file, tflite_float16]"])
        assert cfg.export.formats == ("keras_file", "tflite_float16")
        assert export_cli.parse_formats("keras_file") == ["keras_file"]
        help_text = " ".join(export_cli.build_parser().format_help().split())
        assert (
            "subset of saved_model, tflite_float, tflite_dynamic, tflite_int8, tflite_float16, "
            "keras_file (default: ['saved_model', 'tflite_float', 'tflite_dynamic', "
            "'tflite_int8'])" in help_text
        )
    with pytest.raises(config.ConfigError) as refused:
        config.load_config(overrides=["export.formats=[keras_file]"])
    message = str(refused.value)
    assert "`export.formats`" in message and "'keras_file'" in message
    for name in ("saved_model", "tflite_float", "tflite_dynamic", "tflite_int8", "tflite_float16"):
        assert name in message
    with pytest.raises(SystemExit):
        export_cli.main(["--model", "m.keras", "--out", str(tmp_path / "o"), "--formats", "x"])
    assert "--formats" in capsys.readouterr().err

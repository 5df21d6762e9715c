"""Tests for dgad_tf.serving, dgad_tf.export and dgad_tf.serving_client.

One tiny convolutional student is trained for a few epochs on scikit-learn's 8x8 digits and
exported once per module; each test then checks one property of that export (or of a small extra
export) against the Keras model, NumPy, hashlib, TensorFlow's own loaders and `saved_model_cli`.
The attack is a stand-in PGD defined here, so these tests do not depend on dgad_tf.attacks.
"""

import hashlib
import http.server
import json
import pathlib
import subprocess
import sys
import threading
import types

import keras
import numpy as np
import pytest
import tensorflow as tf

from dgad_tf import export as export_cli
from dgad_tf import serving
from dgad_tf import rundir, serving_client

N_EVAL = 200


def _stand_in_pgd_ce(model_fn, x, labels, *, eps, step_size=None, steps=20, restarts=1, seed=None):
    """Sign-gradient ascent on cross-entropy, projected onto the eps-ball and [0, 1]."""
    step_size = eps / 4 if step_size is None else step_size
    x = tf.convert_to_tensor(x, tf.float32)
    x_adv = tf.identity(x)
    for _ in range(steps):
        with tf.GradientTape() as tape:
            tape.watch(x_adv)
            loss = keras.losses.sparse_categorical_crossentropy(
                labels, model_fn(x_adv), from_logits=True
            )
        x_adv = x_adv + step_size * tf.sign(tape.gradient(loss, x_adv))
        x_adv = tf.clip_by_value(tf.clip_by_value(x_adv, x - eps, x + eps), 0.0, 1.0)
    return x_adv


@pytest.fixture(scope="module", autouse=True)
def stand_in_attacks():
    module = types.ModuleType("dgad_tf.attacks")
    module.pgd_ce = _stand_in_pgd_ce
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(sys.modules, "dgad_tf.attacks", module)
        yield


@pytest.fixture(scope="module")
def digits():
    from sklearn.datasets import load_digits

    data = load_digits()
    x = np.round(data.images / 16.0 * 255.0).astype(np.uint8)[..., None]
    y = data.target.astype(np.int64)
    return {"train_x": x[:1500], "train_y": y[:1500], "test_x": x[1500:], "test_y": y[1500:]}


@pytest.fixture(scope="module")
def run_dir(digits, tmp_path_factory):
    """A run directory with a trained tiny student and a config.yaml."""
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


@pytest.fixture(scope="module")
def student(run_dir):
    return keras.saving.load_model(run_dir / "student_last.keras", compile=False)


@pytest.fixture(scope="module")
def exported(run_dir, digits, tmp_path_factory):
    """All four formats exported once from the run directory; returns (base, card)."""
    base = tmp_path_factory.mktemp("export") / "digits"
    card = serving.export_student(
        run_dir,
        base,
        representative_x=digits["train_x"],
        eval_arrays=(digits["test_x"][:N_EVAL], digits["test_y"][:N_EVAL]),
        eps=8 / 255,
    )
    return base, card


@pytest.fixture(scope="module")
def loaded(exported):
    return tf.saved_model.load(str(exported[0] / "1"))


def _keras_probabilities(model, x_uint8):
    logits = model(x_uint8.astype(np.float32) / 255.0, training=False).numpy().astype(np.float64)
    exp = np.exp(logits - logits.max(axis=1, keepdims=True))
    return exp / exp.sum(axis=1, keepdims=True)


def _tree_hashes(folder):
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(pathlib.Path(folder).rglob("*"))
        if p.is_file()
    }


# --- layout and versions ---------------------------------------------------------------------


def test_export_writes_version_1_with_every_artifact(exported):
    base, _ = exported
    assert sorted(p.name for p in base.iterdir()) == ["1"]
    files = {p.name for p in (base / "1").iterdir()}
    assert {"saved_model.pb", "variables", "model_card.json"} <= files
    assert set(serving.TFLITE_FILES.values()) <= files


def test_version_folder_is_readable_by_other_users(exported):
    # A TF Serving container usually runs as another user than the one who exported.
    assert (exported[0] / "1").stat().st_mode & 0o055 == 0o055


def test_next_export_takes_the_next_version(student, tmp_path):
    base = tmp_path / "m"
    first = serving.export_student(student, base, formats="tflite_float")
    second = serving.export_student(student, base, formats="tflite_float")
    assert (first["version"], second["version"]) == (1, 2)
    assert sorted(p.name for p in base.iterdir()) == ["1", "2"]


def test_next_version_ignores_non_numeric_folders(tmp_path):
    for name in ("3", "10", ".tmp-11-abc", "latest"):
        (tmp_path / name).mkdir()
    assert serving.next_version(tmp_path) == 11


def test_existing_version_is_rejected(student, exported):
    with pytest.raises(ValueError, match="version"):
        serving.export_student(student, exported[0], version=1, formats="tflite_float")


def test_run_directory_prefers_best_robust_checkpoint(student, tmp_path):
    student.save(tmp_path / "student_last.keras")
    assert rundir.resolve_model_path(tmp_path).name == "student_last.keras"
    student.save(tmp_path / "student_best_robust.keras")
    assert rundir.resolve_model_path(tmp_path).name == "student_best_robust.keras"


@pytest.mark.parametrize("kind", ["missing", "folder", "text", "truncated"])
def test_a_model_that_is_not_a_keras_archive_is_named_for_what_it_is(student, tmp_path, kind):
    path = tmp_path / "student.keras"
    if kind == "folder":
        path.mkdir()
    elif kind == "text":
        path.write_text("not a model")
    elif kind == "truncated":
        student.save(path)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    expected = {"missing": "no model at", "folder": "holds none of", "text": "not a .keras archive",
                "truncated": "not a .keras archive"}[kind]
    with pytest.raises((ValueError, FileNotFoundError), match=expected):
        rundir.resolve_model_path(path)


# --- SavedModel signatures -------------------------------------------------------------------


def test_serving_default_returns_keras_probabilities_and_classes(loaded, student, digits):
    x = digits["test_x"][:32]
    outputs = loaded.signatures["serving_default"](images=tf.constant(x))
    expected = _keras_probabilities(student, x)
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
    subprocess.run(command, check=True, capture_output=True, timeout=120)
    probabilities = np.load(tmp_path / "out" / "probabilities.npy")
    np.testing.assert_allclose(probabilities, _keras_probabilities(student, x), atol=1e-5)


# --- TFLite ----------------------------------------------------------------------------------


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


def test_tflite_float_matches_keras_probabilities(exported, student, digits):
    x = digits["test_x"][:N_EVAL].astype(np.float32) / 255.0
    logits = _run_interpreter(exported[0] / "1" / serving.TFLITE_FILES["tflite_float"], x)
    probabilities = np.exp(logits - logits.max(1, keepdims=True))
    probabilities /= probabilities.sum(1, keepdims=True)
    expected = _keras_probabilities(student, digits["test_x"][:N_EVAL])
    assert np.max(np.abs(probabilities - expected)) <= 1e-4


@pytest.mark.parametrize("name", ["tflite_dynamic", "tflite_int8"])
def test_quantised_tflite_keeps_float_top1(exported, student, digits, name):
    x = digits["test_x"][:N_EVAL].astype(np.float32) / 255.0
    logits = _run_interpreter(exported[0] / "1" / serving.TFLITE_FILES[name], x)
    expected = student(x, training=False).numpy().argmax(axis=1)
    assert np.mean(logits.argmax(axis=1) == expected) >= 0.98


def test_int8_tflite_has_int8_io_documented_in_card(exported):
    base, card = exported
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        interpreter = tf.lite.Interpreter(
            model_path=str(base / "1" / serving.TFLITE_FILES["tflite_int8"])
        )
    detail = interpreter.get_input_details()[0]
    assert detail["dtype"] == np.int8
    scale, zero_point = detail["quantization"]
    documented = card["artifacts"]["tflite_int8"]["input"]["quantization"]
    assert documented == {"scale": pytest.approx(scale), "zero_point": zero_point}


# --- atomic writes ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "formats, table, key, value",
    [
        ("saved_model", "PROBABILITY_TOLERANCE", "saved_model", -1.0),
        ("tflite_float", "PROBABILITY_TOLERANCE", "tflite_float", -1.0),
        ("tflite_int8", "MIN_TOP1_AGREEMENT", "tflite_int8", 1.01),
    ],
)
def test_failed_check_leaves_no_version_and_keeps_earlier_ones(
    student, digits, tmp_path, monkeypatch, formats, table, key, value
):
    base = tmp_path / "m"
    serving.export_student(student, base, formats="tflite_float")
    before = _tree_hashes(base)
    monkeypatch.setitem(getattr(serving, table), key, value)
    with pytest.raises(serving.ExportVerificationError, match=key):
        serving.export_student(
            student, base, formats=formats, representative_x=digits["train_x"]
        )
    assert [p.name for p in base.iterdir()] == ["1"]
    assert _tree_hashes(base) == before


def test_corrupted_tflite_artifact_fails_verification(student, tmp_path, monkeypatch):
    real_convert = serving.convert_tflite

    def convert_a_different_model(model, *args, **kwargs):
        other = keras.models.clone_model(model)  # same architecture, fresh weights
        return real_convert(other, *args, **kwargs)

    monkeypatch.setattr(serving.tflite, "convert_tflite", convert_a_different_model)
    with pytest.raises(serving.ExportVerificationError, match="tflite_float"):
        serving.export_student(student, tmp_path / "m", formats="tflite_float")
    assert list((tmp_path / "m").iterdir()) == []


# --- model card ------------------------------------------------------------------------------


def test_model_card_file_matches_returned_card(exported):
    base, card = exported
    assert json.loads((base / "1" / "model_card.json").read_text()) == card


def test_model_card_hashes_match_files(exported, run_dir):
    source = exported[1]["source"]
    digest = hashlib.sha256((run_dir / "student_last.keras").read_bytes()).hexdigest()
    assert source["model_sha256"] == digest
    config_digest = hashlib.sha256((run_dir / "config.yaml").read_bytes()).hexdigest()
    assert source["config_sha256"] == config_digest
    assert source["run"] == str(run_dir)


def test_model_card_clean_accuracy_matches_keras(exported, student, digits):
    evaluation = exported[1]["evaluation"]
    x, y = digits["test_x"][:N_EVAL], digits["test_y"][:N_EVAL]
    expected = np.mean(_keras_probabilities(student, x).argmax(axis=1) == y)
    assert evaluation["n"] == N_EVAL
    assert evaluation["clean_accuracy"]["keras"] == pytest.approx(expected)
    assert evaluation["clean_accuracy"]["saved_model"] == pytest.approx(expected)
    assert set(evaluation["clean_accuracy"]) == {"keras", *serving.FORMATS}


def test_model_card_robust_and_transfer_accuracies(exported):
    evaluation = exported[1]["evaluation"]
    robust, transfer = evaluation["robust_accuracy_pgd20"], evaluation["transfer_accuracy_pgd20"]
    assert robust["keras"] < evaluation["clean_accuracy"]["keras"]
    assert robust["saved_model"] == pytest.approx(robust["keras"])
    assert set(transfer) == {"tflite_float", "tflite_dynamic", "tflite_int8"}
    assert transfer["tflite_float"] == pytest.approx(robust["keras"])
    assert evaluation["autoattack"] is None


def test_zero_eps_robust_accuracy_equals_clean(student, digits, tmp_path):
    card = serving.export_student(
        student,
        tmp_path / "m",
        formats="tflite_float",
        eval_arrays=(digits["test_x"][:64], digits["test_y"][:64]),
        eps=0.0,
    )
    evaluation = card["evaluation"]
    assert evaluation["robust_accuracy_pgd20"]["keras"] == evaluation["clean_accuracy"]["keras"]
    assert (
        evaluation["transfer_accuracy_pgd20"]["tflite_float"]
        == evaluation["clean_accuracy"]["tflite_float"]
    )


def test_autoattack_result_is_recorded_when_requested(student, digits, tmp_path, monkeypatch):
    calls = []

    def run_autoattack(model_fn, x, labels, *, eps, version="standard", batch_size=500, seed=0):
        calls.append((x.shape[0], eps))
        return {"robust_accuracy": 0.25}

    module = types.ModuleType("dgad_tf.autoattack")
    module.run_autoattack = run_autoattack
    monkeypatch.setitem(sys.modules, "dgad_tf.autoattack", module)
    card = serving.export_student(
        student,
        tmp_path / "m",
        formats="tflite_float",
        eval_arrays=(digits["test_x"][:16], digits["test_y"][:16]),
        eps=4 / 255,
        autoattack=True,
    )
    assert calls == [(16, 4 / 255)]
    assert card["evaluation"]["autoattack"]["robust_accuracy"] == 0.25


def test_model_card_parity_figures_within_tolerance(exported):
    parity = exported[1]["parity"]
    assert parity["saved_model"]["max_abs_diff_probabilities"] <= 1e-5
    assert parity["tflite_float"]["max_abs_diff_probabilities"] <= 1e-4
    assert parity["tflite_int8"]["top1_agreement"] >= 0.98
    assert parity["tflite_dynamic"]["top1_agreement"] >= 0.98
    assert parity["n"] == N_EVAL


# --- argument checks -------------------------------------------------------------------------


def test_int8_without_representative_data_is_rejected(student, tmp_path):
    with pytest.raises(ValueError, match="representative_x"):
        serving.export_student(student, tmp_path / "m", formats="tflite_int8")


def test_eps_outside_unit_interval_is_rejected(student, tmp_path):
    with pytest.raises(ValueError, match="eps=8"):
        serving.export_student(student, tmp_path / "m", formats="tflite_float", eps=8)


def test_unknown_format_is_rejected(student, tmp_path):
    with pytest.raises(ValueError, match="formats"):
        serving.export_student(student, tmp_path / "m", formats="onnx")


# --- command line ----------------------------------------------------------------------------


def test_export_cli_writes_a_verified_version(run_dir, digits, tmp_path, capsys):
    np.savez(tmp_path / "train.npz", x=digits["train_x"][:300])
    np.savez(tmp_path / "test.npz", x=digits["test_x"], y=digits["test_y"])
    code = export_cli.main(
        [
            "--model", str(run_dir / "student_last.keras"), "--out", str(tmp_path / "m"),
            "--formats", "tflite_float,tflite_int8", "--eval-n", "50", "--eps", "4/255",
            "--representative-data", str(tmp_path / "train.npz"),
            "--eval-data", str(tmp_path / "test.npz"),
        ]
    )  # fmt: skip
    assert code == 0
    card = json.loads((tmp_path / "m" / "1" / "model_card.json").read_text())
    assert card["evaluation"]["n"] == 50
    assert card["evaluation"]["eps"] == pytest.approx(4 / 255)
    assert "tflite_int8" in capsys.readouterr().out


def test_parse_eps_accepts_fractions():
    assert export_cli.parse_eps("8/255") == pytest.approx(8 / 255)
    assert export_cli.parse_eps("0.5") == 0.5


# --- serving client --------------------------------------------------------------------------


class _FakeTFServing:
    """A bounded local HTTP server that answers like TF Serving's REST API, using the real
    exported SavedModel for predictions. Records every request it receives."""

    def __init__(self, saved_model, name):
        self.requests = []
        serve = saved_model.signatures["serving_default"]
        spec = serve.structured_input_signature[1]["images"]
        metadata = {
            "model_spec": {"name": name, "version": "1"},
            "metadata": {
                "signature_def": {
                    "signature_def": {
                        "serving_default": {
                            "inputs": {
                                "images": {
                                    "dtype": "DT_UINT8",
                                    "tensor_shape": {
                                        "dim": [{"size": str(d or -1)} for d in spec.shape],
                                        "unknown_rank": False,
                                    },
                                }
                            },
                            "method_name": "tensorflow/serving/predict",
                        }
                    }
                }
            },
        }
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _answer(self, code, body):
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                owner.requests.append(("GET", self.path, None))
                if self.path == f"/v1/models/{name}/metadata":
                    self._answer(200, metadata)
                else:
                    self._answer(404, {"error": f"Could not find a model at {self.path}"})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                owner.requests.append(("POST", self.path, body))
                if self.path != f"/v1/models/{name}:predict":
                    self._answer(404, {"error": "Servable not found"})
                    return
                try:
                    images = tf.constant(np.asarray(body["instances"], dtype=np.uint8))
                    outputs = serve(images=images)
                except Exception as error:  # noqa: BLE001  (TF Serving answers 400 with it)
                    self._answer(400, {"error": str(error)[:200]})
                    return
                predictions = [
                    {"probabilities": p.tolist(), "classes": int(c)}
                    for p, c in zip(outputs["probabilities"].numpy(), outputs["classes"].numpy())
                ]
                self._answer(200, {"predictions": predictions})

        self.server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
        self.server.timeout = 5
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1/models/{name}"
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        # Stop by itself even if a test never reaches the teardown.
        self.deadline = threading.Timer(120.0, self.server.shutdown)

    def __enter__(self):
        self.thread.start()
        self.deadline.start()
        return self

    def __exit__(self, *exc):
        self.deadline.cancel()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


@pytest.fixture(scope="module")
def fake_server(loaded):
    with _FakeTFServing(loaded, "digits") as server:
        yield server


@pytest.fixture
def server(fake_server):
    fake_server.requests.clear()
    return fake_server


@pytest.fixture(scope="module")
def digit_png(digits, tmp_path_factory):
    path = tmp_path_factory.mktemp("img") / "digit.png"
    path.write_bytes(tf.io.encode_png(digits["test_x"][0]).numpy())
    return path


def test_client_sends_tf_serving_predict_request(server, digit_png, digits, capsys):
    code = serving_client.main(
        ["--url", server.url, "--image", str(digit_png), "--image-size", "8,8,1"]
    )
    assert code == 0
    ((method, path, body),) = server.requests
    assert (method, path) == ("POST", "/v1/models/digits:predict")
    assert body["signature_name"] == "serving_default"
    assert np.array_equal(np.asarray(body["instances"]), digits["test_x"][:1])


def test_client_prints_class_and_probability_of_the_model(
    server, digit_png, student, digits, capsys
):
    url = server.url + ":predict"
    serving_client.main(["--url", url, "--image", str(digit_png), "--image-size", "8,8,1"])
    probabilities = _keras_probabilities(student, digits["test_x"][:1])[0]
    predicted = int(probabilities.argmax())
    expected = f"class {predicted} probability {probabilities[predicted]:.4f}"
    assert capsys.readouterr().out.strip() == expected


def test_client_reads_image_size_from_metadata(server, digit_png):
    assert serving_client.main(["--url", server.url, "--image", str(digit_png)]) == 0
    assert [(m, p) for m, p, _ in server.requests] == [
        ("GET", "/v1/models/digits/metadata"),
        ("POST", "/v1/models/digits:predict"),
    ]


def test_client_rejects_a_non_image_before_sending(server, tmp_path, capsys):
    path = tmp_path / "notes.png"
    path.write_text("not an image")
    assert serving_client.main(["--url", server.url, "--image", str(path)]) == 2
    assert "not a PNG" in capsys.readouterr().err
    assert server.requests == []


@pytest.mark.parametrize("shape", [(9, 8, 1), (8, 8, 3)])
def test_client_rejects_a_wrong_size_before_sending(server, tmp_path, capsys, shape):
    path = tmp_path / "big.png"
    path.write_bytes(tf.io.encode_png(np.zeros(shape, np.uint8)).numpy())
    code = serving_client.main(["--url", server.url, "--image", str(path), "--image-size", "8,8,1"])
    assert code == 2
    assert "expects 8x8x1" in capsys.readouterr().err
    assert server.requests == []


@pytest.mark.parametrize("shape", [(8, 8, 1), (8, 8, 3)])
@pytest.mark.parametrize("kind", ["png", "bmp", "gif", "jpeg"])
def test_client_decodes_like_tensorflow(tmp_path, shape, kind):
    from PIL import Image

    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, shape, dtype=np.uint8)
    path = tmp_path / f"image.{kind}"
    Image.fromarray(pixels[:, :, 0] if shape[-1] == 1 else pixels).save(path)
    expected = tf.io.decode_image(path.read_bytes(), expand_animations=False).numpy()
    decoded = serving_client.load_image(str(path))
    assert decoded.dtype == np.uint8
    if kind == "gif" and shape[-1] == 1:
        # TensorFlow decodes every GIF to RGB; a grey GIF's channels are equal.
        assert np.array_equal(decoded[:, :, 0], expected[:, :, 0])
    elif kind == "jpeg":
        # JPEG decoders are not bit-exact across libraries (their inverse DCTs round apart).
        assert decoded.shape == expected.shape
        assert np.abs(decoded.astype(int) - expected.astype(int)).max() <= 4
    else:
        assert np.array_equal(decoded, expected)


def test_client_decodes_without_importing_tensorflow(digit_png):
    code = ("import sys; from dgad_tf import serving_client; "
            f"image = serving_client.load_image({str(digit_png)!r}); "
            "assert image.shape == (8, 8, 1), image.shape; "
            "assert 'tensorflow' not in sys.modules, 'tensorflow was imported'")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr


def test_client_reports_server_errors_with_exit_1(server, digit_png, capsys):
    url = server.url.replace("/digits", "/missing")
    code = serving_client.main(["--url", url, "--image", str(digit_png), "--image-size", "8,8,1"])
    assert code == 1
    assert "404" in capsys.readouterr().err


@pytest.mark.parametrize(
    "url, expected",
    [
        ("http://h:8501/v1/models/m", "http://h:8501/v1/models/m:predict"),
        ("http://h:8501/v1/models/m:predict", "http://h:8501/v1/models/m:predict"),
        ("http://h:8501/v1/models/m/versions/2/", "http://h:8501/v1/models/m/versions/2:predict"),
    ],
)
def test_predict_url_normalises(url, expected):
    assert serving_client.predict_url(url) == expected


@pytest.mark.parametrize("url", ["ftp://h/v1/models/m", "http://h:8501/models/m", "h:8501"])
def test_predict_url_rejects_non_tf_serving_urls(url):
    with pytest.raises(serving_client.ClientInputError, match="url"):
        serving_client.predict_url(url)

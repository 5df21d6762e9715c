"""Tests for dgad_tf.serving_client against a fake TF Serving REST server.

The fake server answers with the session's exported SavedModel (conftest's `loaded`).
"""

import http.server
import json
import sys
import threading

import numpy as np
import pytest
import tensorflow as tf
from serving_helpers import keras_probabilities
from subprocesses import run_command

from dgad_tf import serving_client


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
    probabilities = keras_probabilities(student, digits["test_x"][:1])[0]
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
    code = (
        "import sys; from dgad_tf import serving_client; "
        f"image = serving_client.load_image({str(digit_png)!r}); "
        "assert image.shape == (8, 8, 1), image.shape; "
        "assert 'tensorflow' not in sys.modules, 'tensorflow was imported'"
    )
    proc = run_command([sys.executable, "-c", code])
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

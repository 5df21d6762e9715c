"""Deployable students: TF Serving SavedModels and TFLite files that verify themselves.

`export_student` turns a trained Keras student (input float32 [N, H, W, C] in [0, 1], output
logits [N, C], normalisation inside the model) into a numbered version folder that TF Serving can
load directly, plus up to three TFLite variants, and writes a `model_card.json` beside them.

Every artifact is re-loaded from disk and compared with the Keras model on a fixed batch before
the version folder appears: the SavedModel's probabilities within 1e-5, the float TFLite model's
within 1e-4, and the quantised TFLite models must agree with the float model's top-1 class on at
least 98% of the batch. Everything is written into a hidden temporary folder beside the version
folder and renamed into place only after every check passed, so a failed export leaves no
half-written version for TF Serving to pick up.

Layout of one export (`out_dir` is the TF Serving base path):

    out_dir/<version>/saved_model.pb, variables/, assets/, fingerprint.pb
    out_dir/<version>/model_float32.tflite, model_dynamic_range.tflite, model_int8.tflite
    out_dir/<version>/model_card.json

The full-integer TFLite model has int8 input and int8 output; its quantisation parameters are in
the model card (`artifacts.tflite_int8.input.quantization`): feed `round(x / scale) + zero_point`
for pixels x in [0, 1] and read logits as `(q - zero_point) * scale`.
"""

import datetime
import hashlib
import json
import logging
import os
import pathlib
import shutil
import tempfile
import warnings

import keras
import numpy as np
import tensorflow as tf

import dgad_tf
import dgad_tf.models  # noqa: F401  (registers the custom layers that students deserialize)
from dgad_tf.config import EXPORT_FORMATS
from dgad_tf.evaluate import at_chance_level
from dgad_tf.rundir import FolderLock, ensure_writable_folder, resolve_model_path, sha256_file

logger = logging.getLogger(__name__)

FORMATS = EXPORT_FORMATS
SERVING_SIGNATURE = "serving_default"
LOGITS_SIGNATURE = "logits"
INPUT_NAME = "images"
MODEL_CARD = "model_card.json"
TFLITE_FILES = {
    "tflite_float": "model_float32.tflite",
    "tflite_dynamic": "model_dynamic_range.tflite",
    "tflite_int8": "model_int8.tflite",
}
# Max abs difference of softmax probabilities against the Keras model on the parity batch.
PROBABILITY_TOLERANCE = {"saved_model": 1e-5, "tflite_float": 1e-4}
# Minimum fraction of the parity batch on which a quantised model keeps the float top-1 class.
MIN_TOP1_AGREEMENT = {"tflite_dynamic": 0.98, "tflite_int8": 0.98}
_BATCH = 256


class ExportVerificationError(RuntimeError):
    """An exported artifact disagrees with the Keras model beyond its tolerance."""


def weights_sha256(model):
    """Hex SHA-256 over a model's weights (order, shapes and float bytes).

    A `.keras` file embeds its save time, so its hash changes between saves of the same weights;
    this one does not, and it also identifies a model that was never written to disk.

    Args:
        model: a Keras model.
    """
    digest = hashlib.sha256()
    for weight in model.weights:
        value = np.ascontiguousarray(keras.ops.convert_to_numpy(weight))
        digest.update(str((weight.path, value.shape, value.dtype.str)).encode())
        digest.update(value.tobytes())
    return digest.hexdigest()


def load_student(path):
    """Load a `.keras` student without its optimizer state.

    The project's model families are imported first so that their registered custom layers
    deserialize.

    Args:
        path: the `.keras` file.
    """
    return keras.saving.load_model(path, compile=False)


def _remove_stale_temporaries(out_dir):
    """Remove `.tmp-*` folders that a killed export left (call with `out_dir`'s lock held)."""
    for stale in out_dir.glob(".tmp-*"):
        if stale.is_dir():
            logger.info("removing %s, left by an interrupted export", stale)
            shutil.rmtree(stale, ignore_errors=True)


def chance_level_warning(evaluation, num_classes):
    """A warning text when the exported model's clean accuracy is no better than chance."""
    if not evaluation or not evaluation.get("clean_accuracy"):
        return None
    accuracy = evaluation["clean_accuracy"].get("keras")
    if accuracy is None or not at_chance_level(accuracy, num_classes, evaluation["n"]):
        return None
    return (f"clean accuracy {accuracy:.4f} on {evaluation['n']} test images is at chance level "
            f"for {num_classes} classes (1/{num_classes} = {1 / num_classes:.4f}): this model "
            "has not learned the task")


def next_version(out_dir):
    """The next free TF Serving version number under `out_dir` (1 when there is none).

    Only all-digit folder names count, as for TF Serving; hidden temporary folders do not.

    Args:
        out_dir: the model's base path.
    """
    out_dir = pathlib.Path(out_dir)
    if not out_dir.is_dir():
        return 1
    versions = [int(p.name) for p in out_dir.iterdir() if p.is_dir() and p.name.isdigit()]
    return max(versions, default=0) + 1


def _image_spec(image_shape, dtype):
    return tf.TensorSpec([None, *image_shape], dtype, name=INPUT_NAME)


def serving_functions(model, image_shape):
    """The two serving functions, keyed by signature name.

    `serving_default` takes `images` uint8 [None, H, W, C] in 0..255 and returns
    `{"probabilities": float32 [N, C], "classes": int64 [N]}`; `logits` takes `images` float32
    [None, H, W, C] in [0, 1] and returns `{"logits": float32 [N, C]}`. A loaded signature already
    rejects a wrong dtype but not a wrong shape (a convolutional network with global pooling runs
    on any image size, and a rank-3 input can abort the process inside the convolution kernel), so
    both functions check the shape in the graph; `logits` also checks the value range.

    Args:
        model: the Keras student.
        image_shape: (H, W, C) of one image.

    Returns:
        {signature name: (python function, input TensorSpec)}.
    """
    batch_shape = [None, *image_shape]

    def serve(images):
        images = tf.ensure_shape(images, batch_shape)
        logits = model(tf.cast(images, tf.float32) / 255.0, training=False)
        return {
            "probabilities": tf.nn.softmax(logits, axis=-1),
            "classes": tf.argmax(logits, axis=-1, output_type=tf.int64),
        }

    def logits(images):
        images = tf.ensure_shape(images, batch_shape)
        in_range = [
            tf.debugging.assert_greater_equal(images, 0.0, message="`images` must be in [0, 1]"),
            tf.debugging.assert_less_equal(images, 1.0, message="`images` must be in [0, 1]"),
        ]
        with tf.control_dependencies(in_range):
            images = tf.identity(images)
        return {"logits": model(images, training=False)}

    return {
        SERVING_SIGNATURE: (serve, _image_spec(image_shape, tf.uint8)),
        LOGITS_SIGNATURE: (logits, _image_spec(image_shape, tf.float32)),
    }


def save_serving_model(model, path, image_shape):
    """Write the student as a SavedModel with the `serving_default` and `logits` signatures.

    Uses `keras.export.ExportArchive` (a tf.Module that tracks the Keras 3 variables): a plain
    `tf.Module` holding the model saves a SavedModel that TensorFlow runs correctly but from which
    the TFLite converter reads uninitialised weights.

    Args:
        model: the Keras student.
        path: the folder to write (a TF Serving version folder).
        image_shape: (H, W, C) of one image.
    """
    archive = keras.export.ExportArchive()
    archive.track(model)
    for name, (fn, spec) in serving_functions(model, image_shape).items():
        archive.add_endpoint(name=name, fn=fn, input_signature=[spec])
    archive.write_out(str(path), verbose=False)


def convert_tflite(model, mode, image_shape, *, representative_x=None, representative_n=200):
    """Convert the student to a TFLite flatbuffer.

    `float` keeps float32 everywhere; `dynamic` quantises weights to int8 and keeps float I/O;
    `int8` quantises weights and activations with ranges calibrated on `representative_x` and has
    int8 input and output. The source is a temporary SavedModel with one plain float32 logits
    endpoint (no in-graph checks, which TFLite has no kernels for).

    Args:
        model: the Keras student.
        mode: "float", "dynamic" or "int8".
        image_shape: (H, W, C) of one image.
        representative_x: calibration images for "int8", uint8 or float in [0, 1]. Default: None.
        representative_n: how many calibration images to use. Default: 200.
    """
    if mode not in ("float", "dynamic", "int8"):
        raise ValueError(f"`mode` must be 'float', 'dynamic' or 'int8'; received mode={mode!r}")
    if mode == "int8" and representative_x is None:
        raise ValueError("`representative_x` is required for mode='int8'; received None")

    with tempfile.TemporaryDirectory(prefix="dgad_tflite_") as source:
        archive = keras.export.ExportArchive()
        archive.track(model)
        archive.add_endpoint(
            name=SERVING_SIGNATURE,
            fn=lambda images: model(images, training=False),
            input_signature=[_image_spec(image_shape, tf.float32)],
        )
        archive.write_out(source, verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(source)
        if mode in ("dynamic", "int8"):
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
        if mode == "int8":
            calibration = to_float_images(representative_x[:representative_n], "representative_x")

            def representative_dataset():
                for image in calibration:
                    yield [image[None]]

            converter.representative_dataset = representative_dataset
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            converter.inference_input_type = tf.int8
            converter.inference_output_type = tf.int8
        return converter.convert()


def _interpreter_class():
    try:
        from ai_edge_litert.interpreter import Interpreter

        return Interpreter, "ai_edge_litert"
    except ImportError:
        return tf.lite.Interpreter, "tf.lite"


class TFLiteRunner:
    """Batched float-in, float-logits-out inference on a TFLite file.

    Quantised inputs and outputs are converted with the file's own scale and zero point, so every
    variant is called the same way. Uses `ai_edge_litert` when installed, else `tf.lite`.

    Args:
        path: the `.tflite` file.
    """

    def __init__(self, path):
        interpreter_class, self.runtime = _interpreter_class()
        with warnings.catch_warnings():
            # tf.lite.Interpreter warns that it is deprecated in favour of ai_edge_litert.
            warnings.simplefilter("ignore", UserWarning)
            self.interpreter = interpreter_class(model_path=str(path), num_threads=2)
        self.input = self.interpreter.get_input_details()[0]
        self.output = self.interpreter.get_output_details()[0]
        self._batch = None

    def io_spec(self):
        """Input and output dtype, shape and quantisation, for the model card."""

        def describe(detail):
            scale, zero_point = detail["quantization"]
            spec = {
                "name": detail["name"],
                "dtype": np.dtype(detail["dtype"]).name,
                "shape": [int(d) for d in detail["shape_signature"]],
            }
            if scale:
                spec["quantization"] = {"scale": float(scale), "zero_point": int(zero_point)}
            return spec

        return {"input": describe(self.input), "output": describe(self.output)}

    def _run(self, x):
        if self._batch != len(x):
            self.interpreter.resize_tensor_input(self.input["index"], [len(x), *x.shape[1:]])
            self.interpreter.allocate_tensors()
            self.input = self.interpreter.get_input_details()[0]
            self.output = self.interpreter.get_output_details()[0]
            self._batch = len(x)
        dtype = np.dtype(self.input["dtype"])
        scale, zero_point = self.input["quantization"]
        if dtype.kind in "iu":
            info = np.iinfo(dtype)
            x = np.clip(np.round(x / scale) + zero_point, info.min, info.max).astype(dtype)
        self.interpreter.set_tensor(self.input["index"], x.astype(dtype, copy=False))
        self.interpreter.invoke()
        out = self.interpreter.get_tensor(self.output["index"])
        scale, zero_point = self.output["quantization"]
        if np.dtype(self.output["dtype"]).kind in "iu":
            return (out.astype(np.float32) - zero_point) * scale
        return out.astype(np.float32)

    def logits(self, x):
        """Logits for float images in [0, 1], batch by batch.

        Args:
            x: float32 [N, H, W, C].
        """
        return np.concatenate(
            [self._run(x[i : i + _BATCH]) for i in range(0, len(x), _BATCH)], axis=0
        )


def to_uint8_images(x, name="x"):
    """Images as uint8 0..255; float input must be in [0, 1] and is rounded to 8 bits.

    Args:
        x: uint8 or float array [N, H, W, C].
        name: argument name for error messages. Default: "x".
    """
    x = np.asarray(x)
    if x.ndim != 4:
        raise ValueError(f"`{name}` must be [N, H, W, C]; received shape {x.shape}")
    if x.dtype == np.uint8:
        return x
    if not np.issubdtype(x.dtype, np.floating):
        raise ValueError(f"`{name}` must be uint8 or float in [0, 1]; received dtype {x.dtype}")
    if x.size and (np.nanmin(x) < 0 or np.nanmax(x) > 1 or np.isnan(x).any()):
        raise ValueError(f"`{name}` must be in [0, 1]; received range [{x.min()}, {x.max()}]")
    return np.round(x * 255.0).astype(np.uint8)


def to_float_images(x, name="x"):
    """Images as float32 in [0, 1] (uint8 is divided by 255).

    Args:
        x: uint8 or float array [N, H, W, C].
        name: argument name for error messages. Default: "x".
    """
    x = np.asarray(x)
    if x.dtype == np.uint8:
        return x.astype(np.float32) / 255.0
    to_uint8_images(x, name)  # validates shape, dtype and range
    return x.astype(np.float32)


def _softmax(logits):
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)


def _keras_logits(model, x):
    return np.concatenate(
        [
            keras.ops.convert_to_numpy(model(x[i : i + _BATCH], training=False))
            for i in range(0, len(x), _BATCH)
        ],
        axis=0,
    ).astype(np.float32)


def _signature_outputs(signature, x, key):
    batches = [
        signature(images=tf.constant(x[i : i + _BATCH]))[key].numpy()
        for i in range(0, len(x), _BATCH)
    ]
    return np.concatenate(batches, axis=0)


def _accuracy(logits_or_classes, labels):
    predicted = logits_or_classes if logits_or_classes.ndim == 1 else logits_or_classes.argmax(-1)
    return float(np.mean(predicted == labels))


def _split_arrays(arrays, name):
    if arrays is None:
        return None, None
    if hasattr(arrays, "x") and hasattr(arrays, "y"):
        x, y = arrays.x, arrays.y
    elif isinstance(arrays, (tuple, list)) and len(arrays) == 2:
        x, y = arrays
    else:
        raise ValueError(
            f"`{name}` must have .x and .y or be an (x, y) pair; received {type(arrays)}"
        )
    y = np.asarray(y).astype(np.int64).reshape(-1)
    if len(y) != len(x):
        raise ValueError(f"`{name}` has {len(x)} images but {len(y)} labels")
    return x, y


def _check_probability_parity(name, reference_logits, logits):
    reference = _softmax(reference_logits)
    probabilities = _softmax(logits)
    return _probability_parity(name, reference, probabilities, reference_logits, logits)


def _probability_parity(
    name, reference_probabilities, probabilities, reference_logits=None, logits=None
):
    tolerance = PROBABILITY_TOLERANCE[name]
    diff = float(np.max(np.abs(reference_probabilities - probabilities)))
    figures = {
        "max_abs_diff_probabilities": diff,
        "tolerance": tolerance,
        "top1_agreement": float(
            np.mean(reference_probabilities.argmax(-1) == probabilities.argmax(-1))
        ),
    }
    if logits is not None:
        figures["max_abs_diff_logits"] = float(np.max(np.abs(reference_logits - logits)))
    if not diff <= tolerance:
        raise ExportVerificationError(
            f"{name}: max abs difference of probabilities {diff:.3g} exceeds {tolerance:g}"
        )
    return figures


def _check_top1_agreement(name, reference_logits, logits):
    threshold = MIN_TOP1_AGREEMENT[name]
    agreement = float(np.mean(reference_logits.argmax(-1) == logits.argmax(-1)))
    if not agreement >= threshold:
        raise ExportVerificationError(
            f"{name}: top-1 agreement with the float model {agreement:.4f} is below {threshold:g}"
        )
    return {
        "top1_agreement": agreement,
        "min_top1_agreement": threshold,
        "max_abs_diff_logits": float(np.max(np.abs(reference_logits - logits))),
    }


def _pgd_adversarial(model, x, labels, eps, seed):
    from dgad_tf.attacks import pgd_ce

    def model_fn(images):
        return model(images, training=False)

    batches = []
    for i in range(0, len(x), _BATCH):
        x_adv = pgd_ce(
            model_fn,
            tf.constant(x[i : i + _BATCH]),
            tf.constant(labels[i : i + _BATCH]),
            eps=eps,
            steps=20,
            seed=seed,
        )
        batches.append(keras.ops.convert_to_numpy(x_adv).astype(np.float32))
    return np.concatenate(batches, axis=0)


def _autoattack(model, x, labels, eps, seed):
    from dgad_tf.autoattack import run_autoattack

    result = run_autoattack(
        lambda images: model(images, training=False),
        tf.constant(x),
        tf.constant(labels),
        eps=eps,
        version="standard",
        seed=seed,
    )
    return {
        "status": "ok",
        "version": "standard",
        "robust_accuracy": float(result["robust_accuracy"]),
    }


def _saved_model_spec(image_shape, num_classes):
    batch_shape = [None, *image_shape]
    return {
        "path": ".",
        "tag_set": "serve",
        "signatures": {
            SERVING_SIGNATURE: {
                "inputs": {INPUT_NAME: {"dtype": "uint8", "shape": batch_shape, "range": [0, 255]}},
                "outputs": {
                    "probabilities": {"dtype": "float32", "shape": [None, num_classes]},
                    "classes": {"dtype": "int64", "shape": [None]},
                },
            },
            LOGITS_SIGNATURE: {
                "inputs": {INPUT_NAME: {"dtype": "float32", "shape": batch_shape, "range": [0, 1]}},
                "outputs": {"logits": {"dtype": "float32", "shape": [None, num_classes]}},
            },
        },
    }


def _validate_formats(formats):
    if isinstance(formats, str):
        formats = [f.strip() for f in formats.split(",") if f.strip()]
    formats = tuple(dict.fromkeys(formats))
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise ValueError(f"`formats` must be a non-empty subset of {FORMATS}; received {formats}")
    return formats


def export_student(
    model_or_path,
    out_dir,
    *,
    version=None,
    formats=FORMATS,
    representative_x=None,
    eval_arrays=None,
    eps=8 / 255,
    source_run=None,
    config_hash=None,
    class_names=None,
    autoattack=False,
    parity_n=256,
    representative_n=200,
    seed=0,
):
    """Export a student for TF Serving and TFLite, verify every artifact, write a model card.

    The version folder `out_dir/<version>` appears only when every requested artifact has been
    written, re-loaded and checked against the Keras model on a fixed batch (the first `parity_n`
    evaluation images, else calibration images, else seeded uniform noise). A failed check raises
    `ExportVerificationError` and removes the temporary folder; earlier versions are untouched.

    Args:
        model_or_path: a Keras model, a `.keras` file or a run directory.
        out_dir: the TF Serving base path, e.g. `export/<name>`.
        version: the version number; an existing one is an error. Default: None (next free).
        formats: subset of `FORMATS` (tuple or comma-separated string). Default: all four.
        representative_x: training images for int8 calibration (uint8 or float in [0, 1]);
            required for "tflite_int8". Default: None.
        eval_arrays: test split (`.x`, `.y`, or an (x, y) pair) for the accuracies in the model
            card; already cut to the number of points to evaluate. Default: None (no accuracies).
        eps: L-inf radius for PGD-20 and AutoAttack, in pixel units. Default: 8/255.
        source_run: run directory recorded as the source. Default: None (the folder of the
            `.keras` file when it holds a `config.yaml`).
        config_hash: SHA-256 of the resolved config. Default: None (hash of `config.yaml` in
            the run directory when there is one).
        class_names: names of the classes for the card. Default: None.
        autoattack: also run AutoAttack (standard) on the float model; slow. Default: False.
        parity_n: size of the parity batch. Default: 256.
        representative_n: calibration images used for int8. Default: 200.
        seed: seed for the attacks and the noise parity batch. Default: 0.

    Returns:
        The model card (also written to `out_dir/<version>/model_card.json`).

    Example:
        card = export_student("runs/quickstart", "export/digits_student",
                              representative_x=splits.train.x, eval_arrays=splits.test)
    """
    formats = _validate_formats(formats)
    if not 0 <= eps <= 1:
        raise ValueError(f"`eps` must be in [0, 1]; received eps={eps}")
    if parity_n < 1:
        raise ValueError(f"`parity_n` must be >= 1; received parity_n={parity_n}")
    if "tflite_int8" in formats and representative_x is None:
        raise ValueError("`representative_x` is required for format 'tflite_int8'; received None")
    if version is not None:
        if isinstance(version, bool) or not isinstance(version, (int, np.integer)) or version < 1:
            raise ValueError(f"`version` must be a positive integer; received version={version!r}")
        version = int(version)

    model_path = None
    if isinstance(model_or_path, keras.Model):
        model = model_or_path
    else:
        model_path = resolve_model_path(model_or_path)
        if source_run is None and (model_path.parent / "config.yaml").is_file():
            source_run = model_path.parent
        model = load_student(model_path)
    config_path = None
    if source_run is not None and (pathlib.Path(source_run) / "config.yaml").is_file():
        config_path = pathlib.Path(source_run) / "config.yaml"
        if config_hash is None:
            config_hash = sha256_file(config_path)

    input_shape = tuple(model.input_shape)
    if len(input_shape) != 4 or any(d is None for d in input_shape[1:]):
        raise ValueError(f"the student's input must be [N, H, W, C]; received {input_shape}")
    image_shape = tuple(int(d) for d in input_shape[1:])

    eval_x, eval_y = _split_arrays(eval_arrays, "eval_arrays")
    if eval_x is not None:
        eval_x = to_uint8_images(eval_x, "eval_arrays.x")
    if representative_x is not None:
        representative_x = to_uint8_images(representative_x, "representative_x")
    for name, x in (("eval_arrays.x", eval_x), ("representative_x", representative_x)):
        if x is not None and tuple(x.shape[1:]) != image_shape:
            raise ValueError(
                f"`{name}` images must be {image_shape} like the student's input; "
                f"received {tuple(x.shape[1:])}"
            )

    if eval_x is not None and len(eval_x):
        parity_u8 = eval_x[:parity_n]
    elif representative_x is not None and len(representative_x):
        parity_u8 = representative_x[:parity_n]
    else:
        rng = np.random.default_rng(seed)
        parity_u8 = rng.integers(0, 256, size=(parity_n, *image_shape), dtype=np.uint8)
    parity_x = parity_u8.astype(np.float32) / 255.0
    reference_logits = _keras_logits(model, parity_x)
    if reference_logits.ndim != 2:
        raise ValueError(
            f"the student must output logits [N, C]; received {reference_logits.shape}"
        )
    num_classes = int(reference_logits.shape[-1])

    out_dir = ensure_writable_folder(out_dir, "`out_dir`")
    # One exporter per base path: the version number is chosen and taken under the lock, and a
    # temporary folder left by a killed export is ours to remove.
    with FolderLock(out_dir, "export folder"):
        _remove_stale_temporaries(out_dir)
        if version is None:
            version = next_version(out_dir)
        final_dir = out_dir / str(version)
        if final_dir.exists():
            raise ValueError(f"`version` {version} already exists in {str(out_dir)!r}")

        # TF Serving only looks at all-digit folder names, so the hidden temporary folder is
        # invisible to a server watching out_dir while it is being written.
        tmp_dir = pathlib.Path(tempfile.mkdtemp(prefix=f".tmp-{version}-", dir=out_dir))
        try:
            # mkdtemp makes the folder private (0700); a server in a container runs as another
            # user.
            os.chmod(tmp_dir, 0o755)
            card = _build_and_verify(
                model,
                tmp_dir,
                formats=formats,
                image_shape=image_shape,
                num_classes=num_classes,
                parity_u8=parity_u8,
                reference_logits=reference_logits,
                representative_x=representative_x,
                representative_n=representative_n,
                eval_x=eval_x,
                eval_y=eval_y,
                eps=eps,
                autoattack=autoattack,
                seed=seed,
            )
            card.update(
                {
                    "name": out_dir.name,
                    "version": version,
                    "created_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(),
                    "source": {
                        "run": None if source_run is None else str(source_run),
                        "model_path": None if model_path is None else str(model_path),
                        "model_sha256": None if model_path is None else sha256_file(model_path),
                        "weights_sha256": weights_sha256(model),
                        "config_path": None if config_path is None else str(config_path),
                        "config_sha256": config_hash,
                    },
                    "input": {
                        "image_shape": list(image_shape),
                        "num_classes": num_classes,
                        "class_names": None if class_names is None
                        else [str(c) for c in class_names],
                        "pixels": "float32 in [0, 1] for the Keras model, the `logits` signature "
                        "and the float/dynamic TFLite models; uint8 0..255 for "
                        "`serving_default`; normalisation is inside the model",
                    },
                    "versions": {
                        "tensorflow": tf.__version__,
                        "keras": keras.__version__,
                    },
                }
            )
            card["versions"]["dgad_tf"] = dgad_tf.__version__
            warning = chance_level_warning(card.get("evaluation"), num_classes)
            if warning:
                card["warnings"] = [warning]
                logger.warning("%s", warning)
            (tmp_dir / MODEL_CARD).write_text(json.dumps(card, indent=2, sort_keys=True) + "\n")
            if final_dir.exists():
                raise FileExistsError(
                    f"version folder {str(final_dir)!r} appeared during the export")
            os.rename(tmp_dir, final_dir)
        except BaseException:
            shutil.rmtree(tmp_dir, ignore_errors=True)
            raise
    logger.info("exported %s version %d: %s", out_dir, version, ", ".join(formats))
    return card


def _build_and_verify(
    model,
    tmp_dir,
    *,
    formats,
    image_shape,
    num_classes,
    parity_u8,
    reference_logits,
    representative_x,
    representative_n,
    eval_x,
    eval_y,
    eps,
    autoattack,
    seed,
):
    """Write each artifact into `tmp_dir`, re-load it, check parity and evaluate it."""
    parity_x = parity_u8.astype(np.float32) / 255.0
    evaluate = eval_x is not None and len(eval_x) > 0
    eval_xf = eval_x.astype(np.float32) / 255.0 if evaluate else None
    artifacts, parity = {}, {"n": int(len(parity_u8))}
    clean, robust, transfer = {}, {}, {}

    x_adv = None
    if evaluate:
        clean["keras"] = _accuracy(_keras_logits(model, eval_xf), eval_y)
        x_adv = _pgd_adversarial(model, eval_xf, eval_y, eps, seed)
        if x_adv is not None:
            robust["keras"] = _accuracy(_keras_logits(model, x_adv), eval_y)

    if "saved_model" in formats:
        save_serving_model(model, tmp_dir, image_shape)
        loaded = tf.saved_model.load(str(tmp_dir))
        serve = loaded.signatures[SERVING_SIGNATURE]
        logits_signature = loaded.signatures[LOGITS_SIGNATURE]
        probabilities = _signature_outputs(serve, parity_u8, "probabilities")
        classes = _signature_outputs(serve, parity_u8, "classes")
        sm_logits = _signature_outputs(logits_signature, parity_x, "logits")
        figures = _probability_parity(
            "saved_model", _softmax(reference_logits), probabilities
        )
        figures["logits_signature"] = _check_probability_parity(
            "saved_model", reference_logits, sm_logits
        )
        figures["classes_match_argmax"] = bool(np.all(classes == probabilities.argmax(-1)))
        if not figures["classes_match_argmax"]:
            raise ExportVerificationError(
                "saved_model: `classes` differs from argmax(probabilities)"
            )
        parity["saved_model"] = figures
        artifacts["saved_model"] = _saved_model_spec(image_shape, num_classes)
        if evaluate:
            clean["saved_model"] = _accuracy(_signature_outputs(serve, eval_x, "classes"), eval_y)
            if x_adv is not None:
                robust["saved_model"] = _accuracy(
                    _signature_outputs(logits_signature, x_adv, "logits"), eval_y
                )

    float_logits = reference_logits
    tflite_modes = {"tflite_float": "float", "tflite_dynamic": "dynamic", "tflite_int8": "int8"}
    for name, mode in tflite_modes.items():
        if name not in formats:
            continue
        path = tmp_dir / TFLITE_FILES[name]
        path.write_bytes(
            convert_tflite(
                model,
                mode,
                image_shape,
                representative_x=representative_x,
                representative_n=representative_n,
            )
        )
        runner = TFLiteRunner(path)
        logits = runner.logits(parity_x)
        if name == "tflite_float":
            parity[name] = _check_probability_parity(name, reference_logits, logits)
        else:
            parity[name] = _check_top1_agreement(name, float_logits, logits)
        artifacts[name] = {
            "path": TFLITE_FILES[name],
            "runtime": runner.runtime,
            "io": "int8 input and output" if mode == "int8" else "float32 input and output",
            **runner.io_spec(),
        }
        if evaluate:
            clean[name] = _accuracy(runner.logits(eval_xf), eval_y)
            if x_adv is not None:
                transfer[name] = _accuracy(runner.logits(x_adv), eval_y)

    evaluation = None
    if evaluate:
        evaluation = {
            "split": "test",
            "n": int(len(eval_x)),
            "eps": float(eps),
            "clean_accuracy": clean,
            "attack": "PGD-20, cross-entropy, white-box against the float Keras model",
            "robust_accuracy_pgd20": robust if x_adv is not None else None,
            "transfer_accuracy_pgd20": transfer if x_adv is not None else None,
            "autoattack": _autoattack(model, eval_xf, eval_y, eps, seed) if autoattack else None,
        }
    return {"format": 1, "artifacts": artifacts, "parity": parity, "evaluation": evaluation}

"""Deployable students: TF Serving SavedModels and TFLite files that verify themselves.

`export_student` turns a trained Keras student (input float32 [N, H, W, C] in [0, 1], output
logits [N, C], normalisation inside the model) into a numbered version folder that TF Serving can
load directly, plus TFLite variants, and writes a `model_card.json` beside them. The formats are
the entries of `EXPORT_FORMATS` (`formats.py`); the default ones are `FORMATS`.

Every artifact is re-loaded from disk and checked against the Keras model on a fixed batch with
its format's parity rule before the version folder appears: the SavedModel's probabilities within
1e-5, the float TFLite model's within 1e-4, the float16-weight one's within 1e-2, and the
quantised TFLite models must agree with the float model's top-1 class on at least 98% of the
batch. Everything is written into a hidden temporary folder beside the version
folder and renamed into place only after every check passed, so a failed export leaves no
half-written version for TF Serving to pick up.

Layout of one export (`out_dir` is the TF Serving base path):

    out_dir/<version>/saved_model.pb, variables/, assets/, fingerprint.pb
    out_dir/<version>/model_float32.tflite, model_dynamic_range.tflite, model_int8.tflite
    out_dir/<version>/model_float16.tflite (only when asked for: not a default format)
    out_dir/<version>/model_card.json

The full-integer TFLite model has int8 input and int8 output; its quantisation parameters are in
the model card (`artifacts.tflite_int8.input.quantization`): feed `round(x / scale) + zero_point`
for pixels x in [0, 1] and read logits as `(q - zero_point) * scale`.

The package: `formats` (`ExportFormat`, the parity rules and the `EXPORT_FORMATS` table),
`savedmodel` (the signatures, how the SavedModel is written, its format), `tflite` (conversion,
`TFLiteRunner`, the TFLite formats), `verify` (writes, re-loads and checks each format, and the
card's accuracies), `disk_space` (the space an export needs, `ExportDiskFull`); `export_student`
here runs them under the export folder's lock and writes the model card.
"""

import datetime
import hashlib
import json
import logging
import os
import pathlib
import shutil
import tempfile

import keras
import numpy as np
import tensorflow as tf

import dgad_tf
import dgad_tf.models
from dgad_tf.data import to_float, to_float_images, to_uint8_images
from dgad_tf.rundir import FolderLock, ensure_writable_folder, resolve_model_path, sha256_file
from dgad_tf.serving import verify
from dgad_tf.serving.disk_space import (
    ExportDiskFull,
    disk_full_error,
    estimated_export_bytes,
    is_disk_full,
)
from dgad_tf.serving.formats import (
    EXPORT_FORMATS,
    ExportFormat,
    ExportInputs,
    ExportVerificationError,
    ProbabilityTolerance,
    Top1Agreement,
    default_formats,
    register_export_format,
)
from dgad_tf.serving.savedmodel import (
    INPUT_NAME,
    LOGITS_SIGNATURE,
    SERVING_SIGNATURE,
    save_serving_model,
    serving_functions,
)
from dgad_tf.serving.tflite import TFLiteRunner, convert_tflite, register_tflite_format
from dgad_tf.serving.verify import chance_level_warning

__all__ = [
    "EXPORT_FORMATS",
    "FORMATS",
    "INPUT_NAME",
    "LOGITS_SIGNATURE",
    "MODEL_CARD",
    "SERVING_SIGNATURE",
    "ExportDiskFull",
    "ExportFormat",
    "ExportInputs",
    "ExportVerificationError",
    "ProbabilityTolerance",
    "TFLiteRunner",
    "Top1Agreement",
    "chance_level_warning",
    "check_formats",
    "estimated_export_bytes",
    "convert_tflite",
    "default_formats",
    "export_student",
    "load_student",
    "next_version",
    "register_export_format",
    "register_tflite_format",
    "save_serving_model",
    "serving_functions",
    "to_float_images",
    "to_uint8_images",
    "weights_sha256",
]

logger = logging.getLogger(__name__)

# The built-in default formats (`default_formats()` also counts ones registered later).
FORMATS = default_formats()
MODEL_CARD = "model_card.json"


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
    """Load a `.keras` student without its optimizer state, as it trained (`models.load_model`).

    Args:
        path: the `.keras` file.
    """
    return dgad_tf.models.load_model(path)


def _remove_stale_temporaries(out_dir):
    """Remove `.tmp-*` folders that a killed export left (call with `out_dir`'s lock held)."""
    for stale in out_dir.glob(".tmp-*"):
        if stale.is_dir():
            logger.info("removing %s, left by an interrupted export", stale)
            shutil.rmtree(stale, ignore_errors=True)


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


def check_formats(formats, key="formats", error=ValueError):
    """`formats` as a tuple of registered export formats, without repeats.

    Args:
        formats: names, a tuple or a comma-separated string.
        key: the argument or config key they came from, for the message. Defaults to "formats".
        error: the exception class raised. Defaults to ValueError.

    Raises:
        error: naming `key`, what was received and the registered formats, for an unknown name
            or none at all.
    """
    if isinstance(formats, str):
        formats = formats.split(",")
    formats = tuple(dict.fromkeys(str(f).strip() for f in formats if str(f).strip()))
    unknown = [f for f in formats if f not in EXPORT_FORMATS]
    if unknown or not formats:
        raise error(
            f"`{key}` must be a non-empty subset of the export formats "
            f"{', '.join(EXPORT_FORMATS.names())}; received {key}={list(formats)!r}"
        )
    return formats


def export_student(
    model_or_path,
    out_dir,
    *,
    version=None,
    formats=None,
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
    So does a full disk, raising `ExportDiskFull` (an `OSError`, errno ENOSPC) that names the
    disk, the space the export needs (`estimated_export_bytes`) and the space free.

    Args:
        model_or_path: a Keras model, a `.keras` file or a run directory.
        out_dir: the TF Serving base path, e.g. `export/<name>`.
        version: the version number; an existing one is an error. Defaults to None (next free).
        formats: names of `EXPORT_FORMATS` (tuple or comma-separated string). Defaults to None
            (the default formats, `default_formats()`: all but tflite_float16).
        representative_x: training images for int8 calibration (uint8 or float in [0, 1]);
            required for a format that calibrates, "tflite_int8". Defaults to None.
        eval_arrays: test split (`.x`, `.y`, or an (x, y) pair) for the accuracies in the model
            card; already cut to the number of points to evaluate. Defaults to None (no accuracies).
        eps: L-inf radius for PGD-20 and AutoAttack, in pixel units. Defaults to 8/255.
        source_run: run directory recorded as the source. Defaults to None (the folder of the
            `.keras` file when it holds a `config.yaml`).
        config_hash: SHA-256 of the resolved config. Defaults to None (hash of `config.yaml` in
            the run directory when there is one).
        class_names: names of the classes for the card. Defaults to None.
        autoattack: also run AutoAttack (standard) on the float model; slow. Defaults to False.
        parity_n: size of the parity batch. Defaults to 256.
        representative_n: calibration images used for int8. Defaults to 200.
        seed: seed for the attacks and the noise parity batch. Defaults to 0.

    Returns:
        The model card (also written to `out_dir/<version>/model_card.json`).

    Example:
        card = export_student("runs/quickstart", "export/digits_student",
                              representative_x=splits.train.x, eval_arrays=splits.test)
    """
    formats = check_formats(default_formats() if formats is None else formats)
    if not 0 <= eps <= 1:
        raise ValueError(f"`eps` must be in [0, 1]; received eps={eps}")
    if parity_n < 1:
        raise ValueError(f"`parity_n` must be >= 1; received parity_n={parity_n}")
    for name in formats:
        if EXPORT_FORMATS.get(name).needs_representative_data and representative_x is None:
            raise ValueError(f"`representative_x` is required for format {name!r}; received None")
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
    reference_logits = verify.keras_logits(model, to_float(parity_u8))
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
            card = verify.build_and_verify(
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
                        "class_names": None
                        if class_names is None
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
                    f"version folder {str(final_dir)!r} appeared during the export"
                )
            os.rename(tmp_dir, final_dir)
        except BaseException as err:
            shutil.rmtree(tmp_dir, ignore_errors=True)
            if is_disk_full(err):
                raise disk_full_error(err, out_dir, model, formats) from err
            raise
    logger.info("exported %s version %d: %s", out_dir, version, ", ".join(formats))
    return card

"""TFLite variants of the student: conversion, a batched runner, and their export formats.

Each variant is a converter setting registered as an export format by `register_tflite_format`:
`tflite_float` keeps float32 everywhere, `tflite_dynamic` quantises the weights to int8,
`tflite_int8` quantises weights and activations (int8 input and output), `tflite_float16` stores
the weights as float16. `TFLiteRunner` hides the (de)quantisation, so every variant is called with
float images in [0, 1] and returns float logits, and one writer, loader and card entry serve all.
"""

import dataclasses
import tempfile
import warnings
from typing import Callable

import keras
import numpy as np
import tensorflow as tf

from dgad_tf.data import to_float, to_float_images
from dgad_tf.serving.formats import (
    ExportFormat,
    ProbabilityTolerance,
    Top1Agreement,
    register_export_format,
)
from dgad_tf.serving.savedmodel import BATCH, SERVING_SIGNATURE, image_spec


@dataclasses.dataclass(frozen=True)
class TFLiteMode:
    """One converter setting: `configure(converter, calibration)` sets it up.

    Args:
        configure: sets the converter's options; `calibration` is float images in [0, 1] (or
            None when the mode needs none).
        io: the card's `io` text, e.g. "float32 input and output".
        needs_representative_data: the converter calibrates on images. Defaults to False.
    """

    configure: Callable
    io: str
    needs_representative_data: bool = False


# Conversion modes by name ("float", "int8", ...), filled by `register_tflite_format`.
TFLITE_MODES: dict[str, TFLiteMode] = {}


def convert_tflite(model, mode, image_shape, *, representative_x=None, representative_n=200):
    """Convert the student to a TFLite flatbuffer with the converter setting `mode`.

    The source is a temporary SavedModel with one plain float32 logits endpoint (no in-graph
    checks, which TFLite has no kernels for).

    Args:
        model: the Keras student.
        mode: a name of `TFLITE_MODES`: "float", "dynamic", "int8" or "float16".
        image_shape: (H, W, C) of one image.
        representative_x: calibration images for "int8", uint8 or float in [0, 1]. Defaults to None.
        representative_n: how many calibration images to use. Defaults to 200.
    """
    if mode not in TFLITE_MODES:
        raise ValueError(
            f"`mode` must be one of {', '.join(map(repr, TFLITE_MODES))}; received mode={mode!r}"
        )
    setting = TFLITE_MODES[mode]
    calibration = None
    if setting.needs_representative_data:
        if representative_x is None:
            raise ValueError(f"`representative_x` is required for mode={mode!r}; received None")
        calibration = to_float_images(representative_x[:representative_n], "representative_x")

    with tempfile.TemporaryDirectory(prefix="dgad_tflite_") as source:
        archive = keras.export.ExportArchive()
        archive.track(model)
        archive.add_endpoint(
            name=SERVING_SIGNATURE,
            fn=lambda images: model(images, training=False),
            input_signature=[image_spec(image_shape, tf.float32)],
        )
        archive.write_out(source, verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(source)
        setting.configure(converter, calibration)
        return converter.convert()


def register_tflite_format(
    name, mode, file, configure, *, io="float32 input and output", parity, weight_copies,
    needs_representative_data=False, default=True,
):  # fmt: skip
    """Register a TFLite converter setting as the export format `name`, written to `file`.

    Args:
        name: the export format, e.g. "tflite_float16".
        mode: the conversion mode `convert_tflite` knows it by, e.g. "float16".
        file: the file name in the version folder.
        configure: `configure(converter, calibration)` (see `TFLiteMode`).
        io: the card's `io` text. Defaults to "float32 input and output".
        parity: the parity rule (see `ExportFormat`).
        weight_copies: bytes written per float32 byte of the weights.
        needs_representative_data: calibrates on images. Defaults to False.
        default: exported when no formats are named. Defaults to True.
    """
    if mode in TFLITE_MODES:
        raise ValueError(f"TFLite mode {mode!r} is already registered")
    TFLITE_MODES[mode] = TFLiteMode(configure, io, needs_representative_data)

    def write(model, path, inputs):
        # `convert_tflite` is looked up when called, so a test may replace it.
        path.write_bytes(
            convert_tflite(
                model,
                mode,
                inputs.image_shape,
                representative_x=inputs.representative_x,
                representative_n=inputs.representative_n,
            )
        )

    def describe(runner, path, inputs):
        return {"path": file, "runtime": runner.runtime, "io": io, **runner.io_spec()}

    return register_export_format(
        name,
        ExportFormat(
            path=file,
            write=write,
            load=TFLiteRunner,
            parity=parity,
            describe=describe,
            weight_copies=weight_copies,
            needs_representative_data=needs_representative_data,
            default=default,
        ),
    )


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

    def classes(self, x):
        """Predicted classes for uint8 images.

        Args:
            x: uint8 [N, H, W, C].
        """
        return self.logits(to_float(x)).argmax(-1)

    def logits(self, x):
        """Logits for float images in [0, 1], batch by batch.

        Args:
            x: float32 [N, H, W, C].
        """
        return np.concatenate(
            [self._run(x[i : i + BATCH]) for i in range(0, len(x), BATCH)], axis=0
        )


# --- the formats: a converter setting each, then its registration ---------------------------


def _float32(converter, calibration):
    """No optimisation: float32 weights, activations, input and output."""


def _dynamic_range(converter, calibration):
    """int8 weights, float activations and I/O."""
    converter.optimizations = [tf.lite.Optimize.DEFAULT]


def _full_int8(converter, calibration):
    """int8 weights and activations with ranges calibrated on `calibration`, int8 I/O."""

    def representative_dataset():
        for image in calibration:
            yield [image[None]]

    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = representative_dataset
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.int8
    converter.inference_output_type = tf.int8


# A float TFLite model holds one float32 copy of the weights, a quantised one a quarter.
register_tflite_format(
    "tflite_float", "float", "model_float32.tflite", _float32,
    parity=ProbabilityTolerance(1e-4), weight_copies=1.0,
)  # fmt: skip
register_tflite_format(
    "tflite_dynamic", "dynamic", "model_dynamic_range.tflite", _dynamic_range,
    parity=Top1Agreement(0.98), weight_copies=0.25,
)  # fmt: skip
register_tflite_format(
    "tflite_int8", "int8", "model_int8.tflite", _full_int8, io="int8 input and output",
    parity=Top1Agreement(0.98), weight_copies=0.25, needs_representative_data=True,
)  # fmt: skip


# float16 weights (half the float file), dequantised to float32 when the model loads on CPU, so
# it computes in float32 with weights rounded to float16 (relative error <= 2**-11): its
# probabilities stay within FLOAT16_TOLERANCE of the Keras model's (see docs/export.md).
FLOAT16_TOLERANCE = 1e-2


def _float16_weights(converter, calibration):
    """float16 weights, float32 activations, input and output."""
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.target_spec.supported_types = [tf.float16]


register_tflite_format(
    "tflite_float16", "float16", "model_float16.tflite", _float16_weights,
    parity=ProbabilityTolerance(FLOAT16_TOLERANCE), weight_copies=0.5, default=False,
)  # fmt: skip

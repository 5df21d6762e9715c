"""TFLite variants of the student: conversion and a batched runner for any of them.

`float` keeps float32 everywhere, `dynamic` quantises the weights, `int8` quantises weights and
activations (int8 input and output). `TFLiteRunner` hides the (de)quantisation, so every variant
is called with float images in [0, 1] and returns float logits.
"""

import tempfile
import warnings

import keras
import numpy as np
import tensorflow as tf

from dgad_tf.data import to_float_images
from dgad_tf.serving.savedmodel import BATCH, SERVING_SIGNATURE, image_spec

TFLITE_FILES = {
    "tflite_float": "model_float32.tflite",
    "tflite_dynamic": "model_dynamic_range.tflite",
    "tflite_int8": "model_int8.tflite",
}
# The export format of each conversion mode.
TFLITE_MODES = {"tflite_float": "float", "tflite_dynamic": "dynamic", "tflite_int8": "int8"}


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
        representative_x: calibration images for "int8", uint8 or float in [0, 1]. Defaults to None.
        representative_n: how many calibration images to use. Defaults to 200.
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
            input_signature=[image_spec(image_shape, tf.float32)],
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
            [self._run(x[i : i + BATCH]) for i in range(0, len(x), BATCH)], axis=0
        )

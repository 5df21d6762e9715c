"""The TF Serving SavedModel: its two signatures, how it is written and how it is described.

`serving_default` takes uint8 images and returns probabilities and classes; `logits` takes float
images in [0, 1] and returns logits. `saved_model_spec` is the card's description of both. The
module registers the `saved_model` export format.
"""

import keras
import numpy as np
import tensorflow as tf

from dgad_tf.data import to_float
from dgad_tf.serving.formats import (
    ExportFormat,
    ExportVerificationError,
    ProbabilityTolerance,
    register_export_format,
    softmax,
)

SERVING_SIGNATURE = "serving_default"
LOGITS_SIGNATURE = "logits"
INPUT_NAME = "images"
# Images per call when an exported artifact is run on many images.
BATCH = 256


def image_spec(image_shape, dtype):
    """The `images` input spec: [None, H, W, C] of `dtype`."""
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
        SERVING_SIGNATURE: (serve, image_spec(image_shape, tf.uint8)),
        LOGITS_SIGNATURE: (logits, image_spec(image_shape, tf.float32)),
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


def signature_outputs(signature, x, key):
    """Output `key` of a loaded signature on `x`, BATCH images per call.

    Args:
        signature: a loaded SavedModel signature (called with `images=`).
        x: the images, of the signature's input dtype.
        key: the output to keep, e.g. "logits".
    """
    batches = [
        signature(images=tf.constant(x[i : i + BATCH]))[key].numpy()
        for i in range(0, len(x), BATCH)
    ]
    return np.concatenate(batches, axis=0)


def saved_model_spec(image_shape, num_classes):
    """The model card's description of the SavedModel's signatures."""
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


class SavedModelArtifact:
    """The written SavedModel re-loaded with `tf.saved_model.load`, called through its signatures.

    Args:
        path: the SavedModel folder.
    """

    def __init__(self, path):
        self.loaded = tf.saved_model.load(str(path))
        self.serve = self.loaded.signatures[SERVING_SIGNATURE]
        self.logits_signature = self.loaded.signatures[LOGITS_SIGNATURE]

    def logits(self, x):
        """The `logits` signature on float images in [0, 1]."""
        return signature_outputs(self.logits_signature, x, "logits")

    def classes(self, x):
        """The `serving_default` signature's classes on uint8 images."""
        return signature_outputs(self.serve, x, "classes")


def _write(model, path, inputs):
    save_serving_model(model, path, inputs.image_shape)


def _check(fmt, artifact, parity_u8, reference_logits):
    """Both signatures within the tolerance, and `classes` the argmax of `probabilities`."""
    probabilities = signature_outputs(artifact.serve, parity_u8, "probabilities")
    classes = artifact.classes(parity_u8)
    figures = fmt.parity.check_probabilities(
        "saved_model", softmax(reference_logits), probabilities
    )
    figures["logits_signature"] = fmt.parity.check(
        "saved_model", reference_logits, artifact.logits(to_float(parity_u8))
    )
    figures["classes_match_argmax"] = bool(np.all(classes == probabilities.argmax(-1)))
    if not figures["classes_match_argmax"]:
        raise ExportVerificationError("saved_model: `classes` differs from argmax(probabilities)")
    return figures


register_export_format(
    "saved_model",
    ExportFormat(
        path=".",
        write=_write,
        load=SavedModelArtifact,
        parity=ProbabilityTolerance(1e-5),
        describe=lambda artifact, path, inputs: saved_model_spec(
            inputs.image_shape, inputs.num_classes
        ),
        # its variables hold two float32 copies of the weights (measured on the small-cnn
        # student: variables 534 kB for 265 kB of weights)
        weight_copies=2.0,
        white_box=True,
        check=_check,
    ),
)

"""Checks and figures of the exported artifacts, each re-loaded from disk.

`build_and_verify` writes every requested artifact, re-loads it and compares it with the Keras
model on the parity batch (probabilities within `PROBABILITY_TOLERANCE`, quantised top-1 within
`MIN_TOP1_AGREEMENT`), raising `ExportVerificationError` on a miss; with evaluation data it also
scores each artifact. The adversarial images come from `dgad_tf.robustness.adversarial_images`:
PGD-20 white-box on the float Keras model, then the same images scored by every artifact (for the
TFLite models that is a transfer attack).
"""

import keras
import numpy as np
import tensorflow as tf

from dgad_tf.data import to_float
from dgad_tf.robustness import adversarial_images, evaluate_robustness
from dgad_tf.serving import tflite
from dgad_tf.serving.savedmodel import (
    BATCH,
    LOGITS_SIGNATURE,
    SERVING_SIGNATURE,
    save_serving_model,
    saved_model_spec,
    signature_outputs,
)
from dgad_tf.stats import at_chance_level

# Max abs difference of softmax probabilities against the Keras model on the parity batch.
PROBABILITY_TOLERANCE = {"saved_model": 1e-5, "tflite_float": 1e-4}
# Minimum fraction of the parity batch on which a quantised model keeps the float top-1 class.
MIN_TOP1_AGREEMENT = {"tflite_dynamic": 0.98, "tflite_int8": 0.98}
# AutoAttack's batch for the card: 500, run_autoattack's default until the evaluations shared
# one (256); the card's figure has always used 500.
AUTOATTACK_BATCH = 500


class ExportVerificationError(RuntimeError):
    """An exported artifact disagrees with the Keras model beyond its tolerance."""


def chance_level_warning(evaluation, num_classes):
    """A warning text when the exported model's clean accuracy is no better than chance."""
    if not evaluation or not evaluation.get("clean_accuracy"):
        return None
    accuracy = evaluation["clean_accuracy"].get("keras")
    if accuracy is None or not at_chance_level(accuracy, num_classes, evaluation["n"]):
        return None
    return (
        f"clean accuracy {accuracy:.4f} on {evaluation['n']} test images is at chance level "
        f"for {num_classes} classes (1/{num_classes} = {1 / num_classes:.4f}): this model "
        "has not learned the task"
    )


def _softmax(logits):
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)


def keras_logits(model, x):
    """The Keras model's float32 logits on float images `x`, BATCH images per call."""
    return np.concatenate(
        [
            keras.ops.convert_to_numpy(model(x[i : i + BATCH], training=False))
            for i in range(0, len(x), BATCH)
        ],
        axis=0,
    ).astype(np.float32)


def _accuracy(logits_or_classes, labels):
    predicted = logits_or_classes if logits_or_classes.ndim == 1 else logits_or_classes.argmax(-1)
    return float(np.mean(predicted == labels))


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


def _autoattack(model, x, labels, eps, seed):
    report = evaluate_robustness(
        model, x, labels, attacks=("autoattack",), eps=eps, batch_size=AUTOATTACK_BATCH, seed=seed
    )
    return {
        "status": "ok",
        "version": "standard",
        "robust_accuracy": report["attacks"]["autoattack"]["robust_accuracy"],
    }


def _verify_saved_model(model, tmp_dir, image_shape, parity_u8, reference_logits):
    """Write and re-load the SavedModel; returns (loaded, parity figures)."""
    save_serving_model(model, tmp_dir, image_shape)
    loaded = tf.saved_model.load(str(tmp_dir))
    serve = loaded.signatures[SERVING_SIGNATURE]
    probabilities = signature_outputs(serve, parity_u8, "probabilities")
    classes = signature_outputs(serve, parity_u8, "classes")
    sm_logits = signature_outputs(
        loaded.signatures[LOGITS_SIGNATURE], to_float(parity_u8), "logits"
    )
    figures = _probability_parity("saved_model", _softmax(reference_logits), probabilities)
    figures["logits_signature"] = _check_probability_parity(
        "saved_model", reference_logits, sm_logits
    )
    figures["classes_match_argmax"] = bool(np.all(classes == probabilities.argmax(-1)))
    if not figures["classes_match_argmax"]:
        raise ExportVerificationError("saved_model: `classes` differs from argmax(probabilities)")
    return loaded, figures


def _verify_tflite(
    model, name, path, image_shape, parity_x, reference_logits, representative_x, representative_n
):
    """Write and re-load one TFLite variant; returns (runner, parity figures, card entry)."""
    mode = tflite.TFLITE_MODES[name]
    path.write_bytes(
        tflite.convert_tflite(
            model,
            mode,
            image_shape,
            representative_x=representative_x,
            representative_n=representative_n,
        )
    )
    runner = tflite.TFLiteRunner(path)
    logits = runner.logits(parity_x)
    if name == "tflite_float":
        figures = _check_probability_parity(name, reference_logits, logits)
    else:
        figures = _check_top1_agreement(name, reference_logits, logits)
    artifact = {
        "path": tflite.TFLITE_FILES[name],
        "runtime": runner.runtime,
        "io": "int8 input and output" if mode == "int8" else "float32 input and output",
        **runner.io_spec(),
    }
    return runner, figures, artifact


def build_and_verify(
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
    """Write each artifact into `tmp_dir`, re-load it, check parity and evaluate it.

    Returns:
        The card's `format`, `artifacts`, `parity` and `evaluation` entries.
    """
    parity_x = to_float(parity_u8)
    evaluate = eval_x is not None and len(eval_x) > 0
    eval_xf = to_float(eval_x) if evaluate else None
    artifacts, parity = {}, {"n": int(len(parity_u8))}
    clean, robust, transfer = {}, {}, {}

    x_adv = None
    if evaluate:
        clean["keras"] = _accuracy(keras_logits(model, eval_xf), eval_y)
        x_adv = adversarial_images(
            model,
            eval_xf,
            eval_y,
            "pgd20",
            eps=eps,
            batch_size=BATCH,
            seed=seed,
        )
        robust["keras"] = _accuracy(keras_logits(model, x_adv), eval_y)

    if "saved_model" in formats:
        loaded, parity["saved_model"] = _verify_saved_model(
            model, tmp_dir, image_shape, parity_u8, reference_logits
        )
        artifacts["saved_model"] = saved_model_spec(image_shape, num_classes)
        if evaluate:
            serve = loaded.signatures[SERVING_SIGNATURE]
            clean["saved_model"] = _accuracy(signature_outputs(serve, eval_x, "classes"), eval_y)
            robust["saved_model"] = _accuracy(
                signature_outputs(loaded.signatures[LOGITS_SIGNATURE], x_adv, "logits"), eval_y
            )

    for name in tflite.TFLITE_MODES:
        if name not in formats:
            continue
        runner, parity[name], artifacts[name] = _verify_tflite(
            model,
            name,
            tmp_dir / tflite.TFLITE_FILES[name],
            image_shape,
            parity_x,
            reference_logits,
            representative_x,
            representative_n,
        )
        if evaluate:
            clean[name] = _accuracy(runner.logits(eval_xf), eval_y)
            transfer[name] = _accuracy(runner.logits(x_adv), eval_y)

    evaluation = None
    if evaluate:
        evaluation = {
            "split": "test",
            "n": int(len(eval_x)),
            "eps": float(eps),
            "clean_accuracy": clean,
            "attack": "PGD-20, cross-entropy, white-box against the float Keras model",
            "robust_accuracy_pgd20": robust,
            "transfer_accuracy_pgd20": transfer,
            "autoattack": _autoattack(model, eval_xf, eval_y, eps, seed) if autoattack else None,
        }
    return {"format": 1, "artifacts": artifacts, "parity": parity, "evaluation": evaluation}

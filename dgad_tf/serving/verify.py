"""Checks and figures of the exported artifacts, each re-loaded from disk.

`build_and_verify` asks each requested format of `EXPORT_FORMATS` to write its artifact, re-loads
it and checks it against the Keras model on the parity batch with the format's parity rule,
raising `ExportVerificationError` on a miss; with evaluation data it also scores each artifact.
The adversarial images come from `dgad_tf.robustness.adversarial_images`: PGD-20 white-box on the
float Keras model, then the same images scored by every artifact (for the TFLite models that is a
transfer attack).
"""

import keras
import numpy as np

from dgad_tf.data import to_float
from dgad_tf.robustness import adversarial_images, evaluate_robustness
from dgad_tf.serving.formats import EXPORT_FORMATS, ExportInputs
from dgad_tf.serving.savedmodel import BATCH
from dgad_tf.stats import at_chance_level

# AutoAttack's batch for the card: 500, run_autoattack's default until the evaluations shared
# one (256); the card's figure has always used 500.
AUTOATTACK_BATCH = 500


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


def _autoattack(model, x, labels, eps, seed):
    report = evaluate_robustness(
        model, x, labels, attacks=("autoattack",), eps=eps, batch_size=AUTOATTACK_BATCH, seed=seed
    )
    return {
        "status": "ok",
        "version": "standard",
        "robust_accuracy": report["attacks"]["autoattack"]["robust_accuracy"],
    }


def _check_parity(fmt, name, artifact, parity_u8, reference_logits):
    """The format's own check, else its parity rule on the float parity batch's logits."""
    if fmt.check is not None:
        return fmt.check(fmt, artifact, parity_u8, reference_logits)
    return fmt.parity.check(name, reference_logits, artifact.logits(to_float(parity_u8)))


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

    inputs = ExportInputs(image_shape, num_classes, representative_x, representative_n)
    # Registration order, whatever the order asked: the SavedModel fills the version folder
    # itself, so it is written before the files that go beside it.
    for name in [n for n in EXPORT_FORMATS.names() if n in formats]:
        fmt = EXPORT_FORMATS.get(name)
        path = tmp_dir / fmt.path
        fmt.write(model, path, inputs)
        artifact = fmt.load(path)
        parity[name] = _check_parity(fmt, name, artifact, parity_u8, reference_logits)
        artifacts[name] = fmt.describe(artifact, path, inputs)
        if evaluate:
            clean[name] = _accuracy(artifact.classes(eval_x), eval_y)
            attacked = robust if fmt.white_box else transfer
            attacked[name] = _accuracy(artifact.logits(x_adv), eval_y)

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

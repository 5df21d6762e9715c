"""Mixed precision (`train.precision`) is correct on CPU: same step direction, no weaker attack."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from dgad_tf.attacks import PGD
from dgad_tf.callbacks import RunCheckpoints
from dgad_tf.distiller import AdversarialDistiller
from dgad_tf.losses import DGAD, PGDAT
from dgad_tf.models import build_model
from dgad_tf.optim import TorchSGD
from dgad_tf.precision import loss_scaled, policy_name, resolve_jit_compile, with_policy
from dgad_tf.robustness import evaluate_model


def nets():
    keras.utils.set_random_seed(0)
    student = build_model("small-cnn", 10, (8, 8, 1))
    teacher = build_model("wrn-10-2", 10, (8, 8, 1))
    return student, teacher


def digits(n=256):
    from sklearn.datasets import load_digits

    data = load_digits()
    return (np.round(data.images[:n] / 16.0 * 255.0).astype(np.uint8)[..., None] / 255.0).astype(
        np.float32
    ), data.target[:n].astype(np.int64)


def test_with_policy_keeps_weights_and_float32_logits():
    student, _ = nets()
    mixed = with_policy(student, "mixed_bfloat16")
    assert policy_name(mixed) == "mixed_bfloat16"
    assert mixed.layers[-1].compute_dtype == "float32"
    assert any(layer.compute_dtype == "bfloat16" for layer in mixed.layers)
    for a, b in zip(student.get_weights(), mixed.get_weights()):
        np.testing.assert_array_equal(a, b)
    back = with_policy(mixed, "float32")
    assert policy_name(back) == "float32" and with_policy(back, "float32") is back
    x, _ = digits(16)
    np.testing.assert_allclose(back(x), student(x), atol=1e-6)
    # bfloat16 keeps ~3 significant digits: the logits agree to that.
    np.testing.assert_allclose(mixed(x), student(x), atol=0.1, rtol=0.05)


def train(policy, steps=6):
    student, teacher = nets()
    student, teacher = with_policy(student, policy), with_policy(teacher, policy)
    distiller = AdversarialDistiller(
        teacher=teacher,
        student=student,
        loss=DGAD(),
        attack=PGD(eps=0.1, step_size=0.025, steps=3, start="none"),
        val_robust_steps=0,
    )
    distiller.compile(optimizer=loss_scaled(TorchSGD(0.05, momentum=0.9), policy))
    x, y = digits(64)
    initial = [np.array(w) for w in student.trainable_weights]
    losses = []
    for _ in range(steps):
        distiller.reset_metrics()
        losses.append(distiller.train_on_batch(x, y, return_dict=True)["loss"])
    moved = np.concatenate(
        [(np.array(w) - w0).ravel() for w, w0 in zip(student.trainable_weights, initial)]
    )
    return np.array(losses), moved


@pytest.fixture(scope="module")
def float32_run():
    return train("float32")


@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"])
def test_a_mixed_step_moves_the_loss_as_float32_does(float32_run, policy):
    losses32, moved32 = float32_run
    losses16, moved16 = train(policy)
    assert np.all(np.isfinite(losses16))
    # Tolerance: 16-bit arithmetic in both networks; the loss path agrees to 10% per step and
    # the summed update of six steps points the same way (cosine > 0.95).
    np.testing.assert_allclose(losses16, losses32, rtol=0.10)
    assert losses16[-1] < losses16[0] and losses32[-1] < losses32[0]
    cosine = moved16 @ moved32 / (np.linalg.norm(moved16) * np.linalg.norm(moved32))
    assert cosine > 0.95, cosine


def test_a_mixed_pgd_evaluation_is_not_weaker():
    student, _ = nets()
    x, y = digits(512)
    student.compile(
        keras.optimizers.Adam(1e-2), keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    student.fit(x[:384], y[:384], epochs=8, batch_size=64, verbose=0)
    kwargs = dict(attacks=("pgd20",), eps=0.03, seed=0, batch_size=128)
    full = evaluate_model(student, x[384:], y[384:], **kwargs)
    mixed = evaluate_model(with_policy(student, "mixed_bfloat16"), x[384:], y[384:], **kwargs)
    robust32 = full["attacks"]["pgd20"]["robust_accuracy"]
    robust16 = mixed["attacks"]["pgd20"]["robust_accuracy"]
    assert 0.1 < robust32 < full["clean_accuracy"]  # the attack bites, not trivially
    assert robust16 <= robust32 + 0.01


def test_checkpoints_of_a_mixed_run_are_float32(tmp_path):
    student, _ = nets()
    distiller = AdversarialDistiller(
        student=with_policy(student, "mixed_bfloat16"),
        loss=PGDAT(),
        attack=PGD(eps=0.1, step_size=0.05, steps=1),
    )
    distiller.compile(optimizer=TorchSGD(0.05))
    x, y = digits(32)
    distiller.fit(x, y, batch_size=16, epochs=1, verbose=0, callbacks=[RunCheckpoints(tmp_path)])
    saved = keras.models.load_model(tmp_path / "student_last.keras", compile=False)
    assert policy_name(saved) == "float32"
    assert all(layer.compute_dtype == "float32" for layer in saved.layers[1:])


def test_jit_compile_auto_is_off_without_a_gpu():
    assert resolve_jit_compile("auto") is bool(tf.config.list_physical_devices("GPU"))
    assert resolve_jit_compile(True) is True and resolve_jit_compile(False) is False

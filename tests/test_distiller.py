"""AdversarialDistiller: the right network trains, every method steps, the DGAD step descends."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from dgad_tf import losses
from dgad_tf.config import METHODS
from dgad_tf.distiller import METHOD_SPECS, AdversarialDistiller
from dgad_tf.optim import TorchSGD


def tiny_net(num_classes=4, width=8, name=None):
    inputs = keras.Input((6, 6, 1))
    x = keras.layers.Conv2D(width, 3, padding="same")(inputs)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(num_classes)(x), name=name)


def batch(n=16, num_classes=4, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 1, size=(n, 6, 6, 1)).astype(np.float32)
    y = rng.integers(0, num_classes, size=n).astype(np.int64)
    return x, y


def make(method, lr=0.05, **kwargs):
    student = tiny_net(name="student")
    teacher = tiny_net(width=16, name="teacher") if METHOD_SPECS[method].needs_teacher else None
    kwargs.setdefault("steps", 2)
    distiller = AdversarialDistiller(student, teacher, method=method, eps=0.1, step_size=0.05,
                                     val_robust_steps=2, **kwargs)
    distiller.compile(optimizer=TorchSGD(lr, momentum=0.9, weight_decay=5e-4))
    return distiller


@pytest.mark.parametrize("method", METHODS)
def test_every_method_takes_a_finite_step(method):
    distiller = make(method)
    x, y = batch()
    logs = distiller.train_on_batch(x, y, return_dict=True)
    assert np.isfinite(logs["loss"]), logs
    assert 0.0 <= logs["student_clean_accuracy"] <= 1.0
    if METHOD_SPECS[method].needs_teacher:
        assert 0.0 <= logs["teacher_clean_accuracy"] <= 1.0


def test_fit_trains_the_student_and_never_the_teacher():
    distiller = make("dgad")
    teacher_before = [np.array(w) for w in distiller.teacher.weights]
    student_before = {w.path: np.array(w) for w in distiller.student.weights}
    x, y = batch(32)
    distiller.fit(x, y, batch_size=16, epochs=2, verbose=0)
    # Every teacher weight, batch-norm moving statistics included, is bit-identical.
    for before, after in zip(teacher_before, distiller.teacher.weights):
        np.testing.assert_array_equal(before, np.array(after))
    # Every student weight moved: the trainable ones by the optimiser, the batch-norm moving
    # statistics by the training-mode forwards (compared name by name, not by position).
    after = {w.path: np.array(w) for w in distiller.student.weights}
    assert len(after) == len(student_before) == 8
    unchanged = [path for path, before in student_before.items()
                 if np.array_equal(before, after[path])]
    assert not unchanged, unchanged


def test_teacher_methods_need_a_teacher_and_matching_classes():
    with pytest.raises(ValueError, match="teacher"):
        AdversarialDistiller(tiny_net(), None, method="dgad")
    with pytest.raises(ValueError, match="classes"):
        AdversarialDistiller(tiny_net(4), tiny_net(5), method="adaad")
    AdversarialDistiller(tiny_net(), None, method="pgd_at")  # teacher-free: fine
    with pytest.raises(ValueError, match="method"):
        AdversarialDistiller(tiny_net(), None, method="kd")


def _dgad_loss_at(distiller, x, x_adv, y):
    s = distiller.student
    t = distiller.teacher
    out = losses.dgad_loss(s(x, training=True), s(x_adv, training=True), t(x, training=False),
                           t(x_adv, training=False), y)
    return float(out["total"])


def test_one_dgad_step_lowers_the_dgad_loss_on_its_batch():
    distiller = make("dgad", lr=0.05, attack_init="none")
    distiller.compile(optimizer=TorchSGD(0.05, momentum=0.0, weight_decay=0.0))
    x, y = batch(16)
    x = tf.constant(x)
    x_adv = distiller.adversarial_examples(x, tf.constant(y, tf.int32))
    before = _dgad_loss_at(distiller, x, x_adv, y)
    distiller.train_on_batch(x, y)
    after = _dgad_loss_at(distiller, x, x_adv, y)
    assert after < before


def test_train_metrics_follow_the_teacher():
    # A teacher that always predicts class 0: M is every sample whose label is not 0.
    distiller = make("dgad")
    fc = distiller.teacher.layers[-1]
    kernel, bias = fc.get_weights()
    fc.set_weights([np.zeros_like(kernel), np.array([5.0, 0, 0, 0], np.float32)])
    x, y = batch(16)
    logs = distiller.train_on_batch(x, y, return_dict=True)
    assert logs["misclassified_fraction"] == pytest.approx(np.mean(y != 0))
    assert logs["teacher_clean_accuracy"] == pytest.approx(np.mean(y == 0))
    # ELS swaps every clean sample in M.
    assert logs["swap_rate_clean"] == pytest.approx(np.mean(y != 0))


def test_test_step_reports_clean_and_robust_accuracy():
    distiller = make("pgd_at")
    x, y = batch(32)
    logs = distiller.evaluate(x, y, batch_size=16, verbose=0, return_dict=True)
    assert set(logs) >= {"clean_accuracy", "robust_accuracy"}
    assert logs["robust_accuracy"] <= logs["clean_accuracy"] + 1e-6
    no_attack = AdversarialDistiller(distiller.student, None, method="pgd_at", eps=0.0)
    no_attack.compile(optimizer=TorchSGD(0.1))
    logs0 = no_attack.evaluate(x, y, batch_size=16, verbose=0, return_dict=True)
    assert logs0["robust_accuracy"] == pytest.approx(logs0["clean_accuracy"])


def test_compiled_step_does_not_retrace_per_batch():
    traces = []

    class Counting(AdversarialDistiller):
        def train_step(self, data):
            traces.append(1)  # Python runs only while tracing a compiled step
            return super().train_step(data)

    distiller = Counting(tiny_net(), tiny_net(width=16), method="dgad", eps=0.1,
                         step_size=0.05, steps=2)
    distiller.compile(optimizer=TorchSGD(0.05))
    x, y = batch(64)
    distiller.fit(x, y, batch_size=16, epochs=1, verbose=0)
    after_first_epoch = len(traces)
    assert after_first_epoch <= 2  # keras may trace once more while it builds the step
    distiller.fit(x, y, batch_size=16, epochs=3, verbose=0)
    assert len(traces) == after_first_epoch  # 12 more batches, no new trace


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
    student_before = [np.array(w) for w in distiller.student.weights]
    x, y = batch(32)
    distiller.fit(x, y, batch_size=16, epochs=2, verbose=0)
    # Every teacher weight, batch-norm moving statistics included, is bit-identical.
    for before, after in zip(teacher_before, distiller.teacher.weights):
        np.testing.assert_array_equal(before, np.array(after))
    changed = [not np.array_equal(b, np.array(a))
               for b, a in zip(student_before, distiller.student.trainable_weights)]
    assert all(changed)


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


def _plain_net(num_classes=4, name=None):
    inputs = keras.Input((6, 6, 1))
    x = keras.layers.Flatten()(inputs)
    return keras.Model(inputs, keras.layers.Dense(num_classes)(x), name=name)


def test_a_partial_batch_loss_divides_by_its_own_size():
    # The last batch of an epoch with train.drop_remainder=false holds 5 of 16 images: its loss
    # is the mean over those 5 (a divisor of 16, the configured size, would shrink it by 5/16).
    student = _plain_net(name="student")
    distiller = AdversarialDistiller(student, None, method="pgd_at", eps=0.1, step_size=0.05,
                                     steps=0, attack_init="none")
    distiller.compile(optimizer=TorchSGD(0.05, momentum=0.0, weight_decay=0.0))
    x, y = batch(5)
    expected = float(keras.ops.mean(keras.losses.sparse_categorical_crossentropy(
        y, student(x, training=True), from_logits=True)))
    logs = distiller.train_on_batch(x, y, return_dict=True)
    assert logs["loss"] == pytest.approx(expected, rel=1e-5)


# One step on a global batch of 5 under MirroredStrategy over 2 logical CPUs (split 3 + 2) and on
# one device from the same weights: the updated weights agree only if every replica divides by the
# true global size 5 (3 * 2 = 6 on one replica and 2 * 2 = 4 on the other would not).
_UNEVEN_SCRIPT = '''
import json
from dgad_tf import distribute
from dgad_tf.config import DistributeConfig
mirrored = distribute.make_strategy(DistributeConfig(strategy="mirrored", logical_cpus=2))
import keras, numpy as np, tensorflow as tf
from dgad_tf.distiller import AdversarialDistiller
from dgad_tf.optim import TorchSGD

rng = np.random.default_rng(0)
x = rng.uniform(0, 1, size=(5, 6, 6, 1)).astype(np.float32)
y = rng.integers(0, 4, size=5).astype(np.int64)
keras.utils.set_random_seed(0)

def net(name):
    inputs = keras.Input((6, 6, 1))
    return keras.Model(inputs, keras.layers.Dense(4)(keras.layers.Flatten()(inputs)), name=name)

INIT = {"student": [np.array(w) for w in net("s").weights],
        "teacher": [np.array(w) for w in net("t").weights]}

def step(strategy, method):
    with strategy.scope():
        student, teacher = net("student"), net("teacher")
        student.set_weights(INIT["student"])
        teacher.set_weights(INIT["teacher"])
        distiller = AdversarialDistiller(student, teacher, method=method, eps=0.1,
                                         step_size=0.05, steps=2, attack_init="none",
                                         val_robust_steps=0)
        distiller.compile(optimizer=TorchSGD(0.5, momentum=0.0, weight_decay=0.0))
    sizes = []
    for batch_x, _ in strategy.experimental_distribute_dataset(
            tf.data.Dataset.from_tensor_slices((x, y)).batch(5)):
        sizes = [int(v.shape[0]) for v in strategy.experimental_local_results(batch_x)]
    history = distiller.fit(tf.data.Dataset.from_tensor_slices((x, y)).batch(5), epochs=1,
                            verbose=0, shuffle=False)
    return [np.array(w) for w in student.weights], float(history.history["loss"][-1]), sizes

out = {"replicas": mirrored.num_replicas_in_sync}
for method in ("pgd_at", "dgad"):
    one, loss_one, _ = step(tf.distribute.get_strategy(), method)
    two, loss_two, sizes = step(mirrored, method)
    out[method] = dict(
        weights=max(float(np.max(np.abs(a - b))) for a, b in zip(one, two)),
        moved=max(float(np.max(np.abs(a - b))) for a, b in zip(one, INIT["student"])),
        loss_one=loss_one, loss_two=loss_two, sizes=sizes)
print("RESULT " + json.dumps(out))
'''


@pytest.fixture(scope="module")
def uneven_step_results(tmp_path_factory):
    import json
    import os
    import pathlib
    import subprocess
    import sys

    repo = pathlib.Path(__file__).resolve().parents[1]
    script = tmp_path_factory.mktemp("uneven") / "uneven.py"
    script.write_text(_UNEVEN_SCRIPT)
    env = dict(os.environ, PYTHONPATH=str(repo), TF_CPP_MIN_LOG_LEVEL="2")
    env.pop("TF_CONFIG", None)
    proc = subprocess.run([sys.executable, str(script)], cwd=repo, env=env, capture_output=True,
                          text=True, timeout=300)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    return json.loads(lines[-1][len("RESULT "):])


@pytest.mark.parametrize("method", ["pgd_at", "dgad"])
def test_two_replicas_take_the_single_device_step_on_an_uneven_partial_batch(
        uneven_step_results, method):
    entry = uneven_step_results[method]
    assert uneven_step_results["replicas"] == 2
    assert sorted(entry["sizes"]) == [2, 3], entry  # the batch really was split unevenly
    assert entry["moved"] > 1e-3, entry
    assert entry["weights"] <= 1e-5, entry
    assert entry["loss_two"] == pytest.approx(entry["loss_one"], abs=1e-5)

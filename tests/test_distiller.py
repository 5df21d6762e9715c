"""AdversarialDistiller: the right network trains, every method steps, the DGAD step descends."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from subprocesses import run_command

from dgad_tf import attacks, losses
from dgad_tf.attacks import PGD
from dgad_tf.distiller import AdversarialDistiller
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


def make(method, lr=0.05, loss=None, steps=2, start="auto", start_std=0.001, **kwargs):
    """A compiled distiller of `method` (its loss's defaults unless `loss` is given)."""
    loss = losses.get(method)() if loss is None else loss
    distiller = AdversarialDistiller(
        teacher=tiny_net(width=16, name="teacher") if loss.needs_teacher else None,
        student=tiny_net(name="student"),
        loss=loss,
        attack=PGD(eps=0.1, step_size=0.05, steps=steps, start=start, start_std=start_std),
        val_robust_steps=2,
        **kwargs,
    )
    distiller.compile(optimizer=TorchSGD(lr, momentum=0.9, weight_decay=5e-4))
    return distiller


@pytest.mark.parametrize("method", list(losses.METHOD_LOSSES))
def test_every_method_takes_a_finite_step(method):
    distiller = make(method)
    x, y = batch()
    logs = distiller.train_on_batch(x, y, return_dict=True)
    assert np.isfinite(logs["loss"]), logs
    assert 0.0 <= logs["student_clean_accuracy"] <= 1.0
    if losses.get(method).needs_teacher:
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
    unchanged = [
        path for path, before in student_before.items() if np.array_equal(before, after[path])
    ]
    assert not unchanged, unchanged


def test_teacher_methods_need_a_teacher_and_matching_classes():
    with pytest.raises(ValueError, match="teacher"):
        AdversarialDistiller(student=tiny_net(), loss=losses.DGAD())
    with pytest.raises(ValueError, match="classes"):
        AdversarialDistiller(teacher=tiny_net(5), student=tiny_net(4), loss=losses.AdaAD())
    AdversarialDistiller(student=tiny_net(), loss=losses.PGDAT())  # teacher-free: fine
    with pytest.raises(TypeError, match="loss"):
        AdversarialDistiller(student=tiny_net(), loss="kd")


def _dgad_loss_at(distiller, x, x_adv, y):
    s = distiller.student
    t = distiller.teacher
    out = losses.dgad_loss(
        s(x, training=True),
        s(x_adv, training=True),
        t(x, training=False),
        t(x_adv, training=False),
        y,
    )
    return float(out["total"])


def test_one_dgad_step_lowers_the_dgad_loss_on_its_batch():
    distiller = make("dgad", lr=0.05, start="none")
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
    no_attack = AdversarialDistiller(
        student=distiller.student, loss=losses.PGDAT(), attack=PGD(eps=0.0)
    )
    no_attack.compile(optimizer=TorchSGD(0.1))
    logs0 = no_attack.evaluate(x, y, batch_size=16, verbose=0, return_dict=True)
    assert logs0["robust_accuracy"] == pytest.approx(logs0["clean_accuracy"])


def test_compiled_step_does_not_retrace_per_batch():
    traces = []

    class Counting(AdversarialDistiller):
        def train_step(self, data):
            traces.append(1)  # Python runs only while tracing a compiled step
            return super().train_step(data)

    distiller = Counting(
        teacher=tiny_net(width=16),
        student=tiny_net(),
        loss=losses.DGAD(),
        attack=PGD(eps=0.1, step_size=0.05, steps=2),
    )
    distiller.compile(optimizer=TorchSGD(0.05))
    x, y = batch(64)
    distiller.fit(x, y, batch_size=16, epochs=1, verbose=0)
    after_first_epoch = len(traces)
    assert after_first_epoch <= 2  # keras may trace once more while it builds the step
    distiller.fit(x, y, batch_size=16, epochs=3, verbose=0)
    assert len(traces) == after_first_epoch  # 12 more batches, no new trace


# ---------------------------------------------------------------- wiring against independent truth

ATTACKING_METHODS = [m for m, cls in losses.METHOD_LOSSES.items() if cls.ascent is not None]


def _kl(p_logits, q_logits):
    """Per-sample KL(softmax(p) || softmax(q)), written out here, not taken from dgad_tf."""
    p = tf.nn.softmax(p_logits)
    return tf.reduce_sum(p * (tf.nn.log_softmax(p_logits) - tf.nn.log_softmax(q_logits)), -1)


def _expected_objective(method, student, teacher, x, y):
    """The training attack's objective of each method as the method's paper states it."""
    s = lambda z: student(z, training=False)  # noqa: E731
    t = lambda z: teacher(z, training=False)  # noqa: E731
    if method in ("pgd_at", "ard", "iad"):  # CE(s(x'), y)
        return lambda z: tf.nn.sparse_softmax_cross_entropy_with_logits(y, s(z))
    if method == "trades":  # KL(s(x) || s(x'))
        return lambda z: _kl(s(x), s(z))
    if method == "rslad":  # KL(t(x) || s(x'))
        return lambda z: _kl(t(x), s(z))
    return lambda z: _kl(t(z), s(z))  # adaad, adaiad, dgad: KL(t(x') || s(x')), both moving


def _sharpen(teacher):
    # Random tiny networks agree closely, and for nearby distributions KL(t||s) ~ KL(s||t) to
    # second order: a confident teacher makes the direction of the KL matter.
    if teacher is not None:
        head = teacher.layers[-1]
        kernel, bias = head.get_weights()
        head.set_weights([kernel * 20.0, bias])


@pytest.mark.parametrize("method", ATTACKING_METHODS)
def test_training_attack_ascends_the_methods_objective(method):
    # TRADES' objective has a zero gradient at x' = x, so it needs its Gaussian start; both
    # attacks then draw the same start from the re-seeded global generator (eager mode).
    init = "gaussian" if method == "trades" else "none"
    distiller = make(method, steps=3, start=init, start_std=0.01)
    _sharpen(distiller.teacher)
    x, y = batch(8, seed=1)
    x, y = tf.constant(x), tf.constant(y, tf.int32)
    tf.random.set_seed(7)
    x_adv = distiller.adversarial_examples(x, y).numpy()
    tf.random.set_seed(7)
    objective = _expected_objective(method, distiller.student, distiller.teacher, x, y)
    expected = attacks.pgd(
        x, objective, eps=0.1, step_size=0.05, steps=3, init=init, init_std=0.01
    ).numpy()
    assert np.abs(expected - x.numpy()).max() > 0.05  # the attack moved
    # Both sides are float32 sums in different orders: allow a rare sign flip of a gradient
    # entry that is zero up to rounding, never a different objective.
    differing = np.mean(np.abs(x_adv - expected) > 1e-6)
    assert differing < 0.01, differing


@pytest.mark.parametrize("method", ATTACKING_METHODS)
def test_training_attack_leaves_batch_norm_statistics_alone(method):
    distiller = make(method, steps=3)
    networks = [distiller.student] + ([distiller.teacher] if distiller.teacher else [])
    before = [np.array(w) for net in networks for w in net.non_trainable_weights]
    assert before, "the networks must have batch-norm statistics for this test to mean anything"
    x, y = batch(8, seed=2)
    # Inputs far from the batch-norm initial statistics (mean 0, variance 1), so a
    # training-mode forward would move them visibly.
    distiller.adversarial_examples(tf.constant(x * 3.0 + 1.0), tf.constant(y, tf.int32))
    after = [np.array(w) for net in networks for w in net.non_trainable_weights]
    for b, a in zip(before, after):
        np.testing.assert_array_equal(b, a)


# Options away from the defaults, so that a step that ignored them would differ.
HPARAMS = {
    "pgd_at": losses.PGDAT(),
    "trades": losses.TRADES(beta=3.0),
    "ard": losses.ARD(alpha=0.6, temperature=4.0),
    "rslad": losses.RSLAD(),
    "adaad": losses.AdaAD(alpha=0.7),
    "adaiad": losses.AdaIAD(alpha=0.6, temperature=4.0, warmup_epochs=0),
    "iad": losses.IAD(alpha=0.6, temperature=4.0, warmup_epochs=0),
    "dgad": losses.DGAD(beta=0.7),
}


def _expected_loss(method, s_clean, s_adv, t_clean, t_adv, y):
    """The method's loss from losses.* with its forwards wired by hand (HPARAMS, batch of 8)."""
    gbs = 8
    if method == "pgd_at":
        return losses.pgd_at_loss(s_adv, y, global_batch_size=gbs)["total"]
    if method == "trades":
        return losses.trades_loss(s_clean, s_adv, y, beta=3.0, global_batch_size=gbs)["total"]
    if method == "ard":
        return losses.ard_loss(
            s_clean, s_adv, t_clean, y, alpha=0.6, temperature=4.0, global_batch_size=gbs
        )["total"]
    if method == "rslad":
        return losses.rslad_loss(s_clean, s_adv, t_clean, global_batch_size=gbs)["total"]
    if method == "adaad":
        return losses.adaad_loss(s_clean, s_adv, t_clean, t_adv, alpha=0.7, global_batch_size=gbs)[
            "total"
        ]
    if method == "adaiad":  # warm-up 0: the introspection term counts from the first epoch
        return losses.adaiad_loss(
            s_clean,
            s_adv,
            t_adv,
            y,
            introspection=1.0,
            alpha=0.6,
            temperature=4.0,
            global_batch_size=gbs,
        )["total"]
    if method == "iad":
        return losses.iad_loss(
            s_clean,
            s_adv,
            t_clean,
            t_adv,
            y,
            introspection=1.0,
            alpha=0.6,
            temperature=4.0,
            global_batch_size=gbs,
        )["total"]
    return losses.dgad_loss(s_clean, s_adv, t_clean, t_adv, y, beta=0.7, global_batch_size=gbs)[
        "total"
    ]


@pytest.mark.parametrize("method", ATTACKING_METHODS)
def test_one_step_equals_the_hand_wired_sgd_update(method):
    lr = 0.1
    # TRADES without its random start would attack a zero gradient; with steps=0 its
    # adversarial batch is the clean one and the step still wires CE and KL.
    steps = 0 if method == "trades" else 2
    distiller = make(method, steps=steps, start="none", loss=HPARAMS[method])
    _sharpen(distiller.teacher)
    distiller.compile(optimizer=TorchSGD(lr, momentum=0.0, weight_decay=0.0), run_eagerly=True)
    student, teacher = distiller.student, distiller.teacher
    replica = keras.models.clone_model(student)
    replica.set_weights(student.get_weights())
    x, y = batch(8, seed=3)
    x, y = tf.constant(x), tf.constant(y, tf.int32)
    x_adv = attacks.pgd(
        x,
        _expected_objective(method, student, teacher, x, y),
        eps=0.1,
        step_size=0.05,
        steps=steps,
        init="none",
    )

    t_clean = t_adv = None
    if teacher is not None:
        t_clean, t_adv = teacher(x, training=False), teacher(x_adv, training=False)
    with tf.GradientTape() as tape:
        s_clean = replica(x, training=True)
        s_adv = replica(x_adv, training=True)
        loss = _expected_loss(method, s_clean, s_adv, t_clean, t_adv, y)
    grads = tape.gradient(loss, replica.trainable_variables)
    expected = [np.array(w) - lr * np.array(g) for w, g in zip(replica.trainable_variables, grads)]

    logs = distiller.train_on_batch(x, y, return_dict=True)
    assert logs["loss"] == pytest.approx(float(loss), rel=1e-5)
    for w, e in zip(student.trainable_variables, expected):
        np.testing.assert_allclose(np.array(w), e, rtol=1e-5, atol=1e-6)


def _plain_net(num_classes=4, name=None):
    inputs = keras.Input((6, 6, 1))
    x = keras.layers.Flatten()(inputs)
    return keras.Model(inputs, keras.layers.Dense(num_classes)(x), name=name)


def test_a_partial_batch_loss_divides_by_its_own_size():
    # The last batch of an epoch with train.drop_remainder=false holds 5 of 16 images: its loss
    # is the mean over those 5 (a divisor of 16, the configured size, would shrink it by 5/16).
    student = _plain_net(name="student")
    distiller = AdversarialDistiller(
        student=student,
        loss=losses.PGDAT(),
        attack=PGD(eps=0.1, step_size=0.05, steps=0, start="none"),
    )
    distiller.compile(optimizer=TorchSGD(0.05, momentum=0.0, weight_decay=0.0))
    x, y = batch(5)
    expected = float(
        keras.ops.mean(
            keras.losses.sparse_categorical_crossentropy(
                y, student(x, training=True), from_logits=True
            )
        )
    )
    logs = distiller.train_on_batch(x, y, return_dict=True)
    assert logs["loss"] == pytest.approx(expected, rel=1e-5)


# One step on a global batch of 5 under MirroredStrategy over 2 logical CPUs (split 3 + 2) and on
# one device from the same weights: the updated weights agree only if every replica divides by the
# true global size 5 (3 * 2 = 6 on one replica and 2 * 2 = 4 on the other would not).
_UNEVEN_SCRIPT = """
import json
from dgad_tf import distribute
from dgad_tf.config import DistributeConfig
mirrored = distribute.make_strategy(DistributeConfig(strategy="mirrored", logical_cpus=2))
import keras, numpy as np, tensorflow as tf
from dgad_tf.attacks import PGD
from dgad_tf.distiller import AdversarialDistiller
from dgad_tf.losses import DGAD, PGDAT
from dgad_tf.optim import TorchSGD

LOSSES = {"pgd_at": PGDAT(), "dgad": DGAD()}
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
        distiller = AdversarialDistiller(
            teacher=teacher if method == "dgad" else None, student=student, loss=LOSSES[method],
            attack=PGD(eps=0.1, step_size=0.05, steps=2, start="none"), val_robust_steps=0)
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
"""


@pytest.fixture(scope="module")
def uneven_step_results(tmp_path_factory):
    import json
    import os
    import pathlib
    import sys

    repo = pathlib.Path(__file__).resolve().parents[1]
    script = tmp_path_factory.mktemp("uneven") / "uneven.py"
    script.write_text(_UNEVEN_SCRIPT)
    env = dict(os.environ, PYTHONPATH=str(repo), TF_CPP_MIN_LOG_LEVEL="2")
    env.pop("TF_CONFIG", None)
    proc = run_command(
        [sys.executable, str(script)],
        cwd=repo,
        env=env,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    return json.loads(lines[-1][len("RESULT ") :])


@pytest.mark.parametrize("method", ["pgd_at", "dgad"])
def test_two_replicas_take_the_single_device_step_on_an_uneven_partial_batch(
    uneven_step_results, method
):
    entry = uneven_step_results[method]
    assert uneven_step_results["replicas"] == 2
    assert sorted(entry["sizes"]) == [2, 3], entry  # the batch really was split unevenly
    assert entry["moved"] > 1e-3, entry
    assert entry["weights"] <= 1e-5, entry
    assert entry["loss_two"] == pytest.approx(entry["loss_one"], abs=1e-5)


# --------------------------------------------------------------------------- wiring probes


class _ModeProbe(keras.layers.Layer):
    """Identity that records the `training` value of every call and, when eager, the input."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.modes, self.inputs = [], []

    def call(self, x, training=None):
        self.modes.append(training)
        if tf.executing_eagerly():
            self.inputs.append((training, np.array(x)))
        return x


def _probed_net(probe, num_classes=4, dropout=0.0, name=None):
    inputs = keras.Input((6, 6, 1))
    x = probe(inputs)
    x = keras.layers.Flatten()(x)
    if dropout:
        x = keras.layers.Dropout(dropout)(x)
    return keras.Model(inputs, keras.layers.Dense(num_classes)(x), name=name)


# DGAD's attack ascends KL(t(x')||s(x')), RSLAD's KL(t(x)||s(x')): between them every place a
# step calls the teacher (both attack objectives, the clean and adversarial forwards).
@pytest.mark.parametrize("method", ["dgad", "rslad"])
def test_the_teacher_is_never_run_in_training_mode(method):
    # A user's teacher may hold Dropout or noise layers, which only inference mode switches off;
    # the probe sees every call the step makes (attack, forwards) and must never see training=True.
    probe = _ModeProbe()
    teacher = _probed_net(probe, dropout=0.5, name="teacher")
    distiller = AdversarialDistiller(
        teacher=teacher,
        student=tiny_net(name="student"),
        loss=losses.get(method)(),
        attack=PGD(eps=0.1, step_size=0.05, steps=2),
    )
    distiller.compile(optimizer=TorchSGD(0.05))
    x, y = batch()
    probe.modes.clear()
    logs = distiller.train_on_batch(x, y, return_dict=True)
    assert probe.modes, "the teacher was never called"
    assert True not in probe.modes, probe.modes
    # With Dropout(0.5) live, the logged teacher accuracy would not be the inference one.
    expected = np.mean(np.argmax(teacher(x, training=False).numpy(), -1) == y)
    assert logs["teacher_clean_accuracy"] == pytest.approx(expected)


def _adversarial_inputs_of_two_steps(seed):
    """The student's training-mode adversarial input at two steps on one batch, weights fixed."""
    keras.utils.set_random_seed(0)
    probe = _ModeProbe()
    student = _probed_net(probe, name="student")  # no batch norm: the attack's target stays put
    distiller = AdversarialDistiller(
        student=student,
        loss=losses.PGDAT(),
        attack=PGD(eps=0.1, step_size=0.01, steps=1),
        seed=seed,
    )
    distiller.compile(optimizer=keras.optimizers.SGD(0.0), run_eagerly=True)
    x, y = batch()
    seen = []
    for _ in range(2):
        probe.inputs.clear()
        distiller.train_on_batch(x, y)
        seen.append([inp for training, inp in probe.inputs if training][0])
    return x, seen


def test_the_attack_start_differs_between_steps_and_repeats_for_the_same_seed():
    x, (first, second) = _adversarial_inputs_of_two_steps(seed=3)
    assert not np.allclose(first, x)  # it is the adversarial forward, not the clean one
    # Same batch, same weights: only the random start can make the two steps' points differ.
    assert np.abs(first - second).max() > 1e-3
    _, (again, _) = _adversarial_inputs_of_two_steps(seed=3)
    np.testing.assert_array_equal(first, again)


class _RightOnlyWhenMoved(keras.layers.Layer):
    """Logits for 4 classes: class 0 at the uniform grey image, class 1 anywhere else; the input
    gradient is zero everywhere, so PGD stays where its random start put it."""

    def call(self, x):
        moved = tf.cast(tf.reduce_max(tf.abs(x - 0.5), axis=[1, 2, 3]) > 1e-4, tf.float32)
        flat = 0.0 * tf.reduce_mean(x, axis=[1, 2, 3])
        return tf.stack([1.0 - moved + flat, moved + flat, flat, flat], axis=1)


def test_validation_robust_accuracy_never_counts_a_point_wrong_when_clean():
    inputs = keras.Input((6, 6, 1))
    student = keras.Model(inputs, _RightOnlyWhenMoved()(inputs))
    distiller = AdversarialDistiller(
        student=student, loss=losses.PGDAT(), attack=PGD(eps=0.1), val_robust_steps=2
    )
    distiller.compile(optimizer=TorchSGD(0.1))
    x = np.full((8, 6, 6, 1), 0.5, np.float32)
    y = np.ones(8, np.int64)
    # Clean, every point is class 0 (wrong); the attack's start moves it to class 1 (right).
    assert np.all(np.argmax(student(x).numpy(), -1) == 0)
    assert np.all(np.argmax(student(x + 0.05).numpy(), -1) == 1)
    logs = distiller.evaluate(x, y, batch_size=8, verbose=0, return_dict=True)
    assert logs["clean_accuracy"] == 0.0
    assert logs["robust_accuracy"] == 0.0

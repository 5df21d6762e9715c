"""`method.reference_forwards`: the baselines' forward order and batch-norm modes, and IAD's epochs.

The student's first layer is a batch norm on the raw input, so the batch mean it sees is the
pixel mean of whatever batch goes in; after one step its moving mean must equal the moving
average of exactly the reference's sequence of training-mode forwards, computed here by hand.
"""

import keras
import numpy as np
import pytest

from dgad_tf import losses
from dgad_tf.attacks import PGD
from dgad_tf.distiller import AdversarialDistiller
from dgad_tf.optim import TorchSGD

# Compared with an independent reference: CI also runs these with TF_ENABLE_ONEDNN_OPTS=0.
pytestmark = pytest.mark.parity

SHAPE, CLASSES = (6, 6, 1), 4


def input_bn_net(name):
    inputs = keras.Input(SHAPE)
    x = keras.layers.BatchNormalization(momentum=0.9, name="input_bn")(inputs)
    x = keras.layers.Conv2D(4, 3, padding="same")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(CLASSES)(x), name=name)


def make(method, *, eps=0.1, steps=2, reference_forwards=False, **options):
    """A compiled distiller of `method`, its loss with `options` (e.g. warmup_epochs)."""
    loss = losses.get(method)(**options)
    distiller = AdversarialDistiller(
        teacher=input_bn_net("teacher") if loss.needs_teacher else None,
        student=input_bn_net("student"),
        loss=loss,
        attack=PGD(eps=eps, step_size=0.05, steps=steps, start="none"),
        reference_forwards=reference_forwards,
        val_robust_steps=0,
    )
    distiller.compile(optimizer=TorchSGD(0.05, momentum=0.9))
    return distiller


def batch(n=8, seed=0):
    rng = np.random.default_rng(seed)
    return (
        rng.uniform(0, 1, (n,) + SHAPE).astype(np.float32),
        rng.integers(0, CLASSES, n).astype(np.int64),
    )


def moving_mean(model):
    return float(np.asarray(model.get_layer("input_bn").moving_mean)[0])


def after_forwards(start, momentum, batches):
    """The moving mean after training-mode forwards on `batches`, in order."""
    mean = start
    for images in batches:
        mean = momentum * mean + (1 - momentum) * float(np.mean(images))
    return mean


# method -> (forwards without the switch, forwards with it), as named inputs
ORDERS = {
    "pgd_at": (["adv"], ["adv", "clean"]),
    "trades": (["clean", "adv"], ["clean", "adv", "clean"]),
    "rslad": (["clean", "adv"], ["adv", "clean"]),
    "adaad": (["clean", "adv"], ["clean", "adv"]),
    # AdaIAD during its warm-up (epoch 0 < 60): net(x), net(x'), net(x) in the cross-entropy.
    "adaiad": (["clean", "adv"], ["clean", "adv", "clean"]),
    "dgad": (["clean", "adv"], ["clean", "adv"]),
    "clean": (["clean"], ["clean"]),
}


@pytest.mark.parametrize("reference", [False, True])
@pytest.mark.parametrize("method", sorted(ORDERS))
def test_one_step_moves_batch_norm_statistics_in_the_reference_order(method, reference):
    distiller = make(method, reference_forwards=reference)
    x, y = batch()
    # The attack runs in inference mode from x itself: computing it first changes nothing.
    x_adv = np.asarray(distiller.adversarial_examples(x, y))
    if losses.get(method).ascent is not None:
        assert np.abs(x_adv - x).max() > 0.01  # the orders are distinguishable
    bn = distiller.student.get_layer("input_bn")
    start = moving_mean(distiller.student)
    distiller.train_on_batch(x, y)
    inputs = {"clean": x, "adv": x_adv}
    expected = after_forwards(start, bn.momentum, [inputs[n] for n in ORDERS[method][reference]])
    assert moving_mean(distiller.student) == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("reference", [False, True])
def test_ard_attacks_with_the_student_in_training_mode_only_in_reference_mode(reference):
    # eps = 0 keeps every attack step at x, so the count of updates is what differs: the
    # reference's 3 attack forwards, then adversarial and clean; else only the last two.
    steps = 3
    distiller = make("ard", eps=0.0, steps=steps, reference_forwards=reference)
    x, y = batch()
    bn = distiller.student.get_layer("input_bn")
    start = moving_mean(distiller.student)
    teacher_start = moving_mean(distiller.teacher)
    distiller.train_on_batch(x, y)
    updates = steps + 2 if reference else 2
    expected = after_forwards(start, bn.momentum, [x] * updates)
    assert moving_mean(distiller.student) == pytest.approx(expected, abs=1e-6)
    assert moving_mean(distiller.teacher) == teacher_start


def test_pgd_at_reference_start_is_gaussian_unless_the_config_names_one():
    def start(attack=None, **kwargs):
        distiller = AdversarialDistiller(
            student=input_bn_net("s"), loss=losses.PGDAT(), attack=attack, **kwargs
        )
        return distiller.attack_start

    assert start() == "uniform"
    assert start(reference_forwards=True) == "gaussian"
    assert start(attack=PGD(start="uniform"), reference_forwards=True) == "uniform"


def test_unknown_loss_option_is_refused_by_name():
    with pytest.raises(TypeError, match="kl_reductoin"):
        losses.RSLAD(kl_reductoin="class_mean")
    with pytest.raises(ValueError, match="kl_reduction"):
        losses.RSLAD(kl_reduction="sum")


# --------------------------------------------------------------------------- IAD's warm-up


def test_fit_keeps_the_epoch_variable_at_the_epoch_being_trained():
    distiller = make("iad")
    x, y = batch(16)
    seen = []
    record = keras.callbacks.LambdaCallback(
        on_epoch_end=lambda epoch, logs: seen.append((epoch, int(distiller.epoch.numpy())))
    )
    distiller.fit(x, y, batch_size=8, epochs=2, verbose=0, callbacks=[record])
    distiller.fit(x, y, batch_size=8, initial_epoch=5, epochs=6, verbose=0, callbacks=[record])
    assert seen == [(0, 0), (1, 1), (5, 5)]


def test_iad_introspection_enters_the_loss_only_after_warmup():
    distiller = make("iad", warmup_epochs=3, temperature=2.0)
    x, y = batch()
    distiller.epoch.assign(2)  # last warm-up epoch
    logs = distiller.train_on_batch(x, y, return_dict=True)
    assert logs["introspection"] > 0
    assert logs["loss"] == pytest.approx(4.0 * logs["kl_adv"], rel=1e-5)
    distiller.epoch.assign(3)  # first epoch after warm-up
    distiller.reset_metrics()
    logs = distiller.train_on_batch(x, y, return_dict=True)
    assert logs["loss"] == pytest.approx(4.0 * logs["kl_adv"] + logs["introspection"], rel=1e-5)


def test_adaiad_reference_adds_a_clean_forward_after_its_warmup():
    # kunsaram01/DGAD main.py:367-368 net(inputs), net(adv_inputs); :385 net(inputs) twice (the
    # introspection term and the cross-entropy) after IAD_begin, :388 once before it.
    for epoch, clean_after in ((1, 1), (2, 2)):
        distiller = make("adaiad", reference_forwards=True, warmup_epochs=2)
        distiller.epoch.assign(epoch)
        x, y = batch()
        x_adv = np.asarray(distiller.adversarial_examples(x, y))
        bn = distiller.student.get_layer("input_bn")
        start = moving_mean(distiller.student)
        distiller.train_on_batch(x, y)
        expected = after_forwards(start, bn.momentum, [x, x_adv] + [x] * clean_after)
        assert moving_mean(distiller.student) == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("reference", [False, True])
@pytest.mark.parametrize("after_warmup", [False, True])
def test_iad_attacks_in_training_mode_and_adds_forwards_as_its_code(reference, after_warmup):
    # ZFancy/IAD IAD-I.py:159 net.train(); :101 the attack's forwards and :106 its last one on
    # x'; :169 basic_net(x') again; :181 basic_net(x) in the cross-entropy before `begin`,
    # :179 basic_net(x) twice after it. eps = 0 keeps x' = x, so the count is what differs.
    steps = 3
    distiller = make("iad", eps=0.0, steps=steps, reference_forwards=reference, warmup_epochs=1)
    distiller.epoch.assign(int(after_warmup))
    x, y = batch()
    bn = distiller.student.get_layer("input_bn")
    start = moving_mean(distiller.student)
    teacher_start = moving_mean(distiller.teacher)
    distiller.train_on_batch(x, y)
    updates = steps + 3 + int(after_warmup) if reference else 2
    expected = after_forwards(start, bn.momentum, [x] * updates)
    assert moving_mean(distiller.student) == pytest.approx(expected, abs=1e-6)
    assert moving_mean(distiller.teacher) == teacher_start


# --------------------------------------------------------------------------- the spec's fields


def test_a_method_loss_checks_its_later_forwards_when_the_class_is_written():
    import dataclasses

    from dgad_tf.losses import ADV, CLEAN, Forward, MethodLoss

    unused_clean = Forward("clean", used=False)

    # After the warm-up the reference only adds calls whose output the loss does not read.
    @dataclasses.dataclass(frozen=True, kw_only=True)
    class Later(MethodLoss):
        reference_forwards = (ADV, CLEAN)
        reference_forwards_after_warmup = (ADV, CLEAN, unused_clean)

    assert Later().forwards_added_after_warmup(reference_forwards=True) == (unused_clean,)
    assert Later().forwards_added_after_warmup(reference_forwards=False) == ()
    with pytest.raises(ValueError, match="unused"):

        class UsedLater(MethodLoss):
            reference_forwards = (ADV, CLEAN)
            reference_forwards_after_warmup = (ADV, CLEAN, CLEAN)

    with pytest.raises(ValueError, match="kind"):
        Forward("+clean")

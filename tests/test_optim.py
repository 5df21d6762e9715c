"""TorchSGD against torch.optim.SGD itself; epoch schedules."""

import math

import keras
import numpy as np
import pytest

from dgad_tf.optim import EpochSchedule, TorchSGD, epoch_learning_rates, make_optimizer

torch = pytest.importorskip("torch")

# Compared with an independent reference: CI also runs these with TF_ENABLE_ONEDNN_OPTS=0.
pytestmark = pytest.mark.parity


def _torch_sgd(w0, grads, lrs, momentum, weight_decay, nesterov=False):
    """`torch.optim.SGD` run on `w0` with the given gradients and per-step rates."""
    param = torch.nn.Parameter(torch.tensor(w0, dtype=torch.float64))
    optimizer = torch.optim.SGD(
        [param], lr=lrs[0], momentum=momentum, weight_decay=weight_decay, nesterov=nesterov
    )
    for g, lr in zip(grads, lrs):
        for group in optimizer.param_groups:
            group["lr"] = lr
        param.grad = torch.tensor(g, dtype=torch.float64)
        optimizer.step()
    return param.detach().numpy()


@pytest.mark.parametrize(
    "momentum, weight_decay, nesterov",
    [
        (0.9, 5e-4, False),
        (0.9, 5e-4, True),
        (0.5, 0.0, True),
        (0.0, 1e-2, False),
        (0.9, 0.1, False),
    ],
)
def test_matches_torch_sgd_with_changing_lr(momentum, weight_decay, nesterov):
    rng = np.random.default_rng(0)
    w0 = rng.normal(size=(3, 4)).astype(np.float32)
    grads = [rng.normal(size=(3, 4)).astype(np.float32) for _ in range(6)]
    schedule = EpochSchedule(0.1, steps_per_epoch=2, epochs=3, milestones=(1, 2), gamma=0.1)
    variable = keras.Variable(w0)
    opt = TorchSGD(
        learning_rate=schedule, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov
    )
    for g in grads:
        opt.apply([keras.ops.convert_to_tensor(g)], [variable])
    expected = _torch_sgd(
        w0, grads, [0.1, 0.1, 0.01, 0.01, 0.001, 0.001], momentum, weight_decay, nesterov
    )
    np.testing.assert_allclose(np.array(variable), expected, rtol=1e-5, atol=1e-6)


def test_differs_from_keras_decoupled_decay():
    # The reason TorchSGD exists: Keras's SGD(weight_decay=) is not PyTorch's update. The two
    # agree on the first step (empty momentum) and part from the second on.
    w0 = np.ones((2,), np.float32)
    g = np.full((2,), 0.5, np.float32)
    ours, theirs = keras.Variable(w0), keras.Variable(w0)
    torch_sgd = TorchSGD(0.1, momentum=0.9, weight_decay=0.1)
    keras_sgd = keras.optimizers.SGD(0.1, momentum=0.9, weight_decay=0.1)
    for _ in range(3):
        torch_sgd.apply([g], [ours])
        keras_sgd.apply([g], [theirs])
    expected = _torch_sgd(w0, [g] * 3, [0.1] * 3, 0.9, 0.1)
    np.testing.assert_allclose(np.array(ours), expected, rtol=1e-6)
    assert not np.allclose(np.array(ours), np.array(theirs), rtol=1e-4)


def test_piecewise_schedule_per_epoch():
    s = EpochSchedule(0.1, steps_per_epoch=10, epochs=200, milestones=(100, 150))
    rates = [float(s(step)) for step in (0, 999, 1000, 1499, 1500, 1999)]
    np.testing.assert_allclose(rates, [0.1, 0.1, 0.01, 0.01, 0.001, 0.001], rtol=1e-6)


def test_cosine_and_warmup():
    s = EpochSchedule(0.2, steps_per_epoch=4, epochs=10, kind="cosine")
    assert float(s(0)) == pytest.approx(0.2)
    assert float(s(20)) == pytest.approx(0.1, rel=1e-6)  # epoch 5 of 10
    w = EpochSchedule(0.1, steps_per_epoch=4, epochs=10, kind="constant", warmup_epochs=1)
    np.testing.assert_allclose(
        [float(w(i)) for i in range(5)], [0.025, 0.05, 0.075, 0.1, 0.1], rtol=1e-6
    )


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="momentum"):
        TorchSGD(0.1, momentum=1.5)
    with pytest.raises(ValueError, match="kind"):
        EpochSchedule(0.1, kind="step")


def test_epoch_learning_rates_are_the_rates_each_epoch_trains_with():
    # The docstring's example: milestone 2 makes epoch 2 the first at lr * gamma (gamma 0.1).
    np.testing.assert_allclose(
        epoch_learning_rates(0.1, epochs=4, milestones=(2,)), [0.1, 0.1, 0.01, 0.01], rtol=1e-6
    )
    np.testing.assert_allclose(epoch_learning_rates(0.2, epochs=3), [0.2] * 3, rtol=1e-6)
    np.testing.assert_allclose(
        epoch_learning_rates(0.2, epochs=4, milestones=(1, 3), gamma=0.5),
        [0.2, 0.1, 0.1, 0.05],
        rtol=1e-6,
    )
    # Cosine over 4 epochs: 0.2 * (1 + cos(pi e / 4)) / 2.
    expected = [0.2 * (1 + math.cos(math.pi * e / 4)) / 2 for e in range(4)]
    np.testing.assert_allclose(
        epoch_learning_rates(0.2, epochs=4, schedule="cosine"), expected, rtol=1e-6
    )
    np.testing.assert_allclose(
        epoch_learning_rates(0.2, epochs=2, schedule="constant", milestones=(1,)),
        [0.2, 0.2],
        rtol=1e-6,
    )


def test_schedule_defaults_and_config_are_as_documented():
    assert EpochSchedule().get_config() == {
        "initial_lr": 0.1,
        "steps_per_epoch": 1,
        "epochs": 1,
        "kind": "piecewise",
        "milestones": [],
        "gamma": 0.1,
        "warmup_epochs": 0,
    }
    # A schedule of no epochs has a cosine period of one epoch, not a division by zero.
    assert EpochSchedule(0.1, epochs=0, kind="cosine").get_config()["epochs"] == 1
    with pytest.raises(ValueError) as caught:
        EpochSchedule(0.1, steps_per_epoch=0)
    assert str(caught.value) == "`steps_per_epoch` must be >= 1; received 0"


def test_torch_sgd_defaults_config_and_refusals_are_as_documented():
    config = TorchSGD().get_config()
    assert config["name"] == "torch_sgd"
    assert float(config["learning_rate"]) == pytest.approx(0.1)
    assert (config["momentum"], config["weight_decay"], config["nesterov"]) == (0.9, 5e-4, False)
    rebuilt = TorchSGD.from_config(TorchSGD(0.2, momentum=0.5, weight_decay=0.1).get_config())
    assert (rebuilt.momentum, rebuilt.coupled_weight_decay) == (0.5, 0.1)
    # Keras's own options reach the base class; the buffers are named as PyTorch names them.
    assert TorchSGD(0.1, clipnorm=1.0).get_config()["clipnorm"] == 1.0
    optimizer = TorchSGD(0.1)
    optimizer.build([keras.Variable(np.zeros(2, np.float32), name="w")])
    assert [v.name for v in optimizer.variables[-1:]] == ["w_momentum_buffer"]
    with pytest.raises(ValueError) as caught:
        TorchSGD(0.1, momentum=1.0)
    assert str(caught.value) == "`momentum` must be in [0, 1); received momentum=1.0"
    with pytest.raises(ValueError) as caught:
        TorchSGD(0.1, weight_decay=-1.0)
    assert str(caught.value) == "`weight_decay` must be >= 0; received weight_decay=-1.0"


def test_make_optimizer_is_torch_sgd_on_the_epoch_schedule_of_its_settings():
    optimizer = make_optimizer(
        0.2,
        momentum=0.5,
        weight_decay=0.01,
        nesterov=True,
        steps_per_epoch=3,
        epochs=4,
        schedule="piecewise",
        milestones=(1, 3),
        gamma=0.5,
        warmup_epochs=1,
    )
    config = optimizer.get_config()
    assert (config["momentum"], config["weight_decay"], config["nesterov"]) == (0.5, 0.01, True)
    assert config["learning_rate"]["config"] == {
        "initial_lr": 0.2,
        "steps_per_epoch": 3,
        "epochs": 4,
        "kind": "piecewise",
        "milestones": [1, 3],
        "gamma": 0.5,
        "warmup_epochs": 1,
    }
    cosine = make_optimizer(
        0.2,
        momentum=0.9,
        weight_decay=0.0,
        nesterov=False,
        steps_per_epoch=1,
        epochs=4,
        schedule="cosine",
    )
    assert cosine.get_config()["learning_rate"]["config"]["kind"] == "cosine"
    assert cosine.get_config()["learning_rate"]["config"]["gamma"] == 0.1  # the default
    defaults = make_optimizer(
        0.2, momentum=0.9, weight_decay=0.0, nesterov=False, steps_per_epoch=1, epochs=4
    ).get_config()["learning_rate"]["config"]
    assert (defaults["kind"], defaults["milestones"], defaults["warmup_epochs"]) == (
        "piecewise",
        [],
        0,
    )

"""TorchSGD against torch.optim.SGD itself; epoch schedules."""

import keras
import numpy as np
import pytest

from dgad_tf.optim import EpochSchedule, TorchSGD

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

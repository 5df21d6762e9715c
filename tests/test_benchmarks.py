"""The benchmarks compare equal work: their PyTorch steps must agree with ours."""

import importlib.util
import pathlib

import numpy as np
import pytest

torch = pytest.importorskip("torch")

BENCHMARKS = pathlib.Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def vs_pytorch():
    return _load("vs_pytorch")


def test_one_dgad_step_agrees_with_pytorch(vs_pytorch):
    # Two PGD steps on a batch of 4: loss, updated weights and the attack itself must match.
    check = vs_pytorch.check_one_step("small-cnn", "small-cnn", batch_size=4, steps=2, seed=3)
    assert check["params_ours"] == check["params_torch"]
    assert check["loss_abs_diff"] <= vs_pytorch.LOSS_TOLERANCE
    assert check["weights_ok"], check["weight_failures"]
    # Far inside the benchmark's tolerance on this small network, whose logits are well apart.
    assert check["update_max_rel_diff"] < 1e-4
    assert check["max_abs_diff"]["trainable"] < 1e-5
    assert check["max_abs_diff"]["moving_mean"] < 1e-5
    assert check["one_step_fraction_differing"] == 0.0
    assert check["x_adv_fraction_differing"] == 0.0
    assert abs(check["attack_objective_ours"] - check["attack_objective_torch"]) < 1e-4
    assert check["passed"]


def test_check_fails_when_the_steps_differ(vs_pytorch, monkeypatch):
    # A different PCR weight on the PyTorch side must be caught, so the check can fail.
    original = vs_pytorch.dgad_loss_torch
    monkeypatch.setattr(
        vs_pytorch, "dgad_loss_torch", lambda *a, **k: original(*a, beta=2.0) + 1e-3
    )
    check = vs_pytorch.check_one_step("small-cnn", "small-cnn", batch_size=4, steps=1, seed=3)
    assert not check["passed"]


def test_torch_dgad_loss_matches_ours(vs_pytorch):
    # The PyTorch loss of the benchmark against dgad_tf.losses.dgad_loss, with MAP and ELS hit.
    from dgad_tf.losses import dgad_loss

    rng = np.random.default_rng(0)
    logits = [rng.normal(size=(16, 10)).astype(np.float32) * 3 for _ in range(4)]
    labels = rng.integers(0, 10, size=16)
    ours = float(dgad_loss(*logits, labels)["total"])
    theirs = float(
        vs_pytorch.dgad_loss_torch(*(torch.from_numpy(v) for v in logits), torch.from_numpy(labels))
    )
    assert abs(ours - theirs) < 1e-6

"""A user's own `MethodLoss` subclass trains through `AdversarialDistiller` and through `fit` with
its dotted class path (issue 29): the method is its loss object, wherever it is defined."""

import os
import pathlib
import sys

import keras
import numpy as np
import pytest
import yaml
from subprocesses import run_command
from user_losses import SmoothedAT

from dgad_tf import losses
from dgad_tf.attacks import PGD
from dgad_tf.config import ConfigError, config_with_overrides
from dgad_tf.distiller import AdversarialDistiller
from dgad_tf.optim import TorchSGD

REPO = pathlib.Path(__file__).resolve().parents[1]
TESTS = pathlib.Path(__file__).resolve().parent


def net(name):
    keras.utils.set_random_seed(0)  # the same initial weights every time
    inputs = keras.Input((6, 6, 1))
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(4)(x), name=name)


def one_step(loss):
    distiller = AdversarialDistiller(
        student=net("student"), loss=loss, attack=PGD(eps=0.1, step_size=0.05, steps=2), seed=3
    )
    distiller.compile(optimizer=TorchSGD(0.1, momentum=0.9))
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (16, 6, 6, 1)).astype(np.float32)
    y = rng.integers(0, 4, 16).astype(np.int64)
    logs = distiller.train_on_batch(x, y, return_dict=True)
    return distiller, logs


def test_a_users_loss_trains_through_the_distiller_as_its_builtin_twin():
    # Without smoothing the user's loss is PGD-AT's: same attack (CE, uniform start), same
    # forwards, same loss; one step from the same weights must land on the same weights.
    mine, my_logs = one_step(SmoothedAT(smoothing=0.0))
    builtin, builtin_logs = one_step(losses.PGDAT())
    assert mine.attack_start == builtin.attack_start == "uniform"
    assert my_logs["loss"] == pytest.approx(builtin_logs["loss"], rel=1e-6)
    assert my_logs["ce_adv"] == pytest.approx(builtin_logs["loss"], rel=1e-6)  # its own term
    for a, b in zip(mine.student.get_weights(), builtin.student.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    # Smoothing changes the loss, not the plain cross-entropy it logs beside it.
    smoothed, smoothed_logs = one_step(SmoothedAT(smoothing=0.5))
    assert smoothed_logs["ce_adv"] == pytest.approx(builtin_logs["loss"], rel=1e-6)
    assert smoothed_logs["loss"] != pytest.approx(builtin_logs["loss"], rel=1e-3)


def test_a_users_loss_is_asked_whether_it_takes_a_teacher():
    with pytest.raises(ValueError, match="SmoothedAT trains without a teacher"):
        AdversarialDistiller(teacher=net("teacher"), student=net("student"), loss=SmoothedAT())


def test_a_config_names_a_users_loss_by_its_dotted_path_and_holds_its_fields():
    cfg = config_with_overrides(
        {"method": {"name": "user_losses.SmoothedAT", "smoothing": 0.2}}, []
    )
    assert cfg.method.loss == SmoothedAT(smoothing=0.2)
    assert cfg.method.to_dict() == {
        "name": "user_losses.SmoothedAT",
        "reference_forwards": False,
        "smoothing": 0.2,
    }
    with pytest.raises(ConfigError, match="known keys: name, reference_forwards, smoothing"):
        config_with_overrides({"method": {"name": "user_losses.SmoothedAT", "beta": 6.0}}, [])
    with pytest.raises(ConfigError, match="cannot import 'Missing' from 'user_losses'"):
        config_with_overrides({}, ["method.name=user_losses.Missing"])
    with pytest.raises(ConfigError, match="must be a dataclass subclass of"):
        config_with_overrides({}, ["method.name=user_losses.CE_TO_LABELS"])


def test_fit_trains_a_users_loss_named_by_its_dotted_path(tmp_path):
    run_dir = tmp_path / "run"
    settings = [
        "data.source=digits",
        "data.train_limit=96",
        "model.student=small-cnn",
        "method.name=user_losses.SmoothedAT",
        "method.smoothing=0.2",
        "attack.eps=0.1",
        "attack.step_size=0.05",
        "attack.steps=2",
        "optimizer.milestones=[]",
        "train.epochs=1",
        "train.batch_size=48",
        "train.val_robust_n=48",
        "train.val_robust_steps=1",
        "eval.n=48",
        "eval.attacks=[clean]",
        "output.tensorboard=false",
        f"output.dir={run_dir}",
    ]
    command = [sys.executable, "-m", "dgad_tf.fit", "--quiet"]
    for item in settings:
        command += ["--set", item]
    path = os.pathsep.join([str(REPO), str(TESTS), os.environ.get("PYTHONPATH", "")])
    env = dict(os.environ, PYTHONPATH=path, TF_CPP_MIN_LOG_LEVEL="3")
    result = run_command(command, cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    written = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert written["method"] == {
        "name": "user_losses.SmoothedAT",
        "reference_forwards": False,
        "smoothing": 0.2,
    }
    header = (run_dir / "log.csv").read_text().splitlines()[0].split(",")
    assert "ce_adv" in header  # the user's own logged term

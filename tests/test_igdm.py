"""IGDM (Lee et al., ICLR 2025) as a term any teacher-based method's loss takes (issue 30).

The truth is a NumPy transcription of the reference expression, HongsinLee/saad igdm.py:57-59:
`KLDivLoss(reduction="batchmean")(log_softmax(s(x+δ) - s(x-δ)), softmax(t(x+δ) - t(x-δ)))`,
weighted by `igdm_alpha * epoch / E` with `epoch` counted from 1 (igdm.py:43), and its gradient
written out by hand: d/d(s(x+δ)) of the batch-mean KL(p‖q) is (q - p) / B.
"""

import os
import pathlib
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
import yaml
from subprocesses import run_command

from dgad_tf import build, losses
from dgad_tf.attacks import PGD
from dgad_tf.config import ConfigError, config_from_dict, with_values
from dgad_tf.distiller import AdversarialDistiller
from dgad_tf.losses import DGAD, IGDM, TRADES, AdaAD, AdaIAD
from dgad_tf.optim import TorchSGD

REPO = pathlib.Path(__file__).resolve().parents[1]


def _softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def reference_term(s_plus, s_minus, t_plus, t_minus, alpha, epoch_from_1, total):
    """igdm.py:57-59 in NumPy (float64): alpha·(epoch/E)·KL(p_t ‖ p_s), summed over the batch
    and divided by its size; and d(term)/d(s_plus) (the negative for s_minus)."""
    p = _softmax(np.float64(t_plus) - t_minus)
    q = _softmax(np.float64(s_plus) - s_minus)
    batch = len(p)
    kl = np.sum(p * (np.log(p) - np.log(q))) / batch
    weight = alpha * epoch_from_1 / total
    return weight * kl, weight * (q - p) / batch


def _logits(seed, shape=(6, 5)):
    return np.random.default_rng(seed).normal(0, 2, shape).astype(np.float32)


def _forwards():
    return {
        "s_clean": _logits(1),
        "s_adv": _logits(2),
        "s_mirror": _logits(3),
        "t_clean": _logits(4),
        "t_adv": _logits(5),
        "t_mirror": _logits(6),
        "y": np.array([0, 1, 2, 3, 4, 0], np.int32),
    }


@pytest.mark.parametrize("epoch", [0, 3, 6])
def test_the_term_and_its_gradient_equal_the_reference_expression(epoch):
    f = {k: tf.constant(v) for k, v in _forwards().items()}
    loss = IGDM(base=AdaAD(), alpha=1.5, total_epochs=7)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch([f["s_adv"], f["s_mirror"], f["t_adv"], f["t_mirror"]])
        terms = loss(f, global_batch_size=6, epoch=epoch)
    # The 0-based epoch e is the reference's e + 1: the ramp is 1/7, 4/7, 7/7 here.
    value, grad = reference_term(
        f["s_adv"].numpy(), f["s_mirror"].numpy(), f["t_adv"].numpy(), f["t_mirror"].numpy(),
        alpha=1.5, epoch_from_1=epoch + 1, total=7,
    )  # fmt: skip
    np.testing.assert_allclose(terms["igdm"].numpy(), value, rtol=2e-6)
    base = AdaAD()(f, global_batch_size=6)["total"]
    np.testing.assert_allclose((terms["total"] - base).numpy(), value, rtol=2e-5, atol=1e-7)
    np.testing.assert_allclose(
        tape.gradient(terms["igdm"], f["s_adv"]).numpy(), grad, rtol=1e-5, atol=1e-8
    )
    np.testing.assert_allclose(
        tape.gradient(terms["igdm"], f["s_mirror"]).numpy(), -grad, rtol=1e-5, atol=1e-8
    )
    # The teacher is a fixed target: no gradient reaches its logits.
    assert tape.gradient(terms["igdm"], f["t_adv"]) is None
    assert tape.gradient(terms["igdm"], f["t_mirror"]) is None
    # Its KL before weighting is logged beside it.
    np.testing.assert_allclose(terms["igdm_kl"].numpy(), value / (1.5 * (epoch + 1) / 7), rtol=2e-6)


def test_the_ramp_runs_from_one_over_e_to_one():
    f = {k: tf.constant(v) for k, v in _forwards().items()}
    loss = IGDM(base=AdaAD(), alpha=1.0, total_epochs=4)
    kl = float(loss(f, epoch=0)["igdm_kl"])
    ramp = [float(loss(f, epoch=e)["igdm"]) / kl for e in range(4)]
    np.testing.assert_allclose(ramp, [0.25, 0.5, 0.75, 1.0], rtol=1e-6)


def test_the_gradient_reaches_the_students_weights_as_the_reference_says():
    # A linear student: s(z) = zW + b, so s(x+δ) - s(x-δ) = 2δW and d(term)/dW = (2δ)ᵀ G, with G
    # the reference's gradient with respect to s(x+δ) (the bias cancels: no gradient).
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (8, 4)).astype(np.float32)
    delta = rng.uniform(-0.1, 0.1, (8, 4)).astype(np.float32)
    w = tf.Variable(rng.normal(0, 1, (4, 3)).astype(np.float32))
    b = tf.Variable(rng.normal(0, 1, (3,)).astype(np.float32))
    t_plus, t_minus = _logits(7, (8, 3)), _logits(8, (8, 3))
    loss = IGDM(base=AdaAD(), alpha=10.0, total_epochs=5)
    with tf.GradientTape() as tape:
        s_plus, s_minus = (x + delta) @ w + b, (x - delta) @ w + b
        f = dict(s_clean=x @ w + b, s_adv=s_plus, s_mirror=s_minus, t_clean=t_plus)
        f.update(t_adv=tf.constant(t_plus), t_mirror=tf.constant(t_minus))
        term = loss(f, epoch=1)["igdm"]
    grad_w, grad_b = tape.gradient(term, [w, b])
    _, g = reference_term(s_plus.numpy(), s_minus.numpy(), t_plus, t_minus, 10.0, 2, 5)
    np.testing.assert_allclose(grad_w.numpy(), (2 * delta).T.astype(np.float64) @ g, atol=2e-6)
    np.testing.assert_allclose(grad_b.numpy(), 0.0, atol=2e-6)


# ------------------------------------------------------------------ the step that feeds it


def _net(name, seed):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((6, 6, 1))
    x = keras.layers.Conv2D(6, 3, padding="same")(inputs)
    x = keras.layers.BatchNormalization()(x)  # training and inference mode differ
    x = keras.layers.ReLU()(keras.layers.GlobalAveragePooling2D()(x))
    return keras.Model(inputs, keras.layers.Dense(4)(x), name=name)


class _ShiftInTrainingMode(keras.layers.Layer):
    """Moves the logits when called in training mode, frozen or not (batch norm does not)."""

    def call(self, logits, training=None):
        return logits + tf.constant([3.0, 0.0, -1.0, 0.0]) if training else logits


def _mode_showing_teacher():
    net = _net("teacher_net", 1)
    return keras.Model(net.input, _ShiftInTrainingMode()(net.output), name="teacher")


def _batch():
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (16, 6, 6, 1)).astype(np.float32)
    return x, rng.integers(0, 4, 16).astype(np.int64)


@pytest.mark.filterwarnings("ignore:the teacher .* is at chance level")
def test_a_training_step_feeds_it_the_students_training_and_the_teachers_inference_outputs():
    teacher = _mode_showing_teacher()
    student = _net("student", 2)
    loss = IGDM(base=AdaAD(), alpha=2.0, total_epochs=4)
    attack = PGD(eps=0.2, step_size=0.1, steps=2, start="none")  # deterministic
    distiller = AdversarialDistiller(teacher=teacher, student=student, loss=loss, attack=attack)
    distiller.compile(optimizer=TorchSGD(0.0))
    x, y = _batch()
    x_adv = distiller.adversarial_examples(tf.constant(x), tf.constant(y, tf.int32)).numpy()
    x_minus = x - (x_adv - x)  # not clipped to [0, 1], as igdm.py:54,56
    assert x_minus.min() < 0
    expected, _ = reference_term(
        student(x_adv, training=True).numpy(),
        student(x_minus, training=True).numpy(),
        teacher(x_adv, training=False).numpy(),
        teacher(x_minus, training=False).numpy(),
        alpha=2.0, epoch_from_1=3, total=4,
    )  # fmt: skip
    distiller.epoch.assign(2)  # the third epoch
    logs = distiller.train_on_batch(x, y, return_dict=True)
    np.testing.assert_allclose(logs["igdm"], expected, rtol=1e-4)
    assert {"igdm", "igdm_kl", "kl_adv", "kl_clean"} <= set(logs)


def test_it_delegates_the_method_to_its_base_and_adds_the_mirrored_forward():
    for base in (AdaAD(), DGAD(), AdaIAD(), losses.RSLAD(), losses.ARD(), losses.IAD()):
        loss = IGDM(base=base, total_epochs=10)
        assert loss.ascent is base.ascent and loss.needs_teacher
        for reference in (False, True):
            assert loss.random_start(reference) == base.random_start(reference)
            forwards = loss.student_forwards(reference)
            assert forwards[: len(base.student_forwards(reference))] == tuple(
                base.student_forwards(reference)
            )
            assert forwards[-1] == losses.MIRROR
            assert any(f.kind == "adv" and f.used for f in forwards)
            assert loss.forwards_added_after_warmup(reference) == base.forwards_added_after_warmup(
                reference
            )


def test_it_refuses_a_base_without_a_teacher_and_a_run_without_its_length():
    with pytest.raises(ValueError, match="TRADES trains without one"):
        IGDM(base=TRADES())
    with pytest.raises(TypeError, match="`base` must be the loss of a method"):
        IGDM(base="adaad")
    with pytest.raises(ValueError, match="`alpha` must be"):
        IGDM(base=AdaAD(), alpha=-1.0)
    with pytest.raises(ValueError, match="`total_epochs` must be"):
        IGDM(base=AdaAD(), total_epochs=0)
    with pytest.raises(ValueError, match="give total_epochs=<the number of epochs you train>"):
        AdversarialDistiller(teacher=_net("t", 1), student=_net("s", 2), loss=IGDM(base=AdaAD()))


def test_it_serialises_with_its_base():
    loss = IGDM(base=DGAD(beta=2.0), alpha=10.0, total_epochs=30)
    config = keras.saving.serialize_keras_object(loss)
    assert keras.saving.deserialize_keras_object(config) == loss


# ------------------------------------------------------------------ config


def _cfg(method, **sections):
    return config_from_dict({"method": method, **sections})


def test_a_config_writes_it_as_the_base_method_with_an_igdm_block():
    cfg = _cfg({"name": "adaad", "kl_reduction": "class_mean", "igdm": {"alpha": 10}})
    assert cfg.method.loss == IGDM(base=AdaAD(kl_reduction="class_mean"), alpha=10.0)
    assert cfg.method.name == "adaad" and cfg.method.kl_reduction == "class_mean"
    assert cfg.method.to_dict()["igdm"] == {"alpha": 10.0, "total_epochs": None}
    assert config_from_dict(cfg.to_dict()) == cfg  # a run folder's config.yaml reads back
    # E defaults to the run's epochs; a given one is kept.
    cfg = _cfg({"name": "dgad", "igdm": {}}, train={"epochs": 12})
    assert build.method_loss(cfg) == IGDM(base=DGAD(reference_batch_size=128), total_epochs=12)
    cfg = _cfg({"name": "dgad", "igdm": {"total_epochs": 200}}, train={"epochs": 12})
    assert build.method_loss(cfg).total_epochs == 200
    # Without the block, the method as it was.
    assert _cfg({"name": "adaad"}).method.loss == AdaAD()


@pytest.mark.parametrize(
    "method, message",
    [
        ({"name": "adaad", "igdm": {"alfa": 1}}, "unknown key `method.igdm.alfa`; known keys: "),
        ({"name": "adaad", "igdm": 3}, "`method.igdm` must be a mapping"),
        ({"name": "adaad", "igdm": {"alpha": -1}}, "`method.igdm.alpha` must be"),
        ({"name": "adaad", "igdm": {"total_epochs": 2.5}}, "`method.igdm.total_epochs` must be"),
        ({"name": "trades", "igdm": {}}, "`method.igdm`: IGDM matches the student to a teacher"),
        ({"name": "adaad", "igdm_alpha": 1}, "known keys: name, reference_forwards, alpha, "),
    ],
)
def test_config_errors_name_the_key(method, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("[", r"\[")):
        _cfg(method)


def test_the_search_space_takes_igdms_alpha():
    space = {"method.igdm.alpha": {"type": "float", "min": 0.5, "max": 10.0}}
    cfg = _cfg({"name": "adaad", "igdm": {}}, tune={"space": space})
    assert with_values(cfg, {"method.igdm.alpha": 4.0}).method.loss.alpha == 4.0
    with pytest.raises(ConfigError, match="tune.space.method.igdm.alpha"):
        _cfg({"name": "adaad", "igdm": {}}, tune={"space": {"method.igdm.alpha": {
            "type": "float", "min": -1.0, "max": 1.0}}})  # fmt: skip
    with pytest.raises(ConfigError, match="`method.igdm.alpha` is not a config field"):
        _cfg({"name": "adaad"}, tune={"space": space})


def test_the_igdm_refusals_say_what_to_do():
    with pytest.raises(ConfigError) as caught:
        _cfg({"name": "trades", "igdm": {}})
    assert str(caught.value) == (
        "`method.igdm`: IGDM matches the student to a teacher, but method trades trains without "
        "one; use it with a method that distils (adaad, adaiad, rslad, ard, iad, dgad)"
    )
    # The base method is the section's own `name`, not an IGDM option.
    with pytest.raises(ConfigError) as caught:
        _cfg({"name": "adaad", "igdm": {"base": "dgad"}})
    assert str(caught.value) == "unknown key `method.igdm.base`; known keys: alpha, total_epochs"
    space = {"method.igdm.base": {"type": "choice", "values": ["dgad"]}}
    with pytest.raises(ConfigError, match="`method.igdm.base` is not a config field"):
        _cfg({"name": "adaad", "igdm": {}}, tune={"space": space})


def test_a_trial_of_another_method_takes_igdms_searched_alpha_when_it_distils():
    base = _cfg({"name": "adaad", "igdm": {"alpha": 2.0, "total_epochs": 200}})
    trial = with_values(base, {"method.name": "dgad", "method.igdm.alpha": 4.0})
    assert trial.method.loss == IGDM(base=DGAD(), alpha=4.0)  # another method's options: its own
    trial = with_values(base, {"method.name": "adaad", "method.igdm.alpha": 4.0})
    assert trial.method.loss == IGDM(base=AdaAD(), alpha=4.0, total_epochs=200)  # E kept
    trial = with_values(base, {"method.name": "trades", "method.igdm.alpha": 4.0})
    assert trial.method.loss == TRADES()  # no teacher: the searched alpha is not its own


# ------------------------------------------------------------------ end to end

TINY = {
    "data": {"source": "digits", "flip": False, "train_limit": 96},
    "model": {"student": "small-cnn", "teacher": "small-cnn"},
    "attack": {"eps": 0.1, "step_size": 0.05, "steps": 2},
    "optimizer": {"lr": 0.05, "milestones": []},
    "train": {"epochs": 2, "batch_size": 48, "val_robust_n": 48, "val_robust_steps": 1},
    "eval": {"n": 48, "attacks": ["clean", "pgd3"]},
    "output": {"tensorboard": False, "quiet": True},
}


def _env():
    return dict(os.environ, PYTHONPATH=str(REPO), TF_CPP_MIN_LOG_LEVEL="3")


# End to end through the commands (subprocess fit, a small study): in the slow suite, which CI
# runs too, to keep the default suite under its 15 minutes on 2 cores.
@pytest.mark.slow
@pytest.mark.parametrize("method", ["adaad", "dgad"])
def test_fit_trains_a_method_with_igdm(tmp_path, digits_teacher, method):
    values = {**TINY, "method": {"name": method, "igdm": {"alpha": 1.0}}}
    values["model"] = {**TINY["model"], "teacher_path": str(digits_teacher)}
    values["output"] = {**TINY["output"], "dir": str(tmp_path / "run")}
    path = tmp_path / "igdm.yaml"
    path.write_text(yaml.safe_dump(values))
    command = [sys.executable, "-m", "dgad_tf.fit", "--config", str(path)]
    result = run_command(command, cwd=tmp_path, env=_env())
    assert result.returncode == 0, result.stderr[-3000:]
    written = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert written["method"]["igdm"] == {"alpha": 1.0, "total_epochs": None}
    rows = (tmp_path / "run" / "log.csv").read_text().splitlines()
    header = rows[0].split(",")
    igdm, kl = (header.index(k) for k in ("igdm", "igdm_kl"))
    logged = [[float(v) for v in row.split(",")] for row in rows[1:]]
    assert len(logged) == 2 and all(np.isfinite(r[igdm]) and r[kl] > 0 for r in logged)


@pytest.mark.slow
def test_compare_trains_methods_with_igdm(tmp_path, digits_teacher):
    values = {**TINY, "train": {**TINY["train"], "epochs": 1}}
    values["model"] = {**TINY["model"], "teacher_path": str(digits_teacher)}
    values["output"] = {**TINY["output"], "dir": str(tmp_path / "out")}
    values["study"] = {
        "methods": [
            {"name": "adaad_igdm", "method": "adaad", "set": ["method.igdm.alpha=1.0"]},
            {"name": "dgad_igdm", "method": "dgad", "set": ["method.igdm={alpha: 10.0}"]},
        ],
        "seeds": [0],
        "reference": "adaad_igdm",
        "attacks": ["clean"],
        "n": 16,
    }
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(values, sort_keys=False))
    command = [sys.executable, "-m", "dgad_tf.compare", "--config", str(path)]
    result = run_command(command, cwd=REPO, env=_env())
    assert result.returncode == 0, result.stderr[-3000:]
    cells = tmp_path / "out" / "cells"
    for cell, alpha in (("adaad_igdm_seed0", 1.0), ("dgad_igdm_seed0", 10.0)):
        written = yaml.safe_load((cells / cell / "config.yaml").read_text())
        assert written["method"]["igdm"] == {"alpha": alpha, "total_epochs": None}, cell
        assert "igdm" in (cells / cell / "log.csv").read_text().splitlines()[0].split(",")


def test_the_igdm_study_pairs_each_method_with_its_igdm_row():
    from dgad_tf import study as study_lib

    study = study_lib.load_study(REPO / "configs" / "compare_cifar10_resnet18_igdm.yaml")
    losses_by_cell = {c.entry.name: build.method_loss(c.cfg) for c in study.cells() if c.seed == 0}
    for plain in ("adaiad", "dgad"):
        paired = losses_by_cell[f"{plain}_igdm"]
        assert paired == IGDM(base=losses_by_cell[plain], alpha=1.0, total_epochs=200)
    assert study.primary == {"method": "adaiad_igdm", "versus": "adaiad", "attack": "autoattack"}

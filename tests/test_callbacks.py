"""Run-directory callbacks: the state written after an epoch is exactly what `restore` loads,
best-so-far checkpoints survive a resume, and the CSV log's columns."""

import json

import keras
import numpy as np
import pytest

from dgad_tf.attacks import PGD
from dgad_tf.callbacks import EpochCSVLogger, RunCheckpoints
from dgad_tf.distiller import AdversarialDistiller
from dgad_tf.losses import PGDAT
from dgad_tf.optim import EpochSchedule, TorchSGD
from dgad_tf.rundir import STATE_FILE, read_state_meta


def _distiller(seed):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((4, 4, 1))
    # Fixed layer names: the two students' weights are compared path by path.
    h = keras.layers.Dense(6, name="hidden")(keras.layers.Flatten()(inputs))
    h = keras.layers.ReLU()(keras.layers.BatchNormalization(name="bn")(h))
    student = keras.Model(inputs, keras.layers.Dense(3, name="logits")(h), name="student")
    distiller = AdversarialDistiller(
        student=student,
        loss=PGDAT(),
        attack=PGD(eps=0.05, step_size=0.02, steps=1, start="none"),
        val_robust_steps=0,
    )
    # Two steps per epoch, rate x0.1 from epoch 1: after two epochs the rate is 0.01.
    schedule = EpochSchedule(0.1, steps_per_epoch=2, epochs=2, milestones=(1,))
    distiller.compile(optimizer=TorchSGD(schedule, momentum=0.9, weight_decay=5e-4))
    return distiller


def _state(distiller):
    optimizer = distiller.optimizer
    return {
        "weights": {w.path: np.array(w) for w in distiller.student.weights},
        "optimizer": {v.path: np.array(v) for v in optimizer.variables},
        "iterations": int(optimizer.iterations),
        "learning_rate": float(optimizer.learning_rate),
    }


def test_restore_brings_back_weights_momentum_rate_and_step_count(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (16, 4, 4, 1)).astype(np.float32)
    y = rng.integers(0, 3, 16)
    trained = _distiller(seed=0)
    trained.fit(x, y, batch_size=8, epochs=2, callbacks=[RunCheckpoints(tmp_path)], verbose=0)
    saved = _state(trained)
    assert saved["iterations"] == 4 and abs(saved["learning_rate"] - 0.01) < 1e-9
    assert any(np.abs(v).sum() > 0 for k, v in saved["optimizer"].items() if "momentum" in k)

    fresh = _distiller(seed=1)
    assert RunCheckpoints(tmp_path).restore(fresh) == 2
    restored = _state(fresh)
    assert restored["weights"].keys() == saved["weights"].keys()
    for path, value in saved["weights"].items():  # batch-norm moving statistics included
        np.testing.assert_array_equal(restored["weights"][path], value, err_msg=path)
    assert restored["optimizer"].keys() == saved["optimizer"].keys()
    for path, value in saved["optimizer"].items():
        np.testing.assert_array_equal(restored["optimizer"][path], value, err_msg=path)
    assert restored["iterations"] == saved["iterations"]
    assert restored["learning_rate"] == saved["learning_rate"]


def test_restore_of_an_empty_run_directory_starts_from_epoch_zero(tmp_path):
    fresh = _distiller(seed=1)
    before = _state(fresh)["weights"]
    assert RunCheckpoints(tmp_path).restore(fresh) == 0
    for path, value in before.items():
        np.testing.assert_array_equal(_state(fresh)["weights"][path], value)


def _model():
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile(optimizer=TorchSGD(0.1, momentum=0.9))
    model.optimizer.build(model.trainable_variables)
    return model


def _saved_kernel(path):
    return keras.models.load_model(path, compile=False).layers[-1].get_weights()[0]


def _set_kernel(model, value):
    kernel, bias = model.layers[-1].get_weights()
    model.layers[-1].set_weights([np.full_like(kernel, value), bias])


def test_best_test_checkpoint_survives_a_resume(tmp_path):
    best_file = tmp_path / "student_best_test_robust.keras"
    model = _model()
    checkpoints = RunCheckpoints(tmp_path)
    checkpoints.set_model(model)
    _set_kernel(model, 1.0)
    checkpoints.on_epoch_end(0, {"test_robust_accuracy": 0.5})
    _set_kernel(model, 2.0)
    checkpoints.on_epoch_end(1, {"test_robust_accuracy": 0.4})
    np.testing.assert_array_equal(_saved_kernel(best_file), 1.0)

    # A new process (after a kill) restores the best so far: a worse epoch leaves the file alone.
    model = _model()
    resumed = RunCheckpoints(tmp_path)
    assert resumed.restore(model) == 2
    assert resumed.best["test_robust_accuracy"] == 0.5
    assert resumed.best_epoch["test_robust_accuracy"] == 1
    resumed.set_model(model)
    _set_kernel(model, 3.0)
    resumed.on_epoch_end(2, {"test_robust_accuracy": 0.45})
    np.testing.assert_array_equal(_saved_kernel(best_file), 1.0)
    _set_kernel(model, 4.0)
    resumed.on_epoch_end(3, {"test_robust_accuracy": 0.6})
    np.testing.assert_array_equal(_saved_kernel(best_file), 4.0)
    meta = read_state_meta(tmp_path)
    assert meta["best"]["test_robust_accuracy"] == 0.6 and meta["epoch"] == 4
    assert meta["best_epoch"]["test_robust_accuracy"] == 4
    assert not (tmp_path / "student_best_robust.keras").exists()  # no val metric was logged


def test_a_state_from_before_test_selection_still_resumes(tmp_path):
    model = _model()
    checkpoints = RunCheckpoints(tmp_path)
    checkpoints.set_model(model)
    checkpoints.on_epoch_end(0, {"val_robust_accuracy": 0.3})
    # Rewrite the state as an older version wrote it: two tracked metrics, no best epochs.
    state = tmp_path / STATE_FILE
    with np.load(state) as saved:
        arrays = {k: saved[k] for k in saved.files}
    meta = json.loads(str(arrays["meta"]))
    meta["best"] = {"val_robust_accuracy": 0.3, "val_clean_accuracy": -np.inf}
    del meta["best_epoch"]
    arrays["meta"] = np.array(json.dumps(meta))
    np.savez(state, **arrays)
    resumed = RunCheckpoints(tmp_path)
    assert resumed.restore(_model()) == 1
    assert resumed.best["val_robust_accuracy"] == 0.3
    assert resumed.best["test_robust_accuracy"] == -np.inf


def test_csv_log_of_a_run_without_validation_has_no_val_columns(tmp_path):
    logs = {"loss": 1.0, "test_robust_accuracy": 0.5}
    without = EpochCSVLogger(str(tmp_path / "a.csv"), validates=False)
    keras_default = EpochCSVLogger(str(tmp_path / "b.csv"))
    for logger in (without, keras_default):
        logger.set_model(_model())
        logger.on_train_begin()
        logger.on_epoch_end(0, dict(logs))
        logger.on_train_end()
    assert (tmp_path / "a.csv").read_text().splitlines()[0] == "epoch,loss,test_robust_accuracy"
    # With validation expected later (every N epochs), Keras's own columns are kept.
    assert "val_loss" in (tmp_path / "b.csv").read_text().splitlines()[0]


def test_periodic_test_pgd_logs_nan_off_its_epochs_and_counts_adversarial_hits(tmp_path):
    import tensorflow as tf

    from dgad_tf.callbacks import PeriodicTestPGD

    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (20, 4, 4, 1)).astype(np.float32)
    y = rng.integers(0, 3, 20)
    keras.utils.set_random_seed(0)
    inputs = keras.Input((4, 4, 1))
    model = keras.Model(inputs, keras.layers.Dense(3)(keras.layers.Flatten()(inputs)))
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(8)
    # eps 0: the adversarial image is the clean one, so the count is the clean accuracy.
    callback = PeriodicTestPGD(
        dataset, eps=0.0, step_size=0.0, steps=2, evaluated_epochs=lambda e: e % 2 == 0
    )
    callback.set_model(model)
    logs = {}
    callback.on_epoch_end(0, logs)  # epoch 1: not evaluated
    assert np.isnan(logs["test_pgd20_accuracy"])
    callback.on_epoch_end(1, logs)
    clean = np.mean(np.argmax(model.predict(x, verbose=0), -1) == y)
    assert logs["test_pgd20_accuracy"] == pytest.approx(clean)
    # A real attack can only lower it.
    attacked = PeriodicTestPGD(
        dataset, eps=0.5, step_size=0.1, steps=10, evaluated_epochs=lambda e: True
    )
    assert attacked.accuracy(model) <= clean
    # NaN never beats a best value: the epoch without evaluation keeps no checkpoint.
    model.compile(optimizer=TorchSGD(0.1))
    model.optimizer.build(model.trainable_variables)
    checkpoints = RunCheckpoints(tmp_path)
    checkpoints.set_model(model)
    checkpoints.on_epoch_end(0, {"test_pgd20_accuracy": float("nan")})
    assert not (tmp_path / "student_best_test_pgd20.keras").exists()
    checkpoints.on_epoch_end(1, {"test_pgd20_accuracy": 0.3})
    assert (tmp_path / "student_best_test_pgd20.keras").exists()
    assert checkpoints.best_epoch["test_pgd20_accuracy"] == 2


def test_rslad_selection_counts_a_pgd_hit_even_when_the_clean_image_is_wrong():
    """RSLAD counts a test point when its PGD-20 image is classified right, its clean
    prediction unasked (zibojia/RSLAD resnet18_rslad_cifar10.py:72-78). The model's gradient is
    reversed here, so PGD moves clean errors near the boundary over to the right class."""
    import tensorflow as tf

    from dgad_tf.callbacks import PeriodicTestPGD

    class ReversedGradient(keras.layers.Layer):
        def call(self, inputs):
            @tf.custom_gradient
            def identity(z):
                return tf.identity(z), lambda upstream: -upstream

            return identity(inputs)

    rng = np.random.default_rng(10)
    inputs = keras.Input((2, 2, 1))
    centred = keras.layers.Rescaling(1.0, offset=-0.5)(ReversedGradient()(inputs))
    dense = keras.layers.Dense(2, use_bias=False)
    model = keras.Model(inputs, dense(keras.layers.Flatten()(centred)))
    dense.set_weights([rng.normal(0, 1, (4, 2)).astype(np.float32)])
    x = rng.uniform(0.45, 0.55, (200, 2, 2, 1)).astype(np.float32)  # near the boundary
    predicted = np.argmax(model.predict(x, verbose=0), -1)
    y = np.where(np.arange(200) % 2 == 0, predicted, 1 - predicted)  # half wrong when clean
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(64)

    accuracy = PeriodicTestPGD.rslad(dataset, eps=8 / 255).accuracy(model)
    assert accuracy > 0.5 + 0.05  # 0.5: the clean accuracy; the hits on clean errors count

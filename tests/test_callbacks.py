"""RunCheckpoints: the state written after an epoch is exactly what `restore` loads."""

import keras
import numpy as np

from dgad_tf.callbacks import RunCheckpoints
from dgad_tf.distiller import AdversarialDistiller
from dgad_tf.optim import EpochSchedule, TorchSGD


def _distiller(seed):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((4, 4, 1))
    # Fixed layer names: the two students' weights are compared path by path.
    h = keras.layers.Dense(6, name="hidden")(keras.layers.Flatten()(inputs))
    h = keras.layers.ReLU()(keras.layers.BatchNormalization(name="bn")(h))
    student = keras.Model(inputs, keras.layers.Dense(3, name="logits")(h), name="student")
    distiller = AdversarialDistiller(student, None, method="pgd_at", eps=0.05, step_size=0.02,
                                     steps=1, attack_init="none", val_robust_steps=0)
    # Two steps per epoch, rate x0.1 from epoch 1: after two epochs the rate is 0.01.
    schedule = EpochSchedule(0.1, steps_per_epoch=2, epochs=2, milestones=(1,))
    distiller.compile(optimizer=TorchSGD(schedule, momentum=0.9, weight_decay=5e-4))
    return distiller


def _state(distiller):
    optimizer = distiller.optimizer
    return {"weights": {w.path: np.array(w) for w in distiller.student.weights},
            "optimizer": {v.path: np.array(v) for v in optimizer.variables},
            "iterations": int(optimizer.iterations),
            "learning_rate": float(optimizer.learning_rate)}


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

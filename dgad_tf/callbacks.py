"""Keras callbacks of a run: checkpoints and resumable state, the test-set selection metric,
`log.csv` and TensorBoard.

Nothing under a final file name is ever half-written: every file goes through
`rundir.atomic_write` (a temporary name in the same folder, then `os.replace`), so a process
killed mid-write leaves at worst a stray temporary file, never a truncated checkpoint.
"""

from __future__ import annotations

import json
import logging
import os
import pathlib
import shutil

import keras
import numpy as np

from dgad_tf.rundir import (
    LAST_CHECKPOINT,
    STATE_FILE,
    atomic_write,
    save_model_atomic,
)
from dgad_tf.selection import best_checkpoints

log = logging.getLogger(__name__)


class EpochCSVLogger(keras.callbacks.CSVLogger):
    """Keras's `CSVLogger`, without made-up `val_*` columns in a run that never validates.

    When the first epoch's logs hold no `val_` metric, Keras adds a `val_<name>` column for every
    metric (expecting validation every N > 1 epochs). A run without a validation split
    (`data.val_fraction=0`) would then log columns such as `val_test_robust_accuracy`, always
    "NA", that read like validation figures.

    Args:
        filename: the CSV file.
        validates: whether the run has validation data. Defaults to True.
        **kwargs: `separator`, `append` as for `keras.callbacks.CSVLogger`.
    """

    def __init__(self, filename, validates: bool = True, **kwargs):
        super().__init__(filename, **kwargs)
        self.validates = validates

    def on_epoch_end(self, epoch, logs=None):
        if self.keys is None and logs and not self.validates:
            self.keys = sorted(logs)
        # Epochs are counted from 1, as the progress bar, the resume message and the report do.
        super().on_epoch_end(epoch + 1, logs)


class EpochTensorBoard(keras.callbacks.Callback):
    """Every epoch's logs as TensorBoard scalars under the names and numbers of `log.csv`.

    Keras's own `TensorBoard` callback renames metrics (`val_robust_accuracy` becomes
    `validation/epoch_robust_accuracy`) and counts epochs from 0; this one writes each key of the
    epoch logs as is (`loss`, `val_robust_accuracy`, `test_robust_accuracy`, ...) at step
    epoch + 1, so TensorBoard, `log.csv` and docs/cli.md use one name per number.

    Args:
        log_dir: the folder of the event files (`<run>/tensorboard`).
    """

    def __init__(self, log_dir: str | os.PathLike):
        super().__init__()
        self.log_dir = str(log_dir)
        self._writer = None

    def on_epoch_end(self, epoch, logs=None):
        if not logs:
            return
        import tensorflow as tf

        if self._writer is None:
            self._writer = tf.summary.create_file_writer(self.log_dir)
        with self._writer.as_default():
            for name, value in sorted(logs.items()):
                tf.summary.scalar(name, float(value), step=epoch + 1)
        self._writer.flush()

    def on_train_end(self, logs=None):
        if self._writer is not None:
            self._writer.close()
            self._writer = None


class TestSetEvaluation(keras.callbacks.Callback):
    """Adds `test_clean_accuracy` and `test_robust_accuracy` to the epoch logs.

    The distiller's own `test_step` (clean accuracy and PGD robust accuracy: cross-entropy,
    uniform start, step eps/4, `val_robust_steps` steps) runs on a TEST-split dataset after every
    epoch, as the DGAD reference does, so that `RunCheckpoints` can keep the best-test checkpoint.
    (Every epoch, not every `val_every`: `CSVLogger` fixes its columns at the first epoch.)
    Selecting on the test set is leaky: the figures of the selected checkpoint are optimistic.
    Place this callback before `RunCheckpoints`, `CSVLogger` and `TensorBoard`, which then see
    the two values.

    Args:
        dataset: batched `(x, y)` test dataset.
    """

    __test__ = False  # a callback, not a pytest test class, whatever its name

    def __init__(self, dataset):
        super().__init__()
        self.dataset = dataset

    def on_epoch_end(self, epoch, logs=None):
        if logs is None:
            return
        results = self.model.evaluate(self.dataset, verbose=0, return_dict=True)
        logs["test_clean_accuracy"] = float(results["clean_accuracy"])
        logs["test_robust_accuracy"] = float(results["robust_accuracy"])
        log.info(
            "epoch %d on the TEST split (for test-set selection; leaky): clean %.4f, PGD %.4f",
            epoch + 1,
            logs["test_clean_accuracy"],
            logs["test_robust_accuracy"],
        )


class PeriodicTestPGD(keras.callbacks.Callback):
    """A PGD accuracy on TEST images at chosen epochs, for a reference's own selection rule.

    At the end of every epoch in `evaluated_epochs` (counted from 1) the student, in inference
    mode, is attacked with `steps` steps of PGD on the cross-entropy (step `step_size`, uniform
    start in the eps-ball, clipped to [0, 1]) and the share of adversarial images it classifies
    right is logged as `metric`; on the other epochs `metric` is logged as NaN (log.csv keeps
    one set of columns), which never beats a best value. `RunCheckpoints` keeps the best.

    `rslad()` is RSLAD's rule (zibojia/RSLAD resnet18_rslad_cifar10.py:68-80, cifar100.py:71-83):
    PGD-20, step 0.003, eps 8/255, after epoch e when e % 20 == 0 and e < 215 or e >= 215; a
    point counts when its adversarial image is classified right (its clean prediction is not
    asked, :73-78). Test-set selection is leaky: the chosen checkpoint's test figures are
    optimistic.

    Args:
        dataset: batched `(x, y)` test dataset, x in [0, 1].
        eps: the attack's L-inf radius.
        step_size: its step.
        steps: its iterations.
        evaluated_epochs: callable `epoch (from 1) -> bool`.
        metric: the log key. Defaults to "test_pgd20_accuracy".
        seed: seed of the (stateless) uniform start, the same every epoch. Defaults to 0.
    """

    def __init__(
        self,
        dataset,
        *,
        eps,
        step_size,
        steps,
        evaluated_epochs,
        metric="test_pgd20_accuracy",
        seed=0,
    ):
        super().__init__()
        self.dataset = dataset
        self.eps, self.step_size, self.steps = float(eps), float(step_size), int(steps)
        self.evaluated_epochs = evaluated_epochs
        self.metric, self.seed = metric, int(seed)
        self._attack = None

    @classmethod
    def rslad(cls, dataset, *, eps, seed=0):
        """RSLAD's rule (see the class docstring): PGD-20, step 0.003, every 20th epoch to 215."""

        def evaluated(epoch):
            return (epoch % 20 == 0 and epoch < 215) or epoch >= 215

        return cls(
            dataset, eps=eps, step_size=0.003, steps=20, evaluated_epochs=evaluated, seed=seed
        )

    def accuracy(self, student) -> float:
        """The share of test images whose PGD image `student` classifies right."""
        import tensorflow as tf

        from dgad_tf import attacks

        if self._attack is None:

            def attack(xb, yb):
                model_fn = lambda images: student(images, training=False)  # noqa: E731
                x_adv = attacks.pgd(
                    xb,
                    attacks.ce_objective(model_fn, yb),
                    eps=self.eps,
                    step_size=self.step_size,
                    steps=self.steps,
                    init="uniform",
                    seed=self.seed,
                )
                predicted = tf.argmax(model_fn(x_adv), -1, output_type=tf.int32)
                return tf.reduce_sum(tf.cast(tf.equal(predicted, yb), tf.int32))

            self._attack = tf.function(attack, reduce_retracing=True)
        correct = total = 0
        for xb, yb in self.dataset:
            yb = tf.cast(tf.reshape(yb, [-1]), tf.int32)
            correct += int(self._attack(tf.cast(xb, tf.float32), yb))
            total += int(yb.shape[0])
        return correct / max(total, 1)

    def on_epoch_end(self, epoch, logs=None):
        if logs is None:
            return
        if not self.evaluated_epochs(epoch + 1):
            logs[self.metric] = float("nan")
            return
        logs[self.metric] = self.accuracy(getattr(self.model, "student", self.model))
        log.info(
            "epoch %d on the TEST split (for test-set selection; leaky): PGD-%d %.4f",
            epoch + 1,
            self.steps,
            logs[self.metric],
        )


class RunCheckpoints(keras.callbacks.Callback):
    """Keeps the student's last and best-so-far checkpoints, and resumable state.

    After every epoch the student is saved as `student_last.keras`; when a metric of
    `dgad_tf.selection.best_checkpoints()` in the epoch logs beats its best so far, also under
    that metric's name:
    `student_best_robust.keras` (`val_robust_accuracy`), `student_best_clean.keras`
    (`val_clean_accuracy`), `student_best_test_robust.keras` (`test_robust_accuracy`, logged by
    `TestSetEvaluation`), `student_best_test_pgd20.keras` (`test_pgd20_accuracy`, logged by
    `PeriodicTestPGD`). The training state (student weights, optimiser variables, the finished
    epoch, the best values and the epochs that reached them) goes to one file,
    `train_state.npz`, replaced atomically, so that `restore()` lets a re-run continue after the
    last completed epoch with the same bests. The state also records the run's config, so a
    run folder that has lost its `config.yaml` can still be resumed (`rundir.check_run_dir`).

    Args:
        run_dir: folder of the run (a non-chief worker's is its own scratch folder).
        config_yaml: the run's resolved config (`Config.to_yaml()`), recorded in the state.
            Defaults to None (nothing recorded).
    """

    def __init__(self, run_dir: str | os.PathLike, config_yaml: str | None = None):
        super().__init__()
        self.run_dir = pathlib.Path(run_dir)
        self.config_yaml = config_yaml
        # Every registered rule's metric, so a rule registered before the run is kept too.
        self.checkpoints = best_checkpoints()
        self.best = {key: -np.inf for key in self.checkpoints}
        # 1-based epoch at which each best was reached (0: not yet).
        self.best_epoch = {key: 0 for key in self.checkpoints}
        self.completed_epochs = 0

    # The distiller's student is what users keep; the teacher is saved elsewhere.
    def _student(self):
        return getattr(self.model, "student", self.model)

    def _saveable_student(self):
        # A mixed-precision run's checkpoints are float32 networks like any other.
        from dgad_tf.precision import with_policy

        return with_policy(self._student(), "float32")

    def restore(self, distiller: keras.Model) -> int:
        """Load saved state into `distiller` (optimizer must be set); returns epochs done."""
        state_path = self.run_dir / STATE_FILE
        if not state_path.exists():
            return 0
        with np.load(state_path) as state:
            meta = json.loads(str(state["meta"]))
            student_weights = [state[f"student_{i}"] for i in range(meta["num_student"])]
            optimizer_values = [state[f"optimizer_{i}"] for i in range(meta["num_optimizer"])]
        student = getattr(distiller, "student", distiller)
        student.set_weights(student_weights)
        optimizer = distiller.optimizer
        optimizer.build(student.trainable_variables)
        if len(optimizer.variables) != len(optimizer_values):
            raise ValueError(
                f"{self.run_dir / STATE_FILE} holds {len(optimizer_values)} optimiser "
                f"variables; this optimiser has {len(optimizer.variables)}"
            )
        for variable, value in zip(optimizer.variables, optimizer_values):
            variable.assign(value)
        # States written before a metric was tracked lack its entry; it keeps its initial value.
        self.best.update({k: float(v) for k, v in meta["best"].items()})
        self.best_epoch.update({k: int(v) for k, v in meta.get("best_epoch", {}).items()})
        self.completed_epochs = int(meta["epoch"])
        log.info("resumed %s after epoch %d", self.run_dir, self.completed_epochs)
        return self.completed_epochs

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        self.completed_epochs = epoch + 1
        names = []
        for key, name in self.checkpoints.items():
            value = logs.get(key)
            if value is not None and float(value) > self.best[key]:
                self.best[key] = float(value)
                self.best_epoch[key] = self.completed_epochs
                names.append(name)
        names.append(LAST_CHECKPOINT)
        # One save per epoch (it rebuilds the network with Keras's batch norm, see
        # `dgad_tf.models.saving`); the other names of this epoch are copies of that file.
        first = self.run_dir / names[0]
        save_model_atomic(self._saveable_student(), first)
        for name in names[1:]:
            atomic_write(self.run_dir / name, lambda tmp: shutil.copyfile(first, tmp))
        self._save_state()

    def _save_state(self):
        student = self._student()
        arrays = {f"student_{i}": np.asarray(w) for i, w in enumerate(student.get_weights())}
        optimizer_vars = self.model.optimizer.variables
        arrays.update({f"optimizer_{i}": np.asarray(v) for i, v in enumerate(optimizer_vars)})
        meta = {
            "epoch": self.completed_epochs,
            "num_student": len(student.get_weights()),
            "num_optimizer": len(optimizer_vars),
            "best": self.best,
            "best_epoch": self.best_epoch,
        }
        if self.config_yaml is not None:
            meta["config"] = self.config_yaml
        # One file for weights and epoch counter, so they can never disagree after a kill.
        arrays["meta"] = np.array(json.dumps(meta))
        atomic_write(self.run_dir / STATE_FILE, lambda tmp: np.savez(tmp, **arrays))

"""Run-directory callbacks: atomic student checkpoints and resumable training state.

Nothing under a final file name is ever half-written: each file is written under a temporary name
in the same folder and moved into place with `os.replace`, which is atomic on POSIX file systems.
A process killed mid-write leaves at worst a stray temporary file, never a truncated checkpoint.
"""

from __future__ import annotations

import json
import logging
import os
import pathlib
import tempfile

import keras
import numpy as np

log = logging.getLogger(__name__)

STATE_FILE = "train_state.npz"


def atomic_write(path: str | os.PathLike, write_fn) -> None:
    """Call `write_fn(tmp_path)` and move the result to `path` atomically.

    The temporary file keeps `path`'s suffix (Keras checks `.keras`/`.h5` suffixes) and lives in
    the same folder, so the final `os.replace` never crosses file systems.
    """
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix="".join(path.suffixes) or ".tmp",
                               dir=path.parent)
    os.close(fd)
    os.unlink(tmp)  # writers such as keras refuse nothing, but some want to create the file
    try:
        write_fn(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write `text` to `path` atomically."""
    atomic_write(path, lambda tmp: pathlib.Path(tmp).write_text(text))


def save_model_atomic(model: keras.Model, path: str | os.PathLike) -> None:
    """`model.save(path)` without ever leaving a partial `.keras` file under `path`."""
    atomic_write(path, lambda tmp: model.save(tmp))


class RunCheckpoints(keras.callbacks.Callback):
    """Keeps the student's last, best-robust and best-clean checkpoints, and resumable state.

    After every epoch the student is saved as `student_last.keras`; when `val_robust_accuracy`
    (or `val_clean_accuracy`) beats its best so far, also as `student_best_robust.keras`
    (`student_best_clean.keras`). The training state (student weights, optimiser variables, the
    finished epoch and the best values) goes to one file, `train_state.npz`, replaced atomically,
    so that `restore()` lets a re-run continue after the last completed epoch.

    Args:
        run_dir: folder of the run.
        write: whether this process writes (False on non-chief workers). Default True.
    """

    def __init__(self, run_dir: str | os.PathLike, write: bool = True):
        super().__init__()
        self.run_dir = pathlib.Path(run_dir)
        self.write = write
        self.best = {"val_robust_accuracy": -np.inf, "val_clean_accuracy": -np.inf}
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
            raise ValueError(f"{self.run_dir / STATE_FILE} holds {len(optimizer_values)} optimiser "
                             f"variables; this optimiser has {len(optimizer.variables)}")
        for variable, value in zip(optimizer.variables, optimizer_values):
            variable.assign(value)
        self.best = {k: float(v) for k, v in meta["best"].items()}
        self.completed_epochs = int(meta["epoch"])
        log.info("resumed %s after epoch %d", self.run_dir, self.completed_epochs)
        return self.completed_epochs

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        self.completed_epochs = epoch + 1
        if not self.write:
            return
        student = self._saveable_student()
        for key, name in (("val_robust_accuracy", "student_best_robust.keras"),
                          ("val_clean_accuracy", "student_best_clean.keras")):
            value = logs.get(key)
            if value is not None and float(value) > self.best[key]:
                self.best[key] = float(value)
                save_model_atomic(student, self.run_dir / name)
        save_model_atomic(student, self.run_dir / "student_last.keras")
        self._save_state()

    def _save_state(self):
        student = self._student()
        arrays = {f"student_{i}": np.asarray(w) for i, w in enumerate(student.get_weights())}
        optimizer_vars = self.model.optimizer.variables
        arrays.update({f"optimizer_{i}": np.asarray(v) for i, v in enumerate(optimizer_vars)})
        meta = {"epoch": self.completed_epochs, "num_student": len(student.get_weights()),
                "num_optimizer": len(optimizer_vars), "best": self.best}
        # One file for weights and epoch counter, so they can never disagree after a kill.
        arrays["meta"] = np.array(json.dumps(meta))
        atomic_write(self.run_dir / STATE_FILE, lambda tmp: np.savez(tmp, **arrays))

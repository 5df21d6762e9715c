"""The run folder and the folders like it: what they hold, how they are written, who writes.

File names (`config.yaml`, checkpoints, `train_state.npz`, `log.csv`), atomic writes, the
same-config guard, which checkpoint `train.select` names, path resolution and hashes live here;
everything that reads or writes a run folder asks this module.

One process writes a folder at a time: run folders, search folders, export base paths.

A writer takes an exclusive advisory lock (`fcntl.flock`) on `<folder>/.lock` and holds it until
it finishes. A second writer is refused at once with `FolderBusy`, naming the folder and the
process that holds it. The operating system releases the lock when the holder exits, however it
exits (a `kill -9` included), so a lock can never go stale; a finished writer removes the
`.lock` file, a killed one leaves it behind, unlocked and harmless.

Example:
    >>> with FolderLock("runs/quickstart", "output.dir"):
    ...     ...  # write checkpoints, logs, the report
"""

from __future__ import annotations

import csv
import fcntl
import hashlib
import json
import logging
import os
import pathlib
import tempfile
import zipfile
from typing import TYPE_CHECKING

import numpy as np
import yaml

from dgad_tf import selection as selection_rules
from dgad_tf.config import Config, ConfigError, load_config

if TYPE_CHECKING:
    import keras

log = logging.getLogger(__name__)

LOCK_FILE = ".lock"
CONFIG_FILE = "config.yaml"
REPORT_FILE = "report.json"
LOG_FILE = "log.csv"
TEACHER_FILE = "teacher.keras"
STATE_FILE = "train_state.npz"
LAST_CHECKPOINT = "student_last.keras"


class RunError(ValueError):
    """The run cannot start as configured (bad data, teacher, or run folder)."""


class FolderBusy(RuntimeError):
    """Another process is writing the folder."""


class FolderLock:
    """An exclusive lock on `folder` (created if missing) for the life of a `with` block.

    Args:
        folder: the folder to lock.
        what: how the folder is named to the user (e.g. "output.dir"), for the error message.
            Defaults to "folder".
    """

    def __init__(self, folder: str | os.PathLike, what: str = "folder"):
        self.folder = pathlib.Path(folder)
        self.what = what
        self._handle = None

    def acquire(self) -> "FolderLock":
        path = self.folder / LOCK_FILE
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            handle = open(path, "a+")
        except OSError as err:  # a read-only file system, no permission, a file in the path
            raise RunError(
                f"{self.what} {self.folder} cannot be written ({err.strerror or err}); "
                "choose a folder this process may create files in"
            ) from None
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.seek(0)
                holder = handle.read().strip() or "another process"
                handle.close()
                raise FolderBusy(
                    f"{self.what} {self.folder} is being written by {holder}; wait "
                    "for it to finish or choose another folder"
                ) from None
            # The holder before us may have removed the file between our open and our lock:
            # then we locked a file nobody else can see; take the one on disk instead.
            try:
                same = os.stat(path).st_ino == os.fstat(handle.fileno()).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            handle.close()
            handle = open(path, "a+")
        handle.seek(0)
        handle.truncate()
        handle.write(f"process {os.getpid()}\n")
        handle.flush()
        self._handle = handle
        return self

    def release(self) -> None:
        """Remove the lock file, then unlock (a killed holder leaves the file, never the lock)."""
        if self._handle is not None:
            try:
                os.unlink(self.folder / LOCK_FILE)
            except FileNotFoundError:
                pass
            fcntl.flock(self._handle, fcntl.LOCK_UN)
            self._handle.close()
            self._handle = None

    def __enter__(self) -> "FolderLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def is_locked(folder: str | os.PathLike) -> bool:
    """Whether some process holds `folder`'s lock now (False when it has no lock file)."""
    path = pathlib.Path(folder) / LOCK_FILE
    if not path.exists():
        return False
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
    return False


def ensure_writable_folder(folder: str | os.PathLike, what: str) -> pathlib.Path:
    """Create `folder` if needed and prove a file can be written in it, before any real work.

    Permission bits alone do not tell (root ignores them; a read-only file system does not),
    so a temporary file is created and removed.

    Raises:
        ValueError: naming `what`, the folder and the reason.
    """
    folder = pathlib.Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"{what} {folder} exists and is not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test-"):
            pass
    except OSError as err:
        raise ValueError(f"{what} {folder} is not writable: {err.strerror or err}") from None
    return folder


def check_keras_file(path: str | os.PathLike, what: str) -> pathlib.Path:
    """`path` is a whole `.keras` archive, else a ValueError saying what it is instead.

    Keras reports a folder, a text file or a truncated archive alike as "File not found"; this
    names the actual problem before loading.
    """
    path = pathlib.Path(path)
    if not path.exists():
        raise ValueError(f"{what}: no model at {path}")
    if path.is_dir():
        raise ValueError(f"{what}: {path} is a folder, not a .keras model file")
    if path.suffix != ".keras":
        raise ValueError(f"{what}: {path} is not a .keras model file")
    if not zipfile.is_zipfile(path):
        raise ValueError(
            f"{what}: {path} is not a .keras archive (truncated, or another kind of file)"
        )
    try:
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
            broken = archive.testzip()
    except (zipfile.BadZipFile, OSError) as err:
        raise ValueError(f"{what}: {path} is a damaged .keras archive: {err}") from None
    if broken is not None or "config.json" not in names:
        raise ValueError(
            f"{what}: {path} is a damaged .keras archive "
            f"({'corrupt member ' + broken if broken else 'no config.json'})"
        )
    return path


def run_config(model_path: str | os.PathLike):
    """The `Config` of the run folder holding `model_path` (a run folder or a file in one).

    Returns None when there is no `config.yaml` beside it.

    Raises:
        ConfigError: the run's `config.yaml` is unreadable.
    """
    path = pathlib.Path(model_path)
    folder = path if path.is_dir() else path.parent
    config_path = folder / CONFIG_FILE
    return load_config(config_path) if config_path.is_file() else None


def atomic_write(path: str | os.PathLike, write_fn) -> None:
    """Call `write_fn(tmp_path)` and move the result to `path` atomically.

    The temporary file keeps `path`'s suffix (Keras checks `.keras`/`.h5` suffixes) and lives in
    the same folder, so the final `os.replace` never crosses file systems.
    """
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(
        prefix=f".{path.stem}.", suffix="".join(path.suffixes) or ".tmp", dir=path.parent
    )
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
    """`dgad_tf.models.save_model(model, path)` without ever leaving a partial file under `path`.

    Every `.keras` file dgad_tf writes (run checkpoints, `teacher.keras`, converted teachers) is
    written here, so every one loads in plain Keras (see `dgad_tf.models.saving`).
    """
    from dgad_tf.models import save_model

    atomic_write(path, lambda tmp: save_model(model, tmp))


def read_state_meta(run_dir: str | os.PathLike, *, verify: bool = False) -> dict | None:
    """The metadata of a run directory's `train_state.npz` (epoch, bests), or None if absent.

    Args:
        run_dir: the run folder.
        verify: also read every array the metadata lists, so that a damaged file is found
            before a resume writes anything (`check_run_dir` does). Defaults to False.

    Raises:
        RunError: the file is damaged (truncated, not an archive, a member corrupt or missing),
            naming it and how to go on.
    """
    run_dir = pathlib.Path(run_dir)
    state_path = run_dir / STATE_FILE
    if not state_path.exists():
        return None
    try:
        with np.load(state_path, allow_pickle=False) as state:
            meta = json.loads(str(state["meta"]))
            if verify:
                names = [f"student_{i}" for i in range(int(meta["num_student"]))]
                names += [f"optimizer_{i}" for i in range(int(meta["num_optimizer"]))]
                for name in names:
                    state[name]  # reading checks the member's CRC
    except (OSError, EOFError, ValueError, KeyError, TypeError, zipfile.BadZipFile) as err:
        raise _damaged_state(run_dir, f"{type(err).__name__}: {err}") from err
    return meta


def _damaged_state(run_dir: pathlib.Path, reason: str) -> RunError:
    teacher = run_dir / TEACHER_FILE
    reuse = (
        f", and model.teacher_path={teacher} reuses the teacher trained there"
        if teacher.is_file()
        else ""
    )
    return RunError(
        f"{run_dir / STATE_FILE} is damaged ({reason}), so the run in {run_dir} cannot resume "
        "from it (the file holds the optimiser state and the epoch to continue after); nothing "
        f"was changed there. To go on, re-run with another output.dir to train from the start"
        f"{reuse}; the student checkpoints in {run_dir} stay usable as they are (python -m "
        f"dgad_tf.evaluate --model {run_dir})"
    )


def holds_previous(folder: pathlib.Path, identity_file: str) -> bool:
    """Whether `folder` holds an earlier writer's `identity_file`; else it is new or empty.

    The writer then compares the identity file with its own settings (same config, same
    search) before resuming there.

    Raises:
        RunError: `folder` is a file, or holds other files but no `identity_file`.
    """
    if folder.exists() and not folder.is_dir():
        raise RunError(f"output.dir {folder} exists and is not a directory")
    if (folder / identity_file).exists():
        return True
    if folder.is_dir() and any(p.name != LOCK_FILE for p in folder.iterdir()):
        raise RunError(
            f"output.dir {folder} is not empty and holds no {identity_file}; choose "
            "an empty or new directory"
        )
    return False


def first_difference(old, new, prefix=""):
    """The dotted key of the first value that differs between two nested dicts, or None."""
    if isinstance(old, dict) and isinstance(new, dict):
        for key in list(old) + [k for k in new if k not in old]:
            found = first_difference(old.get(key), new.get(key), f"{prefix}{key}.")
            if found:
                return found
        return None
    return prefix.rstrip(".") if old != new else None


def check_run_dir(cfg: Config, run_dir: pathlib.Path):
    """A run directory is new, or holds this same config (then the run resumes).

    A run folder that has lost its `config.yaml` but holds a training state or a report
    resumes when either records this same config; the run then writes `config.yaml` back.

    Raises:
        RunError: the folder holds another run, or a run whose config is unknown.
    """
    existing = run_dir / CONFIG_FILE
    if run_dir.is_dir() and not existing.exists() and _holds_training(run_dir):
        _check_lost_config(cfg, run_dir)
        return
    if holds_previous(run_dir, CONFIG_FILE):
        try:
            previous = load_config(existing)
        except ConfigError as err:
            raise RunError(f"output.dir {run_dir} holds an unreadable config.yaml: {err}") from err
        if previous.hash() != cfg.hash():
            raise RunError(
                f"output.dir {run_dir} holds a run with a different config; choose "
                "another output.dir (nothing was changed there)"
            )
        read_state_meta(run_dir, verify=True)  # the run resumes from it: it must be intact


def _holds_training(run_dir: pathlib.Path) -> bool:
    return (run_dir / STATE_FILE).is_file() or (run_dir / REPORT_FILE).is_file()


def _check_lost_config(cfg: Config, run_dir: pathlib.Path) -> None:
    """`run_dir` holds a run but no config.yaml: go on only if its records name `cfg`.

    Writing config.yaml back from the record alone would resume a run under settings the user
    did not ask for; resuming under the user's config without a record could mix two
    configs in one run. So the run resumes (and `run` writes config.yaml back) only when the
    training state's recorded config, or the report's config hash, is this config's.
    """
    lost = f"output.dir {run_dir} holds a run but its config.yaml is missing"
    try:
        recorded = (read_state_meta(run_dir) or {}).get("config")
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as err:
        raise RunError(f"{lost}, and its {STATE_FILE} cannot be read ({err})") from err
    if recorded is not None:
        if hashlib.sha256(recorded.encode()).hexdigest() == cfg.hash():
            log.warning(
                "%s; its %s records this same config: config.yaml is written back and the "
                "run resumes",
                lost,
                STATE_FILE,
            )
            return
        previous, current = yaml.safe_load(recorded), yaml.safe_load(cfg.to_yaml())
        key = first_difference(previous, current)
        raise RunError(
            f"{lost}, and the config its {STATE_FILE} records differs from this one at `{key}` "
            f"({_value_at(previous, key)!r} there, {_value_at(current, key)!r} here); re-run "
            "with the run's own config to resume it (config.yaml is then written back), or "
            "choose another output.dir (nothing was changed there)"
        )
    report = run_dir / REPORT_FILE
    if report.is_file():
        try:
            digest = json.loads(report.read_text()).get("config_sha256")
        except (OSError, ValueError):
            digest = None
        if digest == cfg.hash():
            log.warning(
                "%s; its %s names this same config (sha256): config.yaml is written back",
                lost,
                REPORT_FILE,
            )
            return
    raise RunError(
        f"{lost}, and nothing there records this config (its {STATE_FILE} predates recording "
        f"it, or was written for another config). If it is this command's run, write the "
        f"config back with the same command plus `--print-config > {run_dir / CONFIG_FILE}` "
        "and re-run; otherwise choose another output.dir (nothing was changed there)"
    )


def _value_at(values, dotted: str):
    for key in dotted.split("."):
        values = values.get(key) if isinstance(values, dict) else None
    return values


def check_data_path(cfg: Config) -> None:
    """`data.path` exists when `data.source` reads files (npz, folder, tinyimagenet).

    The commands call this before they load TensorFlow, so a mistyped path is refused at once;
    the loaders in `dgad_tf.data` check it again for Python callers.

    Raises:
        RunError: naming `data.path`.
    """
    d = cfg.data
    if d.source in ("npz", "folder", "tinyimagenet") and d.path and not os.path.exists(d.path):
        raise RunError(
            f"data.path {d.path} does not exist (data.source={d.source}); give the path of "
            "the dataset, or another data.source"
        )


def check_teacher_file(cfg: Config, run_dir: pathlib.Path) -> bool:
    """The teacher file is a whole `.keras` archive, or one can be trained (no TensorFlow).

    Returns:
        Whether the teacher file exists (`build.check_teacher` then loads it).

    Raises:
        RunError: naming `model.teacher_path`.
    """
    path = teacher_path_for(cfg, run_dir)
    if path.exists():
        try:
            check_keras_file(path, "model.teacher_path")
        except ValueError as err:
            raise RunError(str(err)) from err
        return True
    if cfg.teacher_train.epochs == 0:
        raise RunError(
            f"model.teacher_path: no teacher at {path} and teacher_train.epochs=0;"
            " give a trained .keras teacher or set teacher_train.epochs"
        )
    return False


def teacher_path_for(cfg: Config, run_dir: pathlib.Path) -> pathlib.Path:
    return (
        pathlib.Path(cfg.model.teacher_path) if cfg.model.teacher_path else run_dir / TEACHER_FILE
    )


def selected_checkpoint(cfg: Config, run_dir: pathlib.Path) -> tuple[pathlib.Path, dict]:
    """The checkpoint `train.select` names in `run_dir`, and a description for the report.

    Returns:
        (path, selection) where selection holds "rule", "path", "note", "epoch" (1-based epoch
        of the checkpoint) and "same_as_last" (whether it holds the last epoch's weights).
    """
    rule = cfg.train.select
    chosen = selection_rules.SELECTION_RULES.get(rule, "train.select")
    metric = chosen.metric
    meta = read_state_meta(run_dir) or {}
    last_epoch = int(meta.get("epoch", 0))
    epoch = int(meta.get("best_epoch", {}).get(metric or "", 0))
    note = chosen.note
    path = run_dir / LAST_CHECKPOINT
    if metric is None:
        epoch = last_epoch
    else:
        best = run_dir / chosen.checkpoint
        if best.exists():
            path = best
        else:
            # best_val with validation every N > epochs: no epoch was ever validated.
            note += f"; but no {metric} was ever logged: the last checkpoint"
            log.warning(
                "train.select=%s: no %s was logged in %s; using %s",
                rule,
                metric,
                run_dir,
                LAST_CHECKPOINT,
            )
            epoch = last_epoch
    selection = {
        "rule": rule,
        "path": path.name,
        "epoch": epoch,
        "note": note,
        "same_as_last": path.name == LAST_CHECKPOINT or epoch == last_epoch,
    }
    return path, selection


def read_log(path: pathlib.Path) -> list[dict]:
    """`log.csv`'s rows as dicts of floats (None where a metric is missing that epoch)."""
    if not path.exists():
        return []
    with open(path) as handle:
        rows = list(csv.DictReader(handle))
    # CSVLogger writes "NA" for a metric missing that epoch (validation every N epochs, or none
    # at all with data.val_fraction=0), "nan" for a metric not measured that epoch
    # (PeriodicTestPGD); a header repeated mid-file is not a row.
    return [
        {k: float(v) if v not in ("", None, "NA", "nan") else None for k, v in row.items()}
        for row in rows
        if row.get("epoch") != "epoch"
    ]


def sha256_file(path):
    """Hex SHA-256 of a file's bytes.

    Args:
        path: file to hash.
    """
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


RUN_DIR_CHECKPOINTS = (selection_rules.best_checkpoints()["val_robust_accuracy"], LAST_CHECKPOINT)
"""What a run folder without a readable config.yaml offers, in order of preference."""


def resolve_model_path(model_or_run: str | os.PathLike) -> pathlib.Path:
    """The `.keras` file a command should use for `model_or_run`.

    A run folder gives the checkpoint its config's `train.select` names (the one `fit`
    reported); a folder without a config, its best-robust or else its last checkpoint. A file
    must be a whole `.keras` archive (see `check_keras_file`).

    Raises:
        FileNotFoundError: nothing at the path, or a folder with no checkpoint.
        ValueError: a file that is not a `.keras` archive.
    """
    path = pathlib.Path(model_or_run)
    if not path.exists():
        raise FileNotFoundError(f"`model`: no model at {path}")
    if path.is_dir():
        cfg = run_config(path)
        candidates = [selected_checkpoint(cfg, path)[0]] if cfg is not None else []
        candidates += [path / name for name in RUN_DIR_CHECKPOINTS]
        for candidate in candidates:
            if candidate.is_file():
                return check_keras_file(candidate, "`model`")
        raise FileNotFoundError(
            f"`model` run directory {str(path)!r} holds none of {list(RUN_DIR_CHECKPOINTS)}"
        )
    return check_keras_file(path, "`model`")


def is_saved_model_dir(path) -> bool:
    """Whether `path` is a SavedModel directory (holds `saved_model.pb`)."""
    path = pathlib.Path(path)
    return path.is_dir() and (path / "saved_model.pb").is_file()


def keras_model_path(path) -> pathlib.Path:
    """The `.keras` file of `path` (a `.keras` file or a run folder), or an error naming `path`.

    Raises:
        FileNotFoundError: nothing at `path`.
        ValueError: `path` is neither a SavedModel directory, a run folder nor a `.keras` file.
    """
    path = pathlib.Path(path)
    try:
        return resolve_model_path(path)
    except (FileNotFoundError, ValueError) as err:
        if not path.exists():
            raise
        if path.is_dir():
            raise ValueError(
                f"`model`: {path} is neither a SavedModel directory (no saved_model.pb) nor a "
                f"run folder with a checkpoint ({err})"
            ) from None
        raise ValueError(f"{err}, nor a SavedModel directory") from None

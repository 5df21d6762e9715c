"""The run folder: what it holds, which checkpoint it offers, and when a run may resume there.

File names (`config.yaml`, checkpoints, `train_state.npz`, `log.csv`), the same-config guard
(`check_run_dir`, with a run folder that lost its config), the training state's metadata, which
checkpoint `train.select` names, and model path resolution live here; everything that reads or
writes a run folder asks this module. How any folder is locked, guarded and written atomically
is `dgad_tf.workspace`'s (its names are re-exported here for the modules that import them from
this one).

Example:
    >>> workspace = run_workspace(cfg, pathlib.Path(cfg.output.dir))
    >>> with workspace.writing():
    ...     workspace.write_identity(cfg.to_yaml())
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import pathlib
import zipfile

import numpy as np
import yaml

from dgad_tf import selection as selection_rules
from dgad_tf.config import Config, ConfigError, config_from_dict, load_config
from dgad_tf.config.loading import from_earlier_version
from dgad_tf.model_files import (  # noqa: F401  (re-exported: the run folder's callers use them)
    check_keras_file,
    is_saved_model_dir,
    save_model_atomic,
    sha256_file,
)
from dgad_tf.workspace import (  # noqa: F401  (re-exported: the run folder's callers use them)
    LOCK_FILE,
    FolderBusy,
    FolderLock,
    RunError,
    Workspace,
    atomic_write,
    atomic_write_text,
    ensure_writable_folder,
    first_difference,
    holds_previous,
    is_locked,
)

log = logging.getLogger(__name__)

CONFIG_FILE = "config.yaml"
REPORT_FILE = "report.json"
LOG_FILE = "log.csv"
TEACHER_FILE = "teacher.keras"
TEACHER_RUN_DIR = "teacher_run"
STATE_FILE = "train_state.npz"
LAST_CHECKPOINT = "student_last.keras"


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


def run_workspace(cfg: Config, run_dir: pathlib.Path) -> Workspace:
    """The run folder `run_dir` as a `Workspace` guarded by `check_run_dir` for `cfg`."""
    return Workspace(run_dir, CONFIG_FILE, check=lambda: check_run_dir(cfg, run_dir))


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


def teacher_run_dir(run_dir: pathlib.Path) -> pathlib.Path:
    """The folder in `run_dir` where a missing teacher is trained (`teacher_run/`)."""
    return pathlib.Path(run_dir) / TEACHER_RUN_DIR


def teacher_run_config(cfg: Config, run_dir: pathlib.Path) -> Config:
    """The resolved config of the run that trains `cfg`'s teacher in `run_dir/teacher_run`.

    Args:
        cfg: the config of the run that needs the teacher.
        run_dir: the folder that run writes (`output.dir`, or a non-chief worker's scratch).
    """
    return cfg.teacher_config(str(teacher_run_dir(run_dir)))


def check_teacher_run(cfg: Config, run_dir: pathlib.Path) -> None:
    """`run_dir/teacher_run` is new, or holds the training of `cfg`'s teacher (it then resumes).

    The teacher run's own config (`teacher_run_config`) is its identity, compared as a run
    folder's (`check_run_dir`). A teacher run written by an earlier version holds no
    `config.yaml`, and its training state records the config of the run around it (`cfg`
    itself): it resumes too, and the teacher's config is written there when training goes on.

    Raises:
        RunError: the folder holds the training of another teacher, naming it.
    """
    folder = teacher_run_dir(run_dir)
    teacher_cfg = teacher_run_config(cfg, run_dir)
    if folder.is_dir() and not (folder / CONFIG_FILE).exists() and _holds_training(folder):
        recorded = (read_state_meta(folder) or {}).get("config")
        if recorded is None or _recorded_config_hash(recorded) == cfg.hash():
            log.info(
                "%s was written by an earlier version (its %s records %s): it resumes as the "
                "training of this run's teacher",
                folder,
                STATE_FILE,
                "no config" if recorded is None else "the config of the run around it",
            )
            read_state_meta(folder, verify=True)
            return
    try:
        check_run_dir(teacher_cfg, folder)
    except RunError as err:
        raise RunError(
            f"the teacher of this run is trained in {folder}, which holds something else: {err}"
        ) from None


def _recorded_config_hash(recorded: str):
    """The hash of a config recorded as YAML text (in today's keys), or None if unreadable."""
    try:
        return config_from_dict(from_earlier_version(yaml.safe_load(recorded))).hash()
    except (ConfigError, yaml.YAMLError, TypeError, AttributeError):
        return None


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

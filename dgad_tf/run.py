"""One training run, from a resolved config to a run directory: what `python -m dgad_tf.fit` does.

    config -> data -> teacher (loaded, or trained with PGD-AT/TRADES and cached) -> student
           -> AdversarialDistiller.fit with run-directory callbacks -> final evaluation -> report

Everything that can be checked is checked before the first byte is written: the config, the data,
the teacher file (its class count and input shape against the data, its accuracy above chance),
the run directory (an existing one must hold the same config, which then resumes). A run
directory holds:

    config.yaml                    the resolved config
    student_last.keras             after every epoch
    student_best_robust.keras      best val_robust_accuracy so far
    student_best_clean.keras       best val_clean_accuracy so far
    student_best_test_robust.keras best test_robust_accuracy so far (train.select=best_test only)
    train_state.npz                weights + optimiser state + epoch, for resuming
    log.csv, tensorboard/          per-epoch metrics
    teacher.keras, teacher_run/    when the teacher was trained here
    report.json                    final metrics, the command

The final report evaluates the checkpoint `train.select` names ("student", with a "selection"
entry saying which and why) and the last epoch's ("student_last") with the same attacks.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import pathlib
import sys
import time
from typing import Optional

import keras
import numpy as np
import tensorflow as tf

from dgad_tf import data as data_lib
from dgad_tf import distribute, models, precision
from dgad_tf.callbacks import (BEST_CHECKPOINTS, LAST_CHECKPOINT, EpochCSVLogger,
                               EpochTensorBoard,
                               RunCheckpoints, TestSetEvaluation, atomic_write_text,
                               read_state_meta, save_model_atomic)
from dgad_tf.config import Config, ConfigError
from dgad_tf.distiller import METHOD_SPECS, AdversarialDistiller
from dgad_tf.evaluate import at_chance_level, chance_threshold, evaluate_model, format_report
from dgad_tf.optim import make_optimizer
from dgad_tf.rundir import LOCK_FILE, FolderLock, check_keras_file

log = logging.getLogger(__name__)


class RunError(ValueError):
    """The run cannot start as configured (bad data, teacher, or run directory)."""


def load_data(cfg: Config) -> data_lib.DatasetSplits:
    """The configured dataset's train/val/test splits (any loader error becomes a RunError)."""
    try:
        return data_lib.splits_from_config(cfg.data)
    except (ValueError, FileNotFoundError, OSError) as err:
        raise RunError(f"data: {err}") from err


def build_network(cfg: Config, arch: str, splits: data_lib.DatasetSplits,
                  sync_batchnorm: bool = False) -> keras.Model:
    """A registry network sized for the data, with the configured normalisation and init."""
    m = cfg.model
    normalize = None if m.normalize_mean is None else (m.normalize_mean, m.normalize_std)
    if normalize is not None and len(m.normalize_mean) != splits.image_shape[-1]:
        raise RunError(f"model.normalize_mean has {len(m.normalize_mean)} channels but the "
                       f"images have {splits.image_shape[-1]}")
    try:
        return models.build_model(arch, splits.num_classes, tuple(splits.image_shape),
                                  normalize=normalize, sync_batchnorm=sync_batchnorm,
                                  init=m.init)
    except ValueError as err:
        raise RunError(str(err)) from err


def load_teacher(path: pathlib.Path, splits: data_lib.DatasetSplits) -> keras.Model:
    """Load a `.keras` teacher safely and check it fits the data and beats chance on it."""
    try:
        # Keras calls a folder, a text file or a truncated archive alike "File not found".
        check_keras_file(path, "model.teacher_path")
    except ValueError as err:
        raise RunError(str(err)) from err
    try:
        teacher = keras.models.load_model(path, safe_mode=True, compile=False)
    except Exception as err:  # keras raises many types for a bad file
        raise RunError(f"model.teacher_path: cannot load {path}: {err}") from err
    classes = teacher.output_shape[-1]
    if classes != splits.num_classes:
        raise RunError(f"model.teacher_path: the teacher {path} has {classes} classes but the "
                       f"data has {splits.num_classes}")
    if tuple(teacher.input_shape[1:]) != tuple(splits.image_shape):
        raise RunError(f"model.teacher_path: the teacher {path} takes images of shape "
                       f"{tuple(teacher.input_shape[1:])} but the data has "
                       f"{tuple(splits.image_shape)}")
    teacher.trainable = False
    check_teacher_beats_chance(teacher, splits, path)
    return teacher


TEACHER_CHECK_N = 500
"""Images on which a teacher must beat chance before anything is distilled from it."""


def check_teacher_beats_chance(teacher: keras.Model, splits: data_lib.DatasetSplits,
                               path, n: int = TEACHER_CHECK_N):
    """Refuse a teacher whose clean accuracy is not significantly above chance.

    A teacher whose class order differs from the data's (Tiny ImageNet numbered by wnids.txt
    instead of sorted wnids, say) or that expects other input scaling scores at chance, and
    distilling from it would train the student on permuted labels without any error. The
    accuracy is measured on `n` images spread evenly over the validation split (the training
    split when that is empty; both are in class order for folder sources), and must exceed
    1/C + 3·sqrt((1/C)(1 - 1/C)/n), three binomial standard deviations above chance.

    Args:
        teacher: the loaded teacher.
        splits: the run's data.
        path: the teacher's file, for the message.
        n: images to score. Default `TEACHER_CHECK_N` (500).

    Raises:
        RunError: naming the file, the accuracy, the chance level and the likely causes.
    """
    source, arrays = ("validation", splits.val) if len(splits.val.y) else ("training", splits.train)
    count = min(n, len(arrays.y))
    index = np.unique(np.linspace(0, len(arrays.y) - 1, count).round().astype(int))
    x, y = data_lib.to_float(arrays.x[index]), arrays.y[index]
    predictions = np.concatenate([
        np.argmax(np.asarray(teacher(x[i:i + 100], training=False)), axis=-1)
        for i in range(0, len(y), 100)])
    accuracy = float(np.mean(predictions == y))
    chance = 1.0 / splits.num_classes
    log.info("teacher %s: clean accuracy %.1f%% on %d %s images (chance %.1f%%)", path,
             100 * accuracy, len(y), source, 100 * chance)
    if at_chance_level(accuracy, splits.num_classes, len(y)):
        raise RunError(
            f"model.teacher_path: the teacher {path} is at chance level on the data: clean "
            f"accuracy {accuracy:.1%} on {len(y)} {source} images, chance {chance:.1%} (it must "
            f"exceed {chance_threshold(splits.num_classes, len(y)):.1%}). Its class order may differ from the data's (Tiny ImageNet "
            "numbers classes by sorted wnids), its input normalisation may be wrong, or it is "
            "untrained; nothing is distilled from it")


def check_run_dir(cfg: Config, run_dir: pathlib.Path):
    """A run directory is new, or holds this same config (then the run resumes)."""
    existing = run_dir / "config.yaml"
    if run_dir.exists() and not run_dir.is_dir():
        raise RunError(f"output.dir {run_dir} exists and is not a directory")
    if existing.exists():
        from dgad_tf.config import load_config

        try:
            previous = load_config(existing)
        except ConfigError as err:
            raise RunError(f"output.dir {run_dir} holds an unreadable config.yaml: {err}") from err
        if previous.hash() != cfg.hash():
            raise RunError(f"output.dir {run_dir} holds a run with a different config; choose "
                           "another output.dir (nothing was changed there)")
    elif run_dir.is_dir() and any(p.name != LOCK_FILE for p in run_dir.iterdir()):
        raise RunError(f"output.dir {run_dir} is not empty and holds no config.yaml; choose an "
                       "empty or new directory")


def teacher_path_for(cfg: Config, run_dir: pathlib.Path) -> pathlib.Path:
    return pathlib.Path(cfg.model.teacher_path) if cfg.model.teacher_path \
        else run_dir / "teacher.keras"


def build_distiller(cfg: Config, *, student: keras.Model, teacher: Optional[keras.Model],
                    method: str, steps_per_epoch: int, epochs: int, lr: float,
                    milestones) -> AdversarialDistiller:
    """A compiled `AdversarialDistiller` with the config's attack, loss weights and optimiser.

    Call it inside `strategy.scope()` when training under a distribution strategy.
    """
    t, o, a = cfg.train, cfg.optimizer, cfg.attack
    # Every loss option of the method section; `method` may differ (a teacher trained here).
    options = {k: v for k, v in dataclasses.asdict(cfg.method).items() if k != "name"}
    student = precision.with_policy(student, t.precision)
    if teacher is not None:
        teacher = precision.with_policy(teacher, t.precision)
    distiller = AdversarialDistiller(
        student, teacher, method=method, eps=a.eps, step_size=a.step_size, steps=a.steps,
        attack_init=a.init, init_std=a.init_std, val_robust_steps=t.val_robust_steps,
        batch_size=t.batch_size, seed=t.seed, **options)
    optimizer = make_optimizer(lr, momentum=o.momentum, weight_decay=o.weight_decay,
                               nesterov=o.nesterov, steps_per_epoch=steps_per_epoch,
                               epochs=epochs, schedule=o.schedule, milestones=milestones,
                               gamma=o.gamma, warmup_epochs=o.warmup_epochs)
    distiller.compile(optimizer=precision.loss_scaled(optimizer, t.precision),
                      jit_compile=precision.resolve_jit_compile(t.jit_compile),
                      steps_per_execution=t.steps_per_execution)
    return distiller


def steps_per_epoch_for(cfg: Config, num_train: int) -> int:
    """Training steps per epoch: full batches, plus the last partial one unless it is dropped."""
    return data_lib.steps_per_epoch(num_train, cfg.train.batch_size, cfg.train.drop_remainder)


def make_datasets(cfg: Config, splits: data_lib.DatasetSplits, *, first_epoch: int,
                  epochs: int):
    """(training dataset, validation dataset or None, steps per epoch) for the config.

    The training dataset holds epochs `first_epoch .. epochs - 1`, each a pure function of
    `train.seed` and the epoch: fit it with `steps_per_epoch`, and a resumed run replays the
    uninterrupted run's batches exactly.
    """
    t, d = cfg.train, cfg.data
    steps_per_epoch = steps_per_epoch_for(cfg, len(splits.train.y))
    if steps_per_epoch < 1:
        raise RunError(f"train.batch_size={t.batch_size} is larger than the "
                       f"{len(splits.train.y)} training images")
    train_ds = data_lib.make_train_dataset(splits.train, t.batch_size, augment=d.augment,
                                           crop_padding=d.crop_padding, flip=d.flip,
                                           seed=t.seed, drop_remainder=t.drop_remainder,
                                           first_epoch=first_epoch,
                                           epochs=max(epochs - first_epoch, 1))
    train_ds = distribute.distribute_options(train_ds)
    val_arrays = data_lib.Arrays(splits.val.x[:t.val_robust_n], splits.val.y[:t.val_robust_n])
    val_ds = data_lib.make_eval_dataset(val_arrays, t.batch_size) if len(val_arrays.y) else None
    if val_ds is not None:
        val_ds = distribute.distribute_options(val_ds)
    return train_ds, val_ds, steps_per_epoch


def train_network(cfg: Config, splits: data_lib.DatasetSplits, run_dir: pathlib.Path, *,
                  student: keras.Model, teacher: Optional[keras.Model], method: str,
                  epochs: int, lr: float, milestones, strategy=None) -> AdversarialDistiller:
    """Train `student` with `method` for `epochs`, writing checkpoints and logs to `run_dir`.

    Resumes after the last completed epoch when `run_dir` holds a training state. Under a
    distribution strategy the student, teacher and optimiser must have been created under its
    scope; Keras `fit` splits every global batch of `train.batch_size` across the replicas.
    """
    strategy = strategy or tf.distribute.get_strategy()
    steps_per_epoch = steps_per_epoch_for(cfg, len(splits.train.y))
    run_dir.mkdir(parents=True, exist_ok=True)
    with strategy.scope():
        distiller = build_distiller(cfg, student=student, teacher=teacher, method=method,
                                    steps_per_epoch=max(steps_per_epoch, 1), epochs=epochs,
                                    lr=lr, milestones=milestones)
        checkpoints = RunCheckpoints(run_dir)
        initial_epoch = checkpoints.restore(distiller)
    distribute.check_workers_agree(strategy, initial_epoch, "the completed epochs to resume after")
    train_ds, val_ds, steps_per_epoch = make_datasets(cfg, splits, first_epoch=initial_epoch,
                                                      epochs=epochs)

    if initial_epoch >= epochs:
        log.info("%s already finished %d epochs", run_dir, initial_epoch)
        return distiller
    log.info("training %s with %s for epochs %d..%d, %d steps per epoch, %s",
             student.name, method, initial_epoch + 1, epochs, steps_per_epoch,
             distribute.describe_batch(cfg.train.batch_size, strategy))
    csv_logger = EpochCSVLogger(str(run_dir / "log.csv"), validates=val_ds is not None,
                                append=True)
    callbacks = [checkpoints, csv_logger]
    if cfg.train.select == "best_test":
        selection_arrays = selection_test_arrays(cfg, splits)
        log.warning("train.select=best_test: the checkpoint is chosen on the TEST split "
                    "(test_robust_accuracy on %d images after every epoch), as the reference "
                    "does; this is leaky, a reproduction mode, and its test figures are "
                    "optimistic", len(selection_arrays.y))
        test_ds = distribute.distribute_options(
            data_lib.make_eval_dataset(selection_arrays, cfg.train.batch_size))
        # First, so that the checkpoints, log.csv and TensorBoard see test_* in the logs.
        callbacks.insert(0, TestSetEvaluation(test_ds))
    if cfg.output.tensorboard:
        callbacks.append(EpochTensorBoard(run_dir / "tensorboard"))
    distiller.fit(train_ds, epochs=epochs, initial_epoch=initial_epoch,
                  steps_per_epoch=steps_per_epoch,
                  validation_data=val_ds, validation_freq=cfg.train.val_every,
                  callbacks=callbacks, shuffle=False,
                  verbose=2 if cfg.output.quiet or not sys.stdout.isatty() else 1)
    return distiller


def selection_test_arrays(cfg: Config, splits: data_lib.DatasetSplits) -> data_lib.Arrays:
    """The test images evaluated every epoch for `train.select=best_test`."""
    n = cfg.train.select_n
    return data_lib.Arrays(splits.test.x[:n], splits.test.y[:n])


SELECTION_METRICS = {"best_val": "val_robust_accuracy", "best_test": "test_robust_accuracy"}
SELECTION_NOTES = {
    "last": "the last epoch's checkpoint",
    "best_val": "best val_robust_accuracy on the validation split carved from the training data",
    "best_test": "chosen on the TEST set (best test_robust_accuracy after each epoch), as the "
                 "DGAD reference does: leaky, a reproduction mode; the test figures of this "
                 "checkpoint are optimistic",
}


def selected_checkpoint(cfg: Config, run_dir: pathlib.Path) -> tuple[pathlib.Path, dict]:
    """The checkpoint `train.select` names in `run_dir`, and a description for the report.

    Returns:
        (path, selection) where selection holds "rule", "path", "note", "epoch" (1-based epoch
        of the checkpoint) and "same_as_last" (whether it holds the last epoch's weights).
    """
    rule = cfg.train.select
    meta = read_state_meta(run_dir) or {}
    last_epoch = int(meta.get("epoch", 0))
    epoch = int(meta.get("best_epoch", {}).get(SELECTION_METRICS.get(rule, ""), 0))
    note = SELECTION_NOTES[rule]
    path = run_dir / LAST_CHECKPOINT
    if rule == "last":
        epoch = last_epoch
    else:
        best = run_dir / BEST_CHECKPOINTS[SELECTION_METRICS[rule]]
        if best.exists():
            path = best
        else:
            # best_val with validation every N > epochs: no epoch was ever validated.
            note += f"; but no {SELECTION_METRICS[rule]} was ever logged: the last checkpoint"
            log.warning("train.select=%s: no %s was logged in %s; using %s", rule,
                        SELECTION_METRICS[rule], run_dir, LAST_CHECKPOINT)
            epoch = last_epoch
    selection = {"rule": rule, "path": path.name, "epoch": epoch, "note": note,
                 "same_as_last": path.name == LAST_CHECKPOINT or epoch == last_epoch}
    return path, selection


def obtain_teacher(cfg: Config, splits, run_dir: pathlib.Path, strategy=None) -> keras.Model:
    """Load the configured teacher, or train it with PGD-AT/TRADES and cache it at its path.

    The teacher is loaded under `strategy`'s scope so that every replica holds a copy. A
    non-chief worker caches a teacher it trained in its own scratch `run_dir`, never at a
    shared `model.teacher_path`.
    """
    strategy = strategy or tf.distribute.get_strategy()
    path = teacher_path_for(cfg, run_dir)
    distribute.check_workers_agree(strategy, int(path.exists()), f"whether {path} exists")
    if path.exists():
        log.info("loading teacher %s", path)
        with strategy.scope():
            return load_teacher(path, splits)
    tt = cfg.teacher_train
    log.info("no teacher at %s: training %s with %s for %d epochs", path, cfg.model.teacher,
             tt.method, tt.epochs)
    teacher_run = run_dir / "teacher_run"
    with strategy.scope():
        network = build_network(cfg, cfg.model.teacher, splits)
    train_network(cfg, splits, teacher_run, student=network, teacher=None, method=tt.method,
                  epochs=tt.epochs, lr=tt.lr, milestones=tt.milestones, strategy=strategy)
    teacher_file, selection = selected_checkpoint(cfg, teacher_run)
    log.info("teacher: %s (train.select=%s: %s)", teacher_file.name, selection["rule"],
             selection["note"])
    trained = keras.models.load_model(teacher_file, safe_mode=True, compile=False)
    if not distribute.is_chief(strategy):
        path = run_dir / "teacher.keras"
    save_model_atomic(trained, path)
    with strategy.scope():
        return load_teacher(path, splits)


def preflight(cfg: Config, run_dir: Optional[pathlib.Path] = None):
    """Every check that needs no writing: data, networks, teacher file, run directory.

    Args:
        cfg: the run's config.
        run_dir: where this process writes. Default None (`output.dir`; a non-chief worker
            passes its scratch directory).

    Returns:
        (splits, run_dir) ready for `run`.
    """
    run_dir = pathlib.Path(cfg.output.dir) if run_dir is None else pathlib.Path(run_dir)
    check_run_dir(cfg, run_dir)
    splits = load_data(cfg)
    if cfg.train.drop_remainder and len(splits.train.y) < cfg.train.batch_size:
        raise RunError(f"train.batch_size={cfg.train.batch_size} is larger than the "
                       f"{len(splits.train.y)} training images (and train.drop_remainder=true)")
    if cfg.train.select == "best_val" and len(splits.val.y) == 0:
        raise RunError(f"data.val_fraction={cfg.data.val_fraction} leaves no validation image out "
                       f"of {len(splits.train.y)}; train.select=best_val needs some (or set "
                       "train.select=last)")
    if cfg.train.select == "best_test" and len(splits.test.y) == 0:
        raise RunError("train.select=best_test needs a test split; this data has none")
    if METHOD_SPECS[cfg.method.name].needs_teacher:
        path = teacher_path_for(cfg, run_dir)
        if path.exists():
            load_teacher(path, splits)
        elif cfg.teacher_train.epochs == 0:
            raise RunError(f"model.teacher_path: no teacher at {path} and teacher_train.epochs=0;"
                           " give a trained .keras teacher or set teacher_train.epochs")
        else:
            build_network(cfg, cfg.model.teacher, splits)
    build_network(cfg, cfg.model.student, splits)
    return splits, run_dir


def run(cfg: Config, *, command: str = "") -> dict:
    """Train (teacher if needed, then student), evaluate on the test split, write the report.

    The distribution strategy is created first (logical CPUs must be configured before
    TensorFlow initialises its devices). With several workers only the chief writes `output.dir`;
    the others run the same steps against a scratch directory deleted at the end.
    """
    try:
        strategy = distribute.make_strategy(cfg.distribute)
        distribute.check_global_batch(cfg.train.batch_size, strategy)
    except distribute.DistributeError as err:
        raise RunError(str(err)) from err
    keras.utils.set_random_seed(cfg.train.seed)
    splits, run_dir = preflight(cfg, distribute.worker_run_dir(cfg.output.dir, strategy))
    with FolderLock(run_dir, "output.dir"):
        # Another writer may have started between the checks and the lock: check again.
        check_run_dir(cfg, run_dir)
        return _run_locked(cfg, splits, run_dir, strategy, command)


def _run_locked(cfg: Config, splits, run_dir: pathlib.Path, strategy, command: str) -> dict:
    if not (run_dir / "config.yaml").exists():
        atomic_write_text(run_dir / "config.yaml", cfg.to_yaml())
    started = time.time()

    teacher = None
    if METHOD_SPECS[cfg.method.name].needs_teacher:
        teacher = obtain_teacher(cfg, splits, run_dir, strategy)
    with strategy.scope():
        student = build_network(cfg, cfg.model.student, splits, cfg.model.sync_batchnorm)
    train_network(cfg, splits, run_dir, student=student, teacher=teacher,
                  method=cfg.method.name, epochs=cfg.train.epochs, lr=cfg.optimizer.lr,
                  milestones=cfg.optimizer.milestones, strategy=strategy)

    final_path, selection = selected_checkpoint(cfg, run_dir)
    final = keras.models.load_model(final_path, safe_mode=True, compile=False)
    x_test, y_test = splits.test.x[:cfg.eval.n], splits.test.y[:cfg.eval.n]
    eval_kwargs = dict(attacks=cfg.eval.attacks, eps=cfg.attack.eps,
                       batch_size=cfg.eval.batch_size, seed=cfg.train.seed)
    student_report = evaluate_model(final, x_test, y_test, **eval_kwargs)
    log.info("student %s (train.select=%s: %s) on the test split:\n%s", final_path.name,
             selection["rule"], selection["note"], format_report(student_report))
    report = {"command": command, "config_sha256": cfg.hash(), "method": cfg.method.name,
              "student": {"path": final_path.name, "architecture": cfg.model.student,
                          "selection": selection, **student_report}}
    if selection["same_as_last"]:
        # The selected checkpoint holds the last epoch's weights: same figures, no second run.
        last_report = student_report
    else:
        last = keras.models.load_model(run_dir / LAST_CHECKPOINT, safe_mode=True, compile=False)
        last_report = evaluate_model(last, x_test, y_test, **eval_kwargs)
        log.info("student %s (last epoch) on the test split:\n%s", LAST_CHECKPOINT,
                 format_report(last_report))
    report["student_last"] = {"path": LAST_CHECKPOINT, "architecture": cfg.model.student,
                              "epoch": cfg.train.epochs,
                              "same_as_selected": selection["same_as_last"], **last_report}
    if teacher is not None:
        teacher_report = evaluate_model(teacher, x_test, y_test, **eval_kwargs)
        log.info("teacher on the test split:\n%s", format_report(teacher_report))
        report["teacher"] = {"path": str(teacher_path_for(cfg, run_dir)), **teacher_report}
    report["history"] = _read_log(run_dir / "log.csv")
    report["seconds"] = time.time() - started
    # The report is written before the export, so a failed export loses no evaluation.
    atomic_write_text(run_dir / "report.json", json.dumps(report, indent=2, default=float))
    if cfg.export.formats and distribute.is_chief(strategy):
        report["export"] = _export(cfg, final_path, splits, run_dir)
        atomic_write_text(run_dir / "report.json", json.dumps(report, indent=2, default=float))
    distribute.remove_worker_run_dir(run_dir, strategy)
    return report


def _export(cfg: Config, model_path: pathlib.Path, splits, run_dir: pathlib.Path) -> dict:
    from dgad_tf import serving

    out = pathlib.Path(cfg.export.dir) if cfg.export.dir else run_dir / "export"
    card = serving.export_student(
        str(model_path), str(out), formats=tuple(cfg.export.formats),
        representative_x=splits.train.x[:200],
        eval_arrays=(splits.test.x[:cfg.eval.n], splits.test.y[:cfg.eval.n]),
        eps=cfg.attack.eps, source_run=str(run_dir), config_hash=cfg.hash())
    return card


def _read_log(path: pathlib.Path) -> list[dict]:
    import csv

    if not path.exists():
        return []
    with open(path) as handle:
        rows = list(csv.DictReader(handle))
    # CSVLogger writes "NA" for a metric missing that epoch (validation every N epochs, or none
    # at all with data.val_fraction=0); a header repeated mid-file is not a row.
    return [{k: float(v) if v not in ("", None, "NA") else None for k, v in row.items()}
            for row in rows if row.get("epoch") != "epoch"]


def describe(splits) -> str:
    return (f"{len(splits.train.y)} train / {len(splits.val.y)} val / {len(splits.test.y)} test "
            f"images of shape {tuple(splits.image_shape)}, {splits.num_classes} classes")


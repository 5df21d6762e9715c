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
    student_best_test_pgd20.keras  best test_pgd20_accuracy so far (train.select=rslad_pgd20 only)
    train_state.npz                weights + optimiser state + epoch, for resuming
    log.csv, tensorboard/          per-epoch metrics
    teacher.keras, teacher_run/    when the teacher was trained here (teacher_run/ is the teacher's
                                   own run folder: its config.yaml, checkpoints, log)
    report.json                    final metrics, the command

The final report evaluates the checkpoint `train.select` names ("student", with a "selection"
entry saying which and why) and the last epoch's ("student_last") with the same attacks.
"""

from __future__ import annotations

import json
import logging
import pathlib
import sys
import time
from typing import Optional

import keras
import tensorflow as tf

from dgad_tf import data as data_lib
from dgad_tf import distribute, models
from dgad_tf.build import (  # noqa: F401
    RunError,
    build_distiller,
    build_network,
    check_batch_sizes,
    load_teacher,
    make_datasets,
    make_strategy,
    preflight,
    selection_test_arrays,
    steps_per_epoch_for,
)
from dgad_tf.callbacks import (
    EpochCSVLogger,
    EpochTensorBoard,
    RunCheckpoints,
)
from dgad_tf.config import Config
from dgad_tf.context import Context, SharedTeacher
from dgad_tf.distiller import AdversarialDistiller
from dgad_tf.robustness import evaluate_robustness, format_report
from dgad_tf.rundir import (
    CONFIG_FILE,
    LAST_CHECKPOINT,
    LOG_FILE,
    REPORT_FILE,
    TEACHER_FILE,
    atomic_write_text,
    check_teacher_run,
    read_log,
    run_workspace,
    save_model_atomic,
    selected_checkpoint,
    teacher_path_for,
    teacher_run_config,
    teacher_run_dir,
)
from dgad_tf.selection import SELECTION_RULES

log = logging.getLogger(__name__)


def train_network(
    cfg: Config,
    splits: data_lib.DatasetSplits,
    run_dir: pathlib.Path,
    *,
    student: keras.Model,
    teacher: Optional[keras.Model],
    strategy=None,
) -> AdversarialDistiller:
    """Train `student` as `cfg` says, writing checkpoints and logs to `run_dir`.

    `cfg` is the config of the run being trained, a student's or a teacher's
    (`Config.teacher_config`): its method, `train.epochs`, `optimizer.lr` and milestones.
    Resumes after the last completed epoch when `run_dir` holds a training state. Under a
    distribution strategy the student, teacher and optimiser must have been created under its
    scope; Keras `fit` splits every global batch of `train.batch_size` across the replicas.
    """
    strategy = strategy or tf.distribute.get_strategy()
    epochs = cfg.train.epochs
    steps_per_epoch = steps_per_epoch_for(cfg, len(splits.train.y))
    run_dir.mkdir(parents=True, exist_ok=True)
    with strategy.scope():
        distiller = build_distiller(
            cfg,
            student=student,
            teacher=teacher,
            steps_per_epoch=max(steps_per_epoch, 1),
        )
        checkpoints = RunCheckpoints(run_dir, config_yaml=cfg.to_yaml())
        initial_epoch = checkpoints.restore(distiller)
    distribute.check_workers_agree(strategy, initial_epoch, "the completed epochs to resume after")
    train_ds, val_ds, steps_per_epoch = make_datasets(
        cfg, splits, first_epoch=initial_epoch, epochs=epochs
    )

    if initial_epoch >= epochs:
        log.info("%s already finished %d epochs", run_dir, initial_epoch)
        return distiller
    log.info(
        "training %s with %s for epochs %d..%d, %d steps per epoch, %s",
        student.name,
        cfg.method.name,
        initial_epoch + 1,
        epochs,
        steps_per_epoch,
        distribute.describe_batch(cfg.train.batch_size, strategy),
    )
    csv_logger = EpochCSVLogger(str(run_dir / LOG_FILE), validates=val_ds is not None, append=True)
    callbacks = [checkpoints, csv_logger]
    rule = SELECTION_RULES.get(cfg.train.select, "train.select")
    if rule.leaky:
        selection_arrays = selection_test_arrays(cfg, splits)
        log.warning(
            "train.select=%s: the checkpoint is chosen on the TEST split (%s on %d images), "
            "as the reference does; this is leaky, a reproduction mode, and its test figures "
            "are optimistic",
            cfg.train.select,
            rule.test_split,
            len(selection_arrays.y),
        )
        selection = rule.callback(cfg, selection_arrays)
        # First, so that the checkpoints, log.csv and TensorBoard see test_* in the logs.
        callbacks.insert(0, selection)
    if cfg.output.tensorboard:
        callbacks.append(EpochTensorBoard(run_dir / "tensorboard"))
    distiller.fit(
        train_ds,
        epochs=epochs,
        initial_epoch=initial_epoch,
        steps_per_epoch=steps_per_epoch,
        validation_data=val_ds,
        validation_freq=cfg.train.val_every,
        callbacks=callbacks,
        shuffle=False,
        verbose=2 if cfg.output.quiet or not sys.stdout.isatty() else 1,
    )
    return distiller


def obtain_teacher(
    cfg: Config,
    splits,
    run_dir: pathlib.Path,
    strategy=None,
    shared: Optional[SharedTeacher] = None,
) -> keras.Model:
    """Load the configured teacher, or train it with PGD-AT/TRADES and cache it at its path.

    The teacher is loaded under `strategy`'s scope so that every replica holds a copy. A
    non-chief worker caches a teacher it trained in its own scratch `run_dir`, never at a
    shared `model.teacher_path`.

    Args:
        cfg: the run's config.
        splits: the run's data.
        run_dir: where the run writes.
        strategy: the distribution strategy. Defaults to None (the current one).
        shared: the teacher file, already loaded for several runs (`Context.teacher`); when it
            is this run's, it is returned and its load replayed (see `dgad_tf.context`).
            Defaults to None (the file is loaded here).
    """
    strategy = strategy or tf.distribute.get_strategy()
    path = teacher_path_for(cfg, run_dir)
    distribute.check_workers_agree(strategy, int(path.exists()), f"whether {path} exists")
    if not path.exists():
        path = train_teacher(cfg, splits, run_dir, strategy)
    elif shared is not None and shared.serves(path):
        log.info("teacher %s: loaded once for every run", path)
        shared.replay_load()
        return shared.model
    else:
        log.info("loading teacher %s", path)
    with strategy.scope():
        return load_teacher(path, splits)


def train_teacher(cfg: Config, splits, run_dir: pathlib.Path, strategy=None) -> pathlib.Path:
    """Train `cfg`'s missing teacher in `run_dir/teacher_run` and save it; returns its file.

    The teacher run has its own config (`rundir.teacher_run_config`), written to its folder
    before it trains; a re-run resumes it there. The file is `model.teacher_path` (or
    `run_dir/teacher.keras`); a non-chief worker writes `run_dir/teacher.keras` instead.
    """
    strategy = strategy or tf.distribute.get_strategy()
    path = teacher_path_for(cfg, run_dir)
    tt = cfg.teacher_train
    log.info(
        "no teacher at %s: training %s with %s for %d epochs",
        path,
        cfg.model.teacher,
        tt.method,
        tt.epochs,
    )
    check_teacher_run(cfg, run_dir)
    teacher_run = teacher_run_dir(run_dir)
    teacher_cfg = teacher_run_config(cfg, run_dir)
    teacher_run.mkdir(parents=True, exist_ok=True)
    atomic_write_text(teacher_run / CONFIG_FILE, teacher_cfg.to_yaml())
    with strategy.scope():
        network = build_network(teacher_cfg, teacher_cfg.model.student, splits)
    train_network(
        teacher_cfg, splits, teacher_run, student=network, teacher=None, strategy=strategy
    )
    teacher_file, selection = selected_checkpoint(teacher_cfg, teacher_run)
    log.info(
        "teacher: %s (train.select=%s: %s)", teacher_file.name, selection["rule"], selection["note"]
    )
    trained = models.load_model(teacher_file)
    if not distribute.is_chief(strategy):
        path = run_dir / TEACHER_FILE
    save_model_atomic(trained, path)
    return path


def run(cfg: Config, *, command: str = "", context: Optional[Context] = None) -> dict:
    """Train (teacher if needed, then student), evaluate on the test split, write the report.

    The distribution strategy is created first (logical CPUs must be configured before
    TensorFlow initialises its devices). With several workers only the chief writes `output.dir`;
    the others run the same steps against a scratch directory deleted at the end.

    Args:
        cfg: the run's resolved config.
        command: the command line, recorded in the report. Defaults to "".
        context: the strategy, data and teacher already built for several runs (a study's
            cells), used instead of building or loading them again. Defaults to None (built
            here from `cfg`).
    """
    if context is None:
        strategy = make_strategy(cfg)
    else:
        strategy = context.strategy
        check_batch_sizes(cfg, strategy)
    keras.utils.set_random_seed(cfg.train.seed)
    shared = None if context is None else context.teacher
    splits, run_dir = preflight(
        cfg,
        distribute.worker_run_dir(cfg.output.dir, strategy),
        splits=None if context is None else context.splits,
        teacher=shared,
    )
    workspace = run_workspace(cfg, run_dir)
    with workspace.writing():
        workspace.write_identity(cfg.to_yaml())
        return _run_locked(cfg, splits, run_dir, strategy, command, shared)


def _run_locked(cfg: Config, splits, run_dir: pathlib.Path, strategy, command: str, shared) -> dict:
    started = time.time()

    teacher = None
    if cfg.method.loss.needs_teacher:
        teacher = obtain_teacher(cfg, splits, run_dir, strategy, shared)
    with strategy.scope():
        student = build_network(cfg, cfg.model.student, splits, cfg.model.sync_batchnorm)
    train_network(cfg, splits, run_dir, student=student, teacher=teacher, strategy=strategy)

    final_path, selection = selected_checkpoint(cfg, run_dir)
    final = models.load_model(final_path)
    x_test, y_test = splits.test.x[: cfg.eval.n], splits.test.y[: cfg.eval.n]
    eval_kwargs = dict(
        attacks=cfg.eval.attacks,
        eps=cfg.attack.eps,
        batch_size=cfg.eval.batch_size,
        seed=cfg.train.seed,
    )
    student_report = evaluate_robustness(final, x_test, y_test, **eval_kwargs)
    log.info(
        "student %s (train.select=%s: %s) on the test split:\n%s",
        final_path.name,
        selection["rule"],
        selection["note"],
        format_report(student_report),
    )
    report = {
        "command": command,
        "config_sha256": cfg.hash(),
        "method": cfg.method.name,
        "student": {
            "path": final_path.name,
            "architecture": cfg.model.student,
            "selection": selection,
            **student_report,
        },
    }
    if selection["same_as_last"]:
        # The selected checkpoint holds the last epoch's weights: same figures, no second run.
        last_report = student_report
    else:
        last = models.load_model(run_dir / LAST_CHECKPOINT)
        last_report = evaluate_robustness(last, x_test, y_test, **eval_kwargs)
        log.info(
            "student %s (last epoch) on the test split:\n%s",
            LAST_CHECKPOINT,
            format_report(last_report),
        )
    report["student_last"] = {
        "path": LAST_CHECKPOINT,
        "architecture": cfg.model.student,
        "epoch": cfg.train.epochs,
        "same_as_selected": selection["same_as_last"],
        **last_report,
    }
    if teacher is not None:
        teacher_report = evaluate_robustness(teacher, x_test, y_test, **eval_kwargs)
        log.info("teacher on the test split:\n%s", format_report(teacher_report))
        report["teacher"] = {"path": str(teacher_path_for(cfg, run_dir)), **teacher_report}
    report["history"] = read_log(run_dir / LOG_FILE)
    report["seconds"] = time.time() - started
    # The report is written before the export, so a failed export loses no evaluation.
    atomic_write_text(run_dir / REPORT_FILE, json.dumps(report, indent=2, default=float))
    if cfg.export.formats and distribute.is_chief(strategy):
        report["export"] = _export(cfg, final_path, splits, run_dir)
        atomic_write_text(run_dir / REPORT_FILE, json.dumps(report, indent=2, default=float))
    distribute.remove_worker_run_dir(run_dir, strategy)
    return report


def _export(cfg: Config, model_path: pathlib.Path, splits, run_dir: pathlib.Path) -> dict:
    from dgad_tf import serving

    out = pathlib.Path(cfg.export.dir) if cfg.export.dir else run_dir / "export"
    card = serving.export_student(
        str(model_path),
        str(out),
        formats=tuple(cfg.export.formats),
        representative_x=splits.train.x[:200],
        eval_arrays=(splits.test.x[: cfg.eval.n], splits.test.y[: cfg.eval.n]),
        eps=cfg.attack.eps,
        source_run=str(run_dir),
        config_hash=cfg.hash(),
    )
    return card

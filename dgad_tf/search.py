"""The hyperparameter search: a KerasTuner tuner over `tuning.DistillerHyperModel`, resumable.

`run_search` checks everything first (`preflight_search`: nothing is written when the config,
the space, the search folder, the data or the teacher is wrong), obtains the teacher once, runs
the tuner under the configured strategy, then writes the table of trials and the best trial as a
config. A search folder holds:

    search_spec.yaml       what was searched (a re-run must match it, then it resumes)
    teacher.keras, teacher_run/   when the teacher was trained here
    search/                KerasTuner's project: oracle.json, trial_<id>/ (trial.json, weights)
    tensorboard/<id>/      per-trial TensorBoard logs with the HParams dashboard
    trials.csv             one row per trial: hyperparameters, val accuracies, score
    best_config.yaml       the best trial as a complete config for `python -m dgad_tf.fit`

Example:
    >>> result = run_search(load_config("configs/tune_quickstart.yaml"))
    >>> print(format_trials_table(result.rows, result.best_trial))
"""

from __future__ import annotations

import csv
import dataclasses
import io
import pathlib
import time
from typing import Optional

import keras
import keras_tuner
import yaml

from dgad_tf import build, losses, rundir
from dgad_tf import run as run_lib
from dgad_tf.config import (
    SCORE_METRIC,
    Config,
    ConfigError,
    TuneConfig,
    config_from_dict,
    with_values,
)
from dgad_tf.context import build_context
from dgad_tf.rundir import RunError, atomic_write_text
from dgad_tf.tuning import DistillerHyperModel
from dgad_tf.workspace import Workspace

SPEC_FILE = "search_spec.yaml"
BEST_CONFIG_FILE = "best_config.yaml"


@dataclasses.dataclass
class SearchResult:
    """What `run_search` did and found.

    Args:
        out_dir: the search directory.
        tune: the searched `tune:` section.
        rows: one dict per trial (trial, status, hyperparameters, val accuracies, score).
        best_trial: id of the best completed trial.
        best_config: the best trial's complete config (as written to best_config.yaml).
        best_config_path: where it was written.
        trials_run: trials trained by this call (a resumed search skips finished ones).
        seconds: wall time of this call.
    """

    out_dir: pathlib.Path
    tune: TuneConfig
    rows: list
    best_trial: str
    best_config: Config
    best_config_path: pathlib.Path
    trials_run: int
    seconds: float


def _needs_teacher(cfg: Config) -> bool:
    methods = {cfg.method.name}
    if "method.name" in cfg.tune.space:
        methods.update(cfg.tune.space["method.name"].values)
    return any(losses.get(m).needs_teacher for m in methods)


def search_identity(cfg: Config) -> dict:
    """Everything that makes two searches the same search (`tune.max_trials` may grow)."""
    values = cfg.to_dict()
    values.pop("output")
    tune = cfg.tune
    clean_weight, robust_weight = tune.weights
    values["tune"] = {
        "objective": tune.metric,
        "clean_weight": clean_weight,
        "robust_weight": robust_weight,
        "tuner": tune.tuner,
        "epochs": tune.epochs,
        "seed": tune.seed,
        "space": {k: d.to_dict() for k, d in tune.space.items()},
    }
    return values


def check_search_dir(cfg: Config, out_dir: pathlib.Path):
    """A search directory is new, or holds this same search (which then resumes).

    Raises:
        RunError: naming the first setting that differs from the stored search.
    """
    if rundir.holds_previous(out_dir, SPEC_FILE):
        previous = yaml.safe_load((out_dir / SPEC_FILE).read_text())
        current = yaml.safe_load(yaml.safe_dump(search_identity(cfg), sort_keys=False))
        differs = rundir.first_difference(previous, current)
        if differs:
            raise RunError(
                f"output.dir {out_dir} holds a different search (`{differs}` "
                "differs); choose another --out or restore the setting"
            )


def search_workspace(cfg: Config, out_dir: pathlib.Path) -> Workspace:
    """The search folder `out_dir` as a `Workspace` guarded by `check_search_dir` for `cfg`."""
    return Workspace(
        out_dir, SPEC_FILE, check=lambda: check_search_dir(cfg, out_dir), what="search folder"
    )


def _batch_sizes(cfg: Config):
    """(key, value) of every global batch size a trial may use."""
    yield "train.batch_size", cfg.train.batch_size
    dimension = cfg.tune.space.get("train.batch_size")
    if dimension is not None:
        values = (
            dimension.values
            if dimension.type == "choice"
            else range(dimension.min, dimension.max + 1, dimension.step or 1)
        )
        for value in values:
            yield "tune.space.train.batch_size", value


def preflight_search(cfg: Config):
    """Every check that writes nothing: the tune section, the search directory, data, teacher.

    Returns:
        (context, out_dir): the strategy and data every trial shares, and the search folder.

    Raises:
        ConfigError, RunError: naming the problem.
    """
    if not cfg.tune.space:
        raise ConfigError(
            "the config has no `tune.space`; add a `tune:` section with at least "
            "`space:`, e.g. `method.beta: {type: float, min: 0, max: 4}`"
        )
    if cfg.distribute.strategy == "multi_worker":
        raise ConfigError(
            "`distribute.strategy` must not be multi_worker for tuning: "
            "KerasTuner runs one trial on one machine's devices; received "
            "distribute.strategy='multi_worker'"
        )
    out_dir = pathlib.Path(cfg.output.dir)
    search_workspace(cfg, out_dir).check()
    batch_sizes = list(_batch_sizes(cfg))
    context = build_context(cfg, batch_sizes)
    splits = context.splits
    if len(splits.val.y) == 0:
        raise RunError(
            f"the validation split is empty (data.val_fraction="
            f"{cfg.data.val_fraction}); tuning scores trials on it"
        )
    for key, batch_size in batch_sizes:
        if batch_size > len(splits.train.y):
            raise RunError(
                f"{key}: {batch_size} is larger than the {len(splits.train.y)} training images"
            )
    if _needs_teacher(cfg):
        build.check_teacher(cfg, splits, out_dir)
    students = {cfg.model.student}
    if "model.student" in cfg.tune.space:
        students.update(cfg.tune.space["model.student"].values)
    for student in sorted(students):
        build.build_network(cfg, student, splits)
    return context, out_dir


def _make_tuner(cfg: Config, hypermodel, out_dir: pathlib.Path, strategy):
    tune = cfg.tune
    common = dict(
        objective=keras_tuner.Objective(tune.metric, "max"),
        seed=tune.seed,
        directory=str(out_dir),
        project_name="search",
        overwrite=False,
        distribution_strategy=strategy,
    )
    if tune.tuner == "random":
        return keras_tuner.RandomSearch(hypermodel, max_trials=tune.max_trials, **common)
    if tune.tuner == "bayesian":
        return keras_tuner.BayesianOptimization(hypermodel, max_trials=tune.max_trials, **common)
    return keras_tuner.Hyperband(hypermodel, max_epochs=hypermodel.epochs, factor=3, **common)


_METRIC_COLUMNS = ("val_clean_accuracy", "val_robust_accuracy", SCORE_METRIC)


def trial_rows(tuner, cfg: Config) -> list[dict]:
    """One row per trial of `tuner`: id, status, hyperparameters, val accuracies, score."""
    rows = []
    for trial_id in sorted(tuner.oracle.trials):
        trial = tuner.oracle.trials[trial_id]
        row = {"trial": trial_id, "status": str(trial.status)}
        for key in cfg.tune.space:
            row[key] = trial.hyperparameters.values.get(key)
        for metric in _METRIC_COLUMNS:
            row[metric] = (
                trial.metrics.get_last_value(metric) if trial.metrics.exists(metric) else None
            )
        rows.append(row)
    return rows


def format_trials_table(rows: list[dict], best_trial: Optional[str] = None) -> str:
    """A fixed-width text table of `trial_rows`, the best trial marked with `*`."""
    if not rows:
        return "(no trials)"
    headers = [k if k != SCORE_METRIC else "score" for k in rows[0]]

    def cell(key, value):
        if value is None:
            return "-"
        if isinstance(value, float):
            return f"{value:.4f}" if key in _METRIC_COLUMNS else f"{value:.4g}"
        return str(value)

    body = [[cell(k, v) for k, v in row.items()] for row in rows]
    for line, row in zip(body, rows):
        line[0] = ("*" if row["trial"] == best_trial else " ") + line[0]
    headers[0] = " " + headers[0]
    widths = [max(len(h), *(len(line[i]) for line in body)) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(line, widths)) for line in body]
    return "\n".join(lines)


def _rows_csv(rows: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]) if rows else ["trial"])
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def best_trial_config(cfg: Config, values: dict, out_dir: pathlib.Path, trial_id: str) -> Config:
    """The best trial as a config for `python -m dgad_tf.fit`: full epochs, a fresh run dir.

    The teacher the trial was distilled from is pinned in `model.teacher_path`, so fit loads it
    instead of training another.
    """
    best = with_values(cfg, values)
    fresh_dir = out_dir / f"best_trial_{trial_id}"
    changes = {"output": dataclasses.replace(best.output, dir=str(fresh_dir))}
    if best.method.loss.needs_teacher:
        changes["model"] = dataclasses.replace(
            best.model, teacher_path=str(rundir.teacher_path_for(cfg, out_dir))
        )
    return config_from_dict(dataclasses.replace(best, **changes).to_dict())


def run_search(cfg: Config, *, verbose: Optional[int] = None) -> SearchResult:
    """Search `cfg.tune.space`, resuming a search left in `cfg.output.dir`; write the best config.

    Checks everything first (nothing is written when the config, the space, the data or the
    teacher is wrong), obtains the teacher once, runs the tuner under the configured strategy,
    then writes `trials.csv` and `best_config.yaml`.

    Args:
        cfg: the config with a `tune:` section; `output.dir` is the search directory.
        verbose: Keras verbosity of the trials. Defaults to None (2 when `output.quiet`, else 1).

    Returns:
        A `SearchResult`.

    Raises:
        ConfigError, rundir.RunError: before anything is written, naming the problem.
    """
    started = time.time()
    context, out_dir = preflight_search(cfg)
    keras.utils.set_random_seed(cfg.train.seed)
    workspace = search_workspace(cfg, out_dir)
    with workspace.writing():
        workspace.write_identity(yaml.safe_dump(search_identity(cfg), sort_keys=False))
        return _search_locked(cfg, context, out_dir, started, verbose)


def _search_locked(cfg, context, out_dir, started, verbose) -> SearchResult:
    teacher = None
    if _needs_teacher(cfg):
        teacher = run_lib.obtain_teacher(cfg, context.splits, out_dir, strategy=context.strategy)
    hypermodel = DistillerHyperModel(cfg, context.splits, teacher)
    tuner = _make_tuner(cfg, hypermodel, out_dir, context.strategy)
    callbacks = []
    if cfg.output.tensorboard:
        # The tuner moves this log_dir to tensorboard/<trial id>/execution0 for every trial.
        callbacks.append(keras.callbacks.TensorBoard(str(out_dir / "tensorboard")))
    if verbose is None:
        verbose = 2 if cfg.output.quiet else 1
    tuner.search(callbacks=callbacks, verbose=verbose)

    rows = trial_rows(tuner, cfg)
    atomic_write_text(out_dir / "trials.csv", _rows_csv(rows))
    best_trials = [
        t
        for t in tuner.oracle.get_best_trials(len(rows))
        if t.status == "COMPLETED" and t.score is not None
    ]
    if not best_trials:
        raise RunError(
            f"no trial of the search in {out_dir} completed; see the trial "
            "messages in search/trial_*/trial.json"
        )
    best = best_trials[0]
    values = {key: best.hyperparameters.values[key] for key in cfg.tune.space}
    best_cfg = best_trial_config(cfg, values, out_dir, best.trial_id)
    header = (
        f"# Best trial {best.trial_id} of the search in {out_dir}: {cfg.tune.metric} "
        f"{best.score:.4f} on the validation split after {hypermodel.epochs} epochs.\n"
        f"# Searched: {', '.join(f'{k}={v}' for k, v in values.items())}\n"
        f"# Train it: python -m dgad_tf.fit --config {out_dir / BEST_CONFIG_FILE}\n"
    )
    best_path = out_dir / BEST_CONFIG_FILE
    atomic_write_text(best_path, header + best_cfg.to_yaml())
    return SearchResult(
        out_dir=out_dir,
        tune=cfg.tune,
        rows=rows,
        best_trial=best.trial_id,
        best_config=best_cfg,
        best_config_path=best_path,
        trials_run=hypermodel.fits_run,
        seconds=time.time() - started,
    )

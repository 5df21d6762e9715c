"""Hyperparameter search with KerasTuner: the `tune:` config section, a HyperModel, the search.

A search starts from an ordinary run config (every fixed setting) whose `tune:` section says what
to vary and how to score it:

    tune:
      objective: val_robust_accuracy    # or val_clean_accuracy, or a weighted score:
                                        #   {clean_weight: 0.3, robust_weight: 0.7} -> val_score
      tuner: random                     # random | bayesian | hyperband
      max_trials: 10                    # trials in all, resumed runs included (not hyperband)
      epochs: 4                         # epochs per trial; default train.epochs
      seed: 0                           # seed of the tuner's sampling
      space:                            # dotted config paths -> dimensions
        method.beta: {type: float, min: 0, max: 4}
        optimizer.lr: {type: float, min: 0.005, max: 0.2, log: true}
        attack.steps: {type: int, min: 1, max: 10, step: 3}
        optimizer.schedule: {type: choice, values: [piecewise, cosine]}
        method.use_els: {type: bool}

The space may also be nested (`method: {beta: {type: float, ...}}`), which is what
`--set tune.space.method.beta=...` produces. Every dimension is checked against the config itself
(each bound and choice is put into a trial config and validated), so a misspelt path or an
out-of-range bound is an error naming `tune.space.<key>` before anything runs.

Every trial trains from the same seed on the same data and teacher. A trial runs `tune.epochs`
epochs with the learning-rate schedule of `train.epochs` compressed to that length (milestones
and warm-up scaled proportionally), and is scored on the validation split carved from the
training data (never the test split), at its best validated epoch, as KerasTuner scores a History.
A search directory holds:

    search_spec.yaml       what was searched (a re-run must match it, then it resumes)
    teacher.keras, teacher_run/   when the teacher was trained here
    search/                KerasTuner's project: oracle.json, trial_<id>/ (trial.json, weights)
    tensorboard/<id>/      per-trial TensorBoard logs with the HParams dashboard
    trials.csv             one row per trial: hyperparameters, val accuracies, score
    best_config.yaml       the best trial as a complete config for `python -m dgad_tf.fit`
"""

from __future__ import annotations

import csv
import dataclasses
import io
import logging
import math
import pathlib
import time
import types
import typing
from typing import Any, Optional

import keras
import keras_tuner
import yaml

from dgad_tf import distribute
from dgad_tf import build, rundir
from dgad_tf import run as run_lib
from dgad_tf.config import Config, ConfigError, config_from_dict
from dgad_tf.distiller import METHOD_SPECS
from dgad_tf.rundir import LOCK_FILE, FolderLock, RunError, atomic_write_text

log = logging.getLogger(__name__)

TUNERS = ("random", "bayesian", "hyperband")
OBJECTIVES = ("val_robust_accuracy", "val_clean_accuracy")
SCORE_METRIC = "val_score"
DIMENSION_TYPES = ("float", "int", "choice", "bool")
SPEC_FILE = "search_spec.yaml"
BEST_CONFIG_FILE = "best_config.yaml"

_DIMENSION_FIELDS = {"float": ("type", "min", "max", "log", "step"),
                     "int": ("type", "min", "max", "step"),
                     "choice": ("type", "values"),
                     "bool": ("type",)}
_TUNE_FIELDS = ("objective", "tuner", "max_trials", "epochs", "seed", "space")

# Paths a trial cannot vary, with the reason given to the user. A section name covers all its
# fields. These are fixed once per search, or they define how trials are measured.
_UNTUNABLE = {
    "data": "the data are loaded once for the whole search",
    "teacher_train": "the teacher is obtained once for the whole search",
    "model.teacher": "the teacher is obtained once for the whole search",
    "model.teacher_path": "the teacher is obtained once for the whole search",
    "train.epochs": "trials run `tune.epochs` epochs; set that instead",
    "train.val_every": "it decides how trials are measured; all trials must be scored alike",
    "train.val_robust_n": "it decides how trials are measured; all trials must be scored alike",
    "train.val_robust_steps": "it decides how trials are measured; all trials must be scored "
                              "alike",
    "train.select": "trials are scored on the validation split; no checkpoint is selected",
    "train.select_n": "trials are never evaluated on the test split",
    "eval": "trials are never evaluated on the test split",
    "output": "it is not a training hyperparameter",
    "export": "it is not a training hyperparameter",
    "distribute": "it is not a training hyperparameter",
    "tune": "it is not a training hyperparameter",
}


class TuneError(ConfigError):
    """The `tune:` section or the search directory is unusable; the message names the key."""


# --------------------------------------------------------------------------- search space


@dataclasses.dataclass(frozen=True)
class Dimension:
    """One searched config value.

    Args:
        key: dotted config path, e.g. "method.beta".
        kind: "float", "int", "choice" or "bool".
        min: lower bound of "float" and "int" (inclusive). Default None.
        max: upper bound of "float" and "int" (inclusive). Default None.
        step: grid step of "float" and "int". Default None (continuous / 1).
        log: sample a "float" uniformly in log space. Default False.
        values: the options of "choice". Default ().
    """

    key: str
    kind: str
    min: Optional[float] = None
    max: Optional[float] = None
    step: Optional[float] = None
    log: bool = False
    values: tuple = ()

    def sample(self, hp: keras_tuner.HyperParameters):
        """Declare this dimension on `hp` and return its current value as a plain Python value."""
        if self.kind == "float":
            return float(hp.Float(self.key, self.min, self.max, step=self.step,
                                  sampling="log" if self.log else "linear"))
        if self.kind == "int":
            return int(hp.Int(self.key, self.min, self.max, step=self.step or 1))
        if self.kind == "bool":
            return bool(hp.Boolean(self.key))
        value = hp.Choice(self.key, list(self.values))
        return type(self.values[0])(value)

    def extremes(self) -> tuple:
        """The values that bound the dimension: each must make a valid config."""
        if self.kind in ("float", "int"):
            return (self.min, self.max)
        if self.kind == "bool":
            return (False, True)
        return self.values

    def describe(self) -> dict:
        """The dimension as written in the `tune.space` section (defaults left out)."""
        entry = {"type": self.kind}
        if self.kind in ("float", "int"):
            entry.update(min=self.min, max=self.max)
            if self.step is not None:
                entry["step"] = self.step
            if self.log:
                entry["log"] = True
        elif self.kind == "choice":
            entry["values"] = list(self.values)
        return entry


def _flatten_space(space: dict, prefix: str = "") -> dict:
    """{"method": {"beta": {...}}} and {"method.beta": {...}} both become {"method.beta": {...}}.

    A later entry for the same path wins (a `--set` after the file's own entry).
    """
    flat = {}
    for key, entry in space.items():
        if not isinstance(key, str) or not key:
            raise TuneError(f"`tune.space` keys must be dotted config paths; received {key!r}")
        path = prefix + key
        if isinstance(entry, dict) and entry and "type" not in entry \
                and all(isinstance(v, dict) for v in entry.values()):
            flat.update(_flatten_space(entry, path + "."))
        else:
            flat[path] = entry
    return flat


def _check_path(key: str):
    where = f"tune.space.{key}"
    parts = key.split(".")
    hints = typing.get_type_hints(Config)
    if len(parts) != 2 or parts[0] not in hints or not dataclasses.is_dataclass(hints[parts[0]]):
        sections = ", ".join(n for n, h in hints.items() if dataclasses.is_dataclass(h))
        raise TuneError(f"{where}: `{key}` is not a config field; a key is `section.field` with "
                        f"section one of {sections}")
    section, field = parts
    fields = [f.name for f in dataclasses.fields(hints[section])]
    if field not in fields:
        raise TuneError(f"{where}: `{key}` is not a config field; section `{section}` has "
                        f"{', '.join(fields)}")
    for prefix in (key, section):
        if prefix in _UNTUNABLE:
            raise TuneError(f"{where}: `{key}` cannot be searched: {_UNTUNABLE[prefix]}")


def _field_type(key: str):
    section, field = key.split(".")
    hint = typing.get_type_hints(typing.get_type_hints(Config)[section])[field]
    inner = [a for a in typing.get_args(hint) if a is not type(None)]
    return inner[0] if typing.get_origin(hint) in (typing.Union, types.UnionType) else hint


def _number(where: str, name: str, value, kind: type):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or \
            (kind is int and not float(value).is_integer()) or not math.isfinite(float(value)):
        raise TuneError(f"{where}: `{name}` must be a{'n int' if kind is int else ' number'}; "
                        f"received {name}={value!r}")
    return kind(value)


def _parse_dimension(key: str, entry: Any) -> Dimension:
    where = f"tune.space.{key}"
    if not isinstance(entry, dict):
        raise TuneError(f"{where}: must be a mapping such as {{type: float, min: 0, max: 1}}; "
                        f"received {entry!r}")
    kind = entry.get("type")
    if kind not in DIMENSION_TYPES:
        raise TuneError(f"{where}: unknown type {kind!r}; expected one of "
                        f"{', '.join(DIMENSION_TYPES)}")
    unknown = sorted(set(entry) - set(_DIMENSION_FIELDS[kind]))
    if unknown:
        raise TuneError(f"{where}: unknown field {unknown[0]!r} for type {kind}; known fields: "
                        f"{', '.join(_DIMENSION_FIELDS[kind])}")
    if kind in ("float", "int"):
        number = float if kind == "float" else int
        for name in ("min", "max"):
            if name not in entry:
                raise TuneError(f"{where}: type {kind} needs `{name}`")
        low, high = (_number(where, n, entry[n], number) for n in ("min", "max"))
        if not low < high:
            raise TuneError(f"{where}: `min` must be below `max`; received min={low}, max={high}")
        step = entry.get("step")
        if step is not None:
            step = _number(where, "step", step, number)
            if step <= 0:
                raise TuneError(f"{where}: `step` must be > 0; received step={step}")
        use_log = entry.get("log", False)
        if not isinstance(use_log, bool):
            raise TuneError(f"{where}: `log` must be true or false; received log={use_log!r}")
        if use_log and low <= 0:
            raise TuneError(f"{where}: `log: true` needs min > 0; received min={low}")
        if use_log and step is not None:
            # KerasTuner would read `step` as a multiplicative factor in log space.
            raise TuneError(f"{where}: `log` and `step` cannot be combined")
        return Dimension(key, kind, min=low, max=high, step=step, log=use_log)
    if kind == "bool":
        return Dimension(key, kind)
    values = entry.get("values")
    if not isinstance(values, (list, tuple)) or not values:
        raise TuneError(f"{where}: type choice needs a non-empty list `values`; "
                        f"received values={values!r}")
    if not all(isinstance(v, (bool, int, float, str)) for v in values):
        raise TuneError(f"{where}: choice values must be numbers, strings or booleans; "
                        f"received values={list(values)!r}")
    kinds = {bool if isinstance(v, bool) else str if isinstance(v, str) else float
             for v in values}
    if len(kinds) > 1:
        raise TuneError(f"{where}: choice values must all be of one type; "
                        f"received values={list(values)!r}")
    if kinds == {float} and any(isinstance(v, float) for v in values):
        values = [float(v) for v in values]  # KerasTuner wants one type: 0 and 0.5 -> floats
    if len(set(values)) != len(values):
        raise TuneError(f"{where}: choice values repeat; received values={list(values)!r}")
    return Dimension(key, kind, values=tuple(values))


def parse_search_space(tune_section: Optional[dict],
                       base_cfg: Optional[Config] = None) -> list[Dimension]:
    """Read and check the `space` of a `tune:` section.

    Each key must be a config field that trials may vary, and every bound or choice must make a
    valid config when put into `base_cfg` (so `method.beta: {min: -1, ...}` is rejected as the
    config itself would reject `method.beta=-1`).

    Args:
        tune_section: the `tune:` mapping (only its `space` is read).
        base_cfg: the config the trials start from. Default None (the dataclass defaults).

    Returns:
        The dimensions, in the order written.

    Raises:
        TuneError: naming `tune.space.<key>` and what is wrong with it.

    Example:
        >>> parse_search_space({"space": {"method.beta": {"type": "float", "min": 0, "max": 4}}})
        [Dimension(key='method.beta', kind='float', min=0.0, max=4.0, ...)]
    """
    if tune_section is None:
        tune_section = {}
    if not isinstance(tune_section, dict):
        raise TuneError(f"`tune` must be a mapping; received tune={tune_section!r}")
    space = tune_section.get("space")
    if not isinstance(space, dict) or not space:
        raise TuneError("`tune.space` must map config paths to dimensions, e.g. "
                        "`method.beta: {type: float, min: 0, max: 4}`; received "
                        f"tune.space={space!r}")
    base_cfg = base_cfg or Config()
    dimensions = []
    for key, entry in _flatten_space(space).items():
        _check_path(key)
        dimension = _parse_dimension(key, entry)
        if dimension.kind == "float" and _field_type(key) is int:
            raise TuneError(f"tune.space.{key}: `{key}` is an integer field; use type int")
        for value in dimension.extremes():
            try:
                resolve_trial_config(base_cfg, {key: value})
            except ConfigError as err:
                raise TuneError(f"tune.space.{key}: {err}") from None
        dimensions.append(dimension)
    return dimensions


# --------------------------------------------------------------------------- the tune section


@dataclasses.dataclass(frozen=True)
class TuneSpec:
    """A parsed `tune:` section.

    Args:
        space: the searched dimensions.
        objective: "val_robust_accuracy", "val_clean_accuracy" or "val_score" (weighted).
            Default "val_robust_accuracy".
        clean_weight: weight of val_clean_accuracy in `val_score`. Default 0.0.
        robust_weight: weight of val_robust_accuracy in `val_score`. Default 1.0.
        tuner: "random", "bayesian" or "hyperband". Default "random".
        max_trials: trials in all (ignored by hyperband, which sizes its own brackets).
            Default 10.
        epochs: epochs per trial (hyperband's max_epochs). Default None (train.epochs).
        seed: seed of the tuner's sampling. Default 0.
    """

    space: tuple[Dimension, ...]
    objective: str = "val_robust_accuracy"
    clean_weight: float = 0.0
    robust_weight: float = 1.0
    tuner: str = "random"
    max_trials: int = 10
    epochs: Optional[int] = None
    seed: int = 0

    def identity(self) -> dict:
        """Everything that makes two searches the same search (max_trials may grow)."""
        return {"objective": self.objective, "clean_weight": self.clean_weight,
                "robust_weight": self.robust_weight, "tuner": self.tuner, "epochs": self.epochs,
                "seed": self.seed, "space": {d.key: d.describe() for d in self.space}}


def _parse_objective(value) -> tuple[str, float, float]:
    if isinstance(value, str):
        if value not in OBJECTIVES:
            raise TuneError(f"`tune.objective` must be one of {', '.join(OBJECTIVES)} or "
                            "{clean_weight: a, robust_weight: b}; "
                            f"received tune.objective={value!r}")
        return (value, 0.0, 1.0) if value == "val_robust_accuracy" else (value, 1.0, 0.0)
    if not isinstance(value, dict):
        raise TuneError(f"`tune.objective` must be a metric name or a mapping of weights; "
                        f"received tune.objective={value!r}")
    unknown = sorted(set(value) - {"clean_weight", "robust_weight"})
    if unknown:
        raise TuneError(f"unknown key `tune.objective.{unknown[0]}`; known keys: clean_weight, "
                        "robust_weight")
    weights = []
    for name in ("clean_weight", "robust_weight"):
        weight = value.get(name, 0.0)
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or weight < 0:
            raise TuneError(f"`tune.objective.{name}` must be a number >= 0; "
                            f"received tune.objective.{name}={weight!r}")
        weights.append(float(weight))
    if sum(weights) <= 0:
        raise TuneError("`tune.objective` weights must not both be 0; "
                        f"received tune.objective={value!r}")
    return (SCORE_METRIC, weights[0], weights[1])


def _positive_int(section: dict, name: str, default):
    value = section.get(name, default)
    if value is None and default is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise TuneError(f"`tune.{name}` must be an integer >= 1; received tune.{name}={value!r}")
    return value


def parse_tune_section(tune_section: Optional[dict],
                       base_cfg: Optional[Config] = None) -> TuneSpec:
    """Read and check a whole `tune:` section (see the module docstring for its layout).

    Args:
        tune_section: the `tune:` mapping of a config.
        base_cfg: the config the trials start from. Default None (the dataclass defaults).

    Returns:
        The `TuneSpec`.

    Raises:
        TuneError: naming the offending `tune.` key.
    """
    if not isinstance(tune_section, dict) or not tune_section:
        raise TuneError("the config has no `tune:` section; add one with at least `space:` "
                        f"(see dgad_tf/tuning.py); received tune={tune_section!r}")
    unknown = sorted(set(tune_section) - set(_TUNE_FIELDS))
    if unknown:
        raise TuneError(f"unknown key `tune.{unknown[0]}`; known keys: {', '.join(_TUNE_FIELDS)}")
    objective, clean_weight, robust_weight = _parse_objective(
        tune_section.get("objective", "val_robust_accuracy"))
    tuner = tune_section.get("tuner", "random")
    if tuner not in TUNERS:
        raise TuneError(f"`tune.tuner` must be one of {', '.join(TUNERS)}; "
                        f"received tune.tuner={tuner!r}")
    seed = tune_section.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise TuneError(f"`tune.seed` must be an integer >= 0; received tune.seed={seed!r}")
    return TuneSpec(space=tuple(parse_search_space(tune_section, base_cfg)),
                    objective=objective, clean_weight=clean_weight, robust_weight=robust_weight,
                    tuner=tuner, max_trials=_positive_int(tune_section, "max_trials", 10),
                    epochs=_positive_int(tune_section, "epochs", None), seed=seed)


# --------------------------------------------------------------------------- trial configs


def _nested(dotted_values: dict) -> dict:
    nested: dict = {}
    for key, value in dotted_values.items():
        section, field = key.split(".")
        nested.setdefault(section, {})[field] = value
    return nested


def resolve_trial_config(base_cfg: Config, values: dict) -> Config:
    """`base_cfg` with the dotted `values` put in, validated; its `tune` section emptied.

    Args:
        base_cfg: the config the search starts from.
        values: {"method.beta": 2.0, ...}.

    Raises:
        ConfigError: a value is of the wrong type or out of range for its field.
    """
    merged = base_cfg.to_dict()
    for section, fields in _nested(values).items():
        merged[section] = {**merged[section], **fields}
    merged["tune"] = {}
    return config_from_dict(merged)


def compress_schedule(cfg: Config, epochs: int) -> Config:
    """`cfg` trained for `epochs` with its learning-rate schedule scaled to that length.

    Milestones and warm-up are scaled by epochs / train.epochs (rounded, at least epoch 1), so a
    short trial sees the same schedule shape as the full run.
    """
    full = cfg.train.epochs
    if epochs == full:
        return cfg
    scale = epochs / full
    milestones = tuple(sorted({max(1, round(m * scale)) for m in cfg.optimizer.milestones}))
    warmup = round(cfg.optimizer.warmup_epochs * scale)
    return dataclasses.replace(
        cfg, train=dataclasses.replace(cfg.train, epochs=epochs),
        optimizer=dataclasses.replace(cfg.optimizer, milestones=milestones,
                                      warmup_epochs=warmup))


def validation_epochs(initial_epoch: int, epochs: int, every: int) -> list[int]:
    """One-indexed epochs that run validation: every `every`-th, and always the last."""
    return [e for e in range(initial_epoch + 1, epochs + 1) if e % every == 0 or e == epochs]


# --------------------------------------------------------------------------- HyperModel


class ValidationScore(keras.callbacks.Callback):
    """Adds `val_score` to the epoch logs and remembers every epoch's logs.

    `val_score = clean_weight * val_clean_accuracy + robust_weight * val_robust_accuracy` on the
    epochs that ran validation. Put it before the tuner's callbacks: Keras hands one logs dict to
    the callbacks in order, so TensorBoard, the tuner and its checkpoint then all see the score.

    Args:
        clean_weight: weight of the clean accuracy. Default 0.0.
        robust_weight: weight of the robust accuracy. Default 1.0.
    """

    def __init__(self, clean_weight: float = 0.0, robust_weight: float = 1.0):
        super().__init__()
        self.clean_weight = float(clean_weight)
        self.robust_weight = float(robust_weight)
        self.epoch_logs: list[dict] = []

    def on_epoch_end(self, epoch, logs=None):
        if logs is None:
            return
        if "val_clean_accuracy" in logs and "val_robust_accuracy" in logs:
            logs[SCORE_METRIC] = (self.clean_weight * float(logs["val_clean_accuracy"])
                                  + self.robust_weight * float(logs["val_robust_accuracy"]))
        self.epoch_logs.append({"epoch": epoch + 1, **{k: float(v) for k, v in logs.items()}})


def best_epoch_metrics(epoch_logs: list[dict], objective: str) -> dict:
    """The logs of the validated epoch with the highest `objective` (the first among ties)."""
    scored = [logs for logs in epoch_logs
              if objective in logs and not math.isnan(logs[objective])]
    if not scored:
        raise RunError(f"no epoch reported {objective}; is the validation split empty?")
    return max(scored, key=lambda logs: logs[objective])


class DistillerHyperModel(keras_tuner.HyperModel):
    """Builds and trains one `AdversarialDistiller` per trial of a KerasTuner search.

    `__init__` holds what every trial shares (the base config, the data, the teacher); `build(hp)`
    samples the `tune.space` dimensions into a trial config and returns the compiled distiller;
    `fit` trains it on the training split and scores it on the validation split.

    Args:
        base_cfg: the config the trials start from; its `tune:` section is the search.
        splits: the loaded data (`run.load_data`).
        teacher: the frozen teacher, or None when no searched method needs one.
        spec: the parsed `tune:` section. Default None (parsed from `base_cfg.tune`).

    Example:
        >>> hypermodel = DistillerHyperModel(cfg, run.load_data(cfg), teacher)
        >>> tuner = keras_tuner.RandomSearch(hypermodel, objective=keras_tuner.Objective(
        ...     "val_robust_accuracy", "max"), max_trials=3, directory="runs/tune")
        >>> tuner.search(verbose=2)
    """

    def __init__(self, base_cfg: Config, splits, teacher: Optional[keras.Model], *,
                 spec: Optional[TuneSpec] = None):
        super().__init__(name="dgad_distiller", tunable=True)
        self.base_cfg = base_cfg
        self.splits = splits
        self.teacher = teacher
        self.spec = spec if spec is not None else parse_tune_section(base_cfg.tune, base_cfg)
        self.epochs = self.spec.epochs or base_cfg.train.epochs
        self.fits_run = 0

    def trial_values(self, hp: keras_tuner.HyperParameters) -> dict:
        """{dotted key: value} of this trial (declaring the dimensions on `hp` if needed)."""
        return {d.key: d.sample(hp) for d in self.spec.space}

    def trial_config(self, hp: keras_tuner.HyperParameters) -> Config:
        """The complete config of this trial, with the base config's full `train.epochs`."""
        return resolve_trial_config(self.base_cfg, self.trial_values(hp))

    def build(self, hp):
        cfg = compress_schedule(self.trial_config(hp), self.epochs)
        # Every trial starts from the same initialisation, so trials differ by their values only.
        keras.utils.set_random_seed(cfg.train.seed)
        student = build.build_network(cfg, cfg.model.student, self.splits,
                                        cfg.model.sync_batchnorm)
        teacher = self.teacher if METHOD_SPECS[cfg.method.name].needs_teacher else None
        steps_per_epoch = max(build.steps_per_epoch_for(cfg, len(self.splits.train.y)), 1)
        distiller = build.build_distiller(cfg, student=student, teacher=teacher,
                                            method=cfg.method.name,
                                            steps_per_epoch=steps_per_epoch,
                                            epochs=cfg.train.epochs, lr=cfg.optimizer.lr,
                                            milestones=cfg.optimizer.milestones)
        # The tuner saves the best epoch's weights, which Keras refuses for an unbuilt model.
        distiller.build((None, *self.splits.image_shape))
        return distiller

    def fit(self, hp, model, *args, callbacks=None, epochs=None, initial_epoch=0, verbose=1,
            **kwargs):
        """Train `model` on the training split; return the best validated epoch's metrics.

        Args:
            hp: the trial's hyperparameters.
            model: the distiller from `build(hp)`.
            callbacks: the tuner's callbacks (run after the score callback). Default None.
            epochs: last epoch (hyperband sets it). Default None (`tune.epochs`).
            initial_epoch: first epoch, zero-indexed (hyperband sets it). Default 0.
            verbose: Keras verbosity. Default 1.

        Returns:
            {metric: value} of the epoch with the best objective, including val_clean_accuracy,
            val_robust_accuracy and val_score.
        """
        if args or kwargs:
            raise TypeError("DistillerHyperModel.fit takes its data from the config; received "
                            f"extra arguments {list(kwargs) or args!r}")
        cfg = compress_schedule(self.trial_config(hp), self.epochs)
        epochs = int(epochs or cfg.train.epochs)
        train_ds, val_ds, steps_per_epoch = build.make_datasets(
            cfg, self.splits, first_epoch=initial_epoch, epochs=epochs)
        if val_ds is None:
            raise RunError("the validation split is empty; tuning needs "
                                   "data.val_fraction > 0")
        score = ValidationScore(self.spec.clean_weight, self.spec.robust_weight)
        self.fits_run += 1
        model.fit(train_ds, validation_data=val_ds, epochs=epochs, initial_epoch=initial_epoch,
                  steps_per_epoch=steps_per_epoch,
                  validation_freq=validation_epochs(initial_epoch, epochs, cfg.train.val_every),
                  callbacks=[score] + list(callbacks or []), shuffle=False, verbose=verbose)
        return best_epoch_metrics(score.epoch_logs, self.spec.objective)


# --------------------------------------------------------------------------- the search


@dataclasses.dataclass
class SearchResult:
    """What `run_search` did and found.

    Args:
        out_dir: the search directory.
        spec: the parsed `tune:` section.
        rows: one dict per trial (trial, status, hyperparameters, val accuracies, score).
        best_trial: id of the best completed trial.
        best_config: the best trial's complete config (as written to best_config.yaml).
        best_config_path: where it was written.
        trials_run: trials trained by this call (a resumed search skips finished ones).
        seconds: wall time of this call.
    """

    out_dir: pathlib.Path
    spec: TuneSpec
    rows: list
    best_trial: str
    best_config: Config
    best_config_path: pathlib.Path
    trials_run: int
    seconds: float


def make_strategy(cfg: Config):
    """The configured distribution strategy (`dgad_tf.distribute.make_strategy`).

    Create it before anything else touches TensorFlow: logical CPUs are configured there.

    Raises:
        TuneError: multi-worker training (KerasTuner runs a trial on one machine), or settings
            `dgad_tf.distribute` cannot honour.
    """
    if cfg.distribute.strategy == "multi_worker":
        raise TuneError("`distribute.strategy` must not be multi_worker for tuning: KerasTuner "
                        "runs one trial on one machine's devices; received "
                        "distribute.strategy='multi_worker'")
    try:
        return distribute.make_strategy(cfg.distribute)
    except distribute.DistributeError as err:
        raise TuneError(str(err)) from err


def _needs_teacher(cfg: Config, spec: TuneSpec) -> bool:
    methods = {cfg.method.name}
    for dimension in spec.space:
        if dimension.key == "method.name":
            methods.update(dimension.values)
    return any(METHOD_SPECS[m].needs_teacher for m in methods)


def _search_identity(cfg: Config, spec: TuneSpec) -> dict:
    values = cfg.to_dict()
    values.pop("output")
    values["tune"] = spec.identity()
    return values


def _first_difference(old, new, prefix=""):
    if isinstance(old, dict) and isinstance(new, dict):
        for key in list(old) + [k for k in new if k not in old]:
            found = _first_difference(old.get(key), new.get(key), f"{prefix}{key}.")
            if found:
                return found
        return None
    return prefix.rstrip(".") if old != new else None


def check_search_dir(cfg: Config, spec: TuneSpec, out_dir: pathlib.Path):
    """A search directory is new, or holds this same search (which then resumes).

    Raises:
        TuneError: naming the first setting that differs from the stored search.
    """
    if out_dir.exists() and not out_dir.is_dir():
        raise TuneError(f"`output.dir` {out_dir} exists and is not a directory")
    stored = out_dir / SPEC_FILE
    if stored.exists():
        previous = yaml.safe_load(stored.read_text())
        current = yaml.safe_load(yaml.safe_dump(_search_identity(cfg, spec), sort_keys=False))
        differs = _first_difference(previous, current)
        if differs:
            raise TuneError(f"`output.dir` {out_dir} holds a different search (`{differs}` "
                            "differs); choose another --out or restore the setting")
    elif out_dir.is_dir() and any(p.name != LOCK_FILE for p in out_dir.iterdir()):
        raise TuneError(f"`output.dir` {out_dir} is not empty and holds no {SPEC_FILE}; choose "
                        "an empty or new directory")


def preflight_search(cfg: Config):
    """Every check that writes nothing: the tune section, the search directory, data, teacher.

    Returns:
        (spec, strategy, splits, out_dir).
    """
    spec = parse_tune_section(cfg.tune, cfg)
    out_dir = pathlib.Path(cfg.output.dir)
    check_search_dir(cfg, spec, out_dir)
    strategy = make_strategy(cfg)
    splits = build.load_data(cfg)
    if len(splits.val.y) == 0:
        raise RunError(f"the validation split is empty (data.val_fraction="
                               f"{cfg.data.val_fraction}); tuning scores trials on it")
    for key, batch_size in _batch_sizes(cfg, spec):
        if batch_size > len(splits.train.y):
            raise TuneError(f"{key}: {batch_size} is larger than the {len(splits.train.y)} "
                            "training images")
        try:
            distribute.check_global_batch(batch_size, strategy)
        except distribute.DistributeError as err:
            raise TuneError(f"{key}: {err}") from err
    if _needs_teacher(cfg, spec):
        path = rundir.teacher_path_for(cfg, out_dir)
        if path.exists():
            build.load_teacher(path, splits)
        elif cfg.teacher_train.epochs == 0:
            raise RunError(f"model.teacher_path: no teacher at {path} and "
                                   "teacher_train.epochs=0; give a trained .keras teacher or set "
                                   "teacher_train.epochs")
    students = {cfg.model.student} | {v for d in spec.space if d.key == "model.student"
                                      for v in d.values}
    for student in sorted(students):
        build.build_network(cfg, student, splits)
    return spec, strategy, splits, out_dir


def _batch_sizes(cfg: Config, spec: TuneSpec):
    """(key, value) of every global batch size a trial may use."""
    yield "train.batch_size", cfg.train.batch_size
    for d in spec.space:
        if d.key == "train.batch_size":
            values = d.values if d.kind == "choice" else range(d.min, d.max + 1, d.step or 1)
            for value in values:
                yield "tune.space.train.batch_size", value


def _make_tuner(spec: TuneSpec, hypermodel, out_dir: pathlib.Path, strategy):
    common = dict(objective=keras_tuner.Objective(spec.objective, "max"), seed=spec.seed,
                  directory=str(out_dir), project_name="search", overwrite=False,
                  distribution_strategy=strategy)
    if spec.tuner == "random":
        return keras_tuner.RandomSearch(hypermodel, max_trials=spec.max_trials, **common)
    if spec.tuner == "bayesian":
        return keras_tuner.BayesianOptimization(hypermodel, max_trials=spec.max_trials, **common)
    return keras_tuner.Hyperband(hypermodel, max_epochs=hypermodel.epochs, factor=3, **common)


_METRIC_COLUMNS = ("val_clean_accuracy", "val_robust_accuracy", SCORE_METRIC)


def trial_rows(tuner, spec: TuneSpec) -> list[dict]:
    """One row per trial of `tuner`: id, status, hyperparameters, val accuracies, score."""
    rows = []
    for trial_id in sorted(tuner.oracle.trials):
        trial = tuner.oracle.trials[trial_id]
        row = {"trial": trial_id, "status": str(trial.status)}
        for dimension in spec.space:
            row[dimension.key] = trial.hyperparameters.values.get(dimension.key)
        for metric in _METRIC_COLUMNS:
            row[metric] = trial.metrics.get_last_value(metric) \
                if trial.metrics.exists(metric) else None
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


def best_trial_config(cfg: Config, values: dict, out_dir: pathlib.Path,
                      trial_id: str) -> Config:
    """The best trial as a config for `python -m dgad_tf.fit`: full epochs, a fresh run dir.

    The teacher the trial was distilled from is pinned in `model.teacher_path`, so fit loads it
    instead of training another.
    """
    best = resolve_trial_config(cfg, values)
    fresh_dir = out_dir / f"best_trial_{trial_id}"
    changes = {"output": dataclasses.replace(best.output, dir=str(fresh_dir))}
    if METHOD_SPECS[best.method.name].needs_teacher:
        changes["model"] = dataclasses.replace(
            best.model, teacher_path=str(rundir.teacher_path_for(cfg, out_dir)))
    return config_from_dict(dataclasses.replace(best, **changes).to_dict())


def run_search(cfg: Config, *, verbose: Optional[int] = None) -> SearchResult:
    """Search `cfg.tune.space`, resuming a search left in `cfg.output.dir`; write the best config.

    Checks everything first (nothing is written when the config, the space, the data or the
    teacher is wrong), obtains the teacher once, runs the tuner under the configured strategy,
    then writes `trials.csv` and `best_config.yaml`.

    Args:
        cfg: the config with a `tune:` section; `output.dir` is the search directory.
        verbose: Keras verbosity of the trials. Default None (2 when `output.quiet`, else 1).

    Returns:
        A `SearchResult`.

    Raises:
        ConfigError, run.RunError: before anything is written, naming the problem.
    """
    started = time.time()
    spec, strategy, splits, out_dir = preflight_search(cfg)
    keras.utils.set_random_seed(cfg.train.seed)
    with FolderLock(out_dir, "search folder"):
        return _search_locked(cfg, spec, strategy, splits, out_dir, started, verbose)


def _search_locked(cfg, spec, strategy, splits, out_dir, started, verbose) -> SearchResult:
    if not (out_dir / SPEC_FILE).exists():
        atomic_write_text(out_dir / SPEC_FILE,
                          yaml.safe_dump(_search_identity(cfg, spec), sort_keys=False))

    teacher = None
    if _needs_teacher(cfg, spec):
        teacher = run_lib.obtain_teacher(cfg, splits, out_dir, strategy=strategy)
    hypermodel = DistillerHyperModel(cfg, splits, teacher, spec=spec)
    tuner = _make_tuner(spec, hypermodel, out_dir, strategy)
    callbacks = []
    if cfg.output.tensorboard:
        # The tuner moves this log_dir to tensorboard/<trial id>/execution0 for every trial.
        callbacks.append(keras.callbacks.TensorBoard(str(out_dir / "tensorboard")))
    if verbose is None:
        verbose = 2 if cfg.output.quiet else 1
    tuner.search(callbacks=callbacks, verbose=verbose)

    rows = trial_rows(tuner, spec)
    atomic_write_text(out_dir / "trials.csv", _rows_csv(rows))
    best_trials = [t for t in tuner.oracle.get_best_trials(len(rows))
                   if t.status == "COMPLETED" and t.score is not None]
    if not best_trials:
        raise RunError(f"no trial of the search in {out_dir} completed; see the trial "
                               "messages in search/trial_*/trial.json")
    best = best_trials[0]
    values = {d.key: best.hyperparameters.values[d.key] for d in spec.space}
    best_cfg = best_trial_config(cfg, values, out_dir, best.trial_id)
    header = (f"# Best trial {best.trial_id} of the search in {out_dir}: {spec.objective} "
              f"{best.score:.4f} on the validation split after {hypermodel.epochs} epochs.\n"
              f"# Searched: {', '.join(f'{k}={v}' for k, v in values.items())}\n"
              f"# Train it: python -m dgad_tf.fit --config {out_dir / BEST_CONFIG_FILE}\n")
    best_path = out_dir / BEST_CONFIG_FILE
    atomic_write_text(best_path, header + best_cfg.to_yaml())
    return SearchResult(out_dir=out_dir, spec=spec, rows=rows, best_trial=best.trial_id,
                        best_config=best_cfg, best_config_path=best_path,
                        trials_run=hypermodel.fits_run, seconds=time.time() - started)

"""What a trial of a hyperparameter search is: a KerasTuner HyperModel over a config.

A search starts from an ordinary run config (every fixed setting) whose `tune:` section
(`dgad_tf.config.TuneConfig`) says what to vary and how to score it. A trial is that config with
the sampled values put in (`config.with_values`). Every trial trains from the same seed on the
same data and teacher, runs `tune.epochs` epochs with the learning-rate schedule of
`train.epochs` compressed to that length (milestones and warm-up scaled proportionally), and is
scored on the validation split carved from the training data (never the test split), at its best
validated epoch, as KerasTuner scores a History. The search loop itself is `dgad_tf.search`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Optional

import keras
import keras_tuner

from dgad_tf import build
from dgad_tf.config import SCORE_METRIC, Config, Dimension, with_values
from dgad_tf.rundir import RunError


def sample(key: str, dimension: Dimension, hp: keras_tuner.HyperParameters):
    """Declare `dimension` on `hp` as `key` and return its current value as a plain Python value.

    Example:
        >>> sample("method.beta", Dimension("float", min=0.0, max=4.0), hp)
        0.0
    """
    if dimension.type == "float":
        return float(
            hp.Float(
                key,
                dimension.min,
                dimension.max,
                step=dimension.step,
                sampling="log" if dimension.log else "linear",
            )
        )
    if dimension.type == "int":
        return int(hp.Int(key, dimension.min, dimension.max, step=dimension.step or 1))
    if dimension.type == "bool":
        return bool(hp.Boolean(key))
    value = hp.Choice(key, list(dimension.values))
    return type(dimension.values[0])(value)


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
        cfg,
        train=dataclasses.replace(cfg.train, epochs=epochs),
        optimizer=dataclasses.replace(cfg.optimizer, milestones=milestones, warmup_epochs=warmup),
    )


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
        clean_weight: weight of the clean accuracy. Defaults to 0.0.
        robust_weight: weight of the robust accuracy. Defaults to 1.0.
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
            logs[SCORE_METRIC] = self.clean_weight * float(
                logs["val_clean_accuracy"]
            ) + self.robust_weight * float(logs["val_robust_accuracy"])
        self.epoch_logs.append({"epoch": epoch + 1, **{k: float(v) for k, v in logs.items()}})


def best_epoch_metrics(epoch_logs: list[dict], objective: str) -> dict:
    """The logs of the validated epoch with the highest `objective` (the first among ties)."""
    scored = [logs for logs in epoch_logs if objective in logs and not math.isnan(logs[objective])]
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
        splits: the loaded data (`build.load_data`).
        teacher: the frozen teacher, or None when no searched method needs one.

    Example:
        >>> hypermodel = DistillerHyperModel(cfg, build.load_data(cfg), teacher)
        >>> tuner = keras_tuner.RandomSearch(hypermodel, objective=keras_tuner.Objective(
        ...     "val_robust_accuracy", "max"), max_trials=3, directory="runs/tune")
        >>> tuner.search(verbose=2)
    """

    def __init__(self, base_cfg: Config, splits, teacher: Optional[keras.Model]):
        super().__init__(name="dgad_distiller", tunable=True)
        self.base_cfg = base_cfg
        self.splits = splits
        self.teacher = teacher
        self.epochs = base_cfg.tune.epochs or base_cfg.train.epochs
        self.fits_run = 0

    def trial_values(self, hp: keras_tuner.HyperParameters) -> dict:
        """{dotted key: value} of this trial (declaring the dimensions on `hp` if needed)."""
        return {
            key: sample(key, dimension, hp) for key, dimension in self.base_cfg.tune.space.items()
        }

    def trial_config(self, hp: keras_tuner.HyperParameters) -> Config:
        """The complete config of this trial, with the base config's full `train.epochs`."""
        return with_values(self.base_cfg, self.trial_values(hp))

    def build(self, hp):
        cfg = compress_schedule(self.trial_config(hp), self.epochs)
        # Every trial starts from the same initialisation, so trials differ by their values only.
        keras.utils.set_random_seed(cfg.train.seed)
        student = build.build_network(cfg, cfg.model.student, self.splits, cfg.model.sync_batchnorm)
        teacher = self.teacher if cfg.method.loss.needs_teacher else None
        steps_per_epoch = max(build.steps_per_epoch_for(cfg, len(self.splits.train.y)), 1)
        distiller = build.build_distiller(
            cfg,
            student=student,
            teacher=teacher,
            steps_per_epoch=steps_per_epoch,
        )
        # The tuner saves the best epoch's weights, which Keras refuses for an unbuilt model.
        distiller.build((None, *self.splits.image_shape))
        return distiller

    def fit(
        self, hp, model, *args, callbacks=None, epochs=None, initial_epoch=0, verbose=1, **kwargs
    ):
        """Train `model` on the training split; return the best validated epoch's metrics.

        Args:
            hp: the trial's hyperparameters.
            model: the distiller from `build(hp)`.
            callbacks: the tuner's callbacks (run after the score callback). Defaults to None.
            epochs: last epoch (hyperband sets it). Defaults to None (`tune.epochs`).
            initial_epoch: first epoch, zero-indexed (hyperband sets it). Defaults to 0.
            verbose: Keras verbosity. Defaults to 1.

        Returns:
            {metric: value} of the epoch with the best objective, including val_clean_accuracy,
            val_robust_accuracy and val_score.
        """
        if args or kwargs:
            raise TypeError(
                "DistillerHyperModel.fit takes its data from the config; received "
                f"extra arguments {list(kwargs) or args!r}"
            )
        cfg = compress_schedule(self.trial_config(hp), self.epochs)
        epochs = int(epochs or cfg.train.epochs)
        train_ds, val_ds, steps_per_epoch = build.make_datasets(
            cfg, self.splits, first_epoch=initial_epoch, epochs=epochs
        )
        if val_ds is None:
            raise RunError("the validation split is empty; tuning needs data.val_fraction > 0")
        score = ValidationScore(*self.base_cfg.tune.weights)
        self.fits_run += 1
        model.fit(
            train_ds,
            validation_data=val_ds,
            epochs=epochs,
            initial_epoch=initial_epoch,
            steps_per_epoch=steps_per_epoch,
            validation_freq=validation_epochs(initial_epoch, epochs, cfg.train.val_every),
            callbacks=[score] + list(callbacks or []),
            shuffle=False,
            verbose=verbose,
        )
        return best_epoch_metrics(score.epoch_logs, self.base_cfg.tune.metric)

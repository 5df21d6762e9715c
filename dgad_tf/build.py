"""From a config to what a run trains: data, networks, the teacher, the distiller, datasets.

`preflight` runs every check that needs no writing (data, networks, teacher file, run folder),
so that a run, a search or a command refuses a bad config before anything is written.
"""

from __future__ import annotations

import logging
import pathlib
from typing import Optional

import keras
import numpy as np

from dgad_tf import attacks, distribute, losses, model_checks, models, precision
from dgad_tf import context as context_lib
from dgad_tf import data as data_lib
from dgad_tf.config import Config
from dgad_tf.context import SharedTeacher
from dgad_tf.distiller import AdversarialDistiller
from dgad_tf.optim import make_optimizer
from dgad_tf.rundir import (
    RunError,
    check_keras_file,
    check_run_dir,
    check_teacher_file,
    check_teacher_run,
    teacher_path_for,
    teacher_run_config,
)
from dgad_tf.selection import SELECTION_RULES
from dgad_tf.stats import at_chance_level, chance_threshold

log = logging.getLogger(__name__)


def load_data(cfg: Config) -> data_lib.DatasetSplits:
    """The configured dataset's train/val/test splits (any loader error becomes a RunError)."""
    try:
        return data_lib.splits_from_config(cfg.data)
    except (ValueError, FileNotFoundError, OSError) as err:
        raise RunError(f"data: {err}") from err


def build_network(
    cfg: Config, arch: str, splits: data_lib.DatasetSplits, sync_batchnorm: bool = False
) -> keras.Model:
    """A registry network sized for the data, with the configured normalisation and init."""
    m = cfg.model
    normalize = None if m.normalize_mean is None else (m.normalize_mean, m.normalize_std)
    if normalize is not None and len(m.normalize_mean) != splits.image_shape[-1]:
        raise RunError(
            f"model.normalize_mean has {len(m.normalize_mean)} channels but the "
            f"images have {splits.image_shape[-1]}"
        )
    try:
        return models.build_model(
            arch,
            splits.num_classes,
            tuple(splits.image_shape),
            normalize=normalize,
            sync_batchnorm=sync_batchnorm,
            init=m.init,
        )
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
        teacher = models.load_model(path)
    except Exception as err:  # keras raises many types for a bad file
        raise RunError(f"model.teacher_path: cannot load {path}: {err}") from err
    classes = teacher.output_shape[-1]
    if classes != splits.num_classes:
        raise RunError(
            f"model.teacher_path: the teacher {path} has {classes} classes but the "
            f"data has {splits.num_classes}"
        )
    if tuple(teacher.input_shape[1:]) != tuple(splits.image_shape):
        raise RunError(
            f"model.teacher_path: the teacher {path} takes images of shape "
            f"{tuple(teacher.input_shape[1:])} but the data has "
            f"{tuple(splits.image_shape)}"
        )
    teacher.trainable = False
    check_teacher_beats_chance(teacher, splits, path)
    return teacher


def load_shared_teacher(
    path: pathlib.Path, splits: data_lib.DatasetSplits, strategy
) -> SharedTeacher:
    """Load and check the teacher file once for several runs, measuring what the load draws.

    The runs given it (a study's cells, through their `Context`) use its model and replay the
    load's draws from Keras's random state instead of loading the file again, and so train as
    `python -m dgad_tf.fit` of their configs does (see `dgad_tf.context`).

    Args:
        path: the teacher file.
        splits: the data it must suit (`load_teacher`'s checks).
        strategy: the distribution strategy the runs train under; the teacher is loaded in its
            scope.

    Raises:
        RunError: as `load_teacher`.
    """
    before = context_lib.random_state()
    with strategy.scope():
        teacher = load_teacher(path, splits)
    draws = context_lib.seed_draws(before, context_lib.random_state())
    if draws is None:
        log.warning(
            "loading the teacher %s moved a random state other than Keras's seeds drawn from "
            "Python's `random`; every run loads it again, so that each trains as it would alone",
            path,
        )
    return SharedTeacher(model=teacher, path=pathlib.Path(path), draws=draws)


TEACHER_CHECK_N = 500
"""Images on which a teacher must beat chance before anything is distilled from it."""


def check_teacher_beats_chance(
    teacher: keras.Model, splits: data_lib.DatasetSplits, path, n: int = TEACHER_CHECK_N
):
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
        n: images to score. Defaults to `TEACHER_CHECK_N` (500).

    Raises:
        RunError: naming the file, the accuracy, the chance level and the likely causes.
    """
    source, arrays = ("validation", splits.val) if len(splits.val.y) else ("training", splits.train)
    count = min(n, len(arrays.y))
    index = np.unique(np.linspace(0, len(arrays.y) - 1, count).round().astype(int))
    x, y = data_lib.to_float(arrays.x[index]), arrays.y[index]
    outputs = np.concatenate(
        [np.asarray(teacher(x[i : i + 100], training=False)) for i in range(0, len(y), 100)]
    )
    if model_checks.looks_like_probabilities(outputs):
        # The distiller refuses it on its first batch too; here it is refused before the run
        # folder is touched, as every other teacher problem is.
        raise RunError(
            f"model.teacher_path: the teacher {path} returns probabilities (its outputs on "
            f"{len(y)} {source} images are non-negative and every row sums to 1), but every "
            "method takes logits: save it without its final softmax (a last Dense layer with "
            "activation=None, or `keras.Model(model.inputs, model.layers[-2].output)` when the "
            "softmax is a layer of its own)"
        )
    accuracy = float(np.mean(np.argmax(outputs, axis=-1) == y))
    chance = 1.0 / splits.num_classes
    log.info(
        "teacher %s: clean accuracy %.1f%% on %d %s images (chance %.1f%%)",
        path,
        100 * accuracy,
        len(y),
        source,
        100 * chance,
    )
    if at_chance_level(accuracy, splits.num_classes, len(y)):
        raise RunError(
            f"model.teacher_path: the teacher {path} is at chance level on the data: clean "
            f"accuracy {accuracy:.1%} on {len(y)} {source} images, chance {chance:.1%} (it must "
            f"exceed {chance_threshold(splits.num_classes, len(y)):.1%}). Its class order may "
            "differ from the data's (Tiny ImageNet "
            "numbers classes by sorted wnids), its input normalisation may be wrong, or it is "
            "untrained; nothing is distilled from it"
        )


def method_loss(cfg: Config) -> losses.MethodLoss:
    """The loss object of the config's `method:` section, for a run of its batch size.

    A teacher trained here has a config of its own (`Config.teacher_config`), whose `method:`
    section is the teacher's method.
    """
    # DGAD's reference MobileNetV2 weighting divides by the configured batch size; IGDM's ramp
    # runs over the run's epochs unless `method.igdm.total_epochs` says otherwise.
    return cfg.method.loss.for_batch_size(cfg.train.batch_size).for_epochs(cfg.train.epochs)


def training_attack(cfg: Config) -> attacks.PGD:
    """The training attack of the config's `attack:` section."""
    a = cfg.attack
    return attacks.PGD(
        eps=a.eps, step_size=a.step_size, steps=a.steps, start=a.start, start_std=a.start_std
    )


def build_distiller(
    cfg: Config,
    *,
    student: keras.Model,
    teacher: Optional[keras.Model],
    steps_per_epoch: int,
) -> AdversarialDistiller:
    """A compiled `AdversarialDistiller` with the config's attack, loss and optimiser.

    Everything comes from `cfg`: the loss of its `method:` section, the attack, the optimiser
    and its schedule over `train.epochs` from `optimizer.lr`. Call it inside
    `strategy.scope()` when training under a distribution strategy.
    """
    t, o = cfg.train, cfg.optimizer
    student = precision.with_policy(student, t.precision)
    if teacher is not None:
        teacher = precision.with_policy(teacher, t.precision)
    distiller = AdversarialDistiller(
        teacher=teacher,
        student=student,
        loss=method_loss(cfg),
        attack=training_attack(cfg),
        reference_forwards=cfg.method.reference_forwards,
        val_robust_steps=t.val_robust_steps,
        seed=t.seed,
    )
    optimizer = make_optimizer(
        o.lr,
        momentum=o.momentum,
        weight_decay=o.weight_decay,
        nesterov=o.nesterov,
        steps_per_epoch=steps_per_epoch,
        epochs=t.epochs,
        schedule=o.schedule,
        milestones=o.milestones,
        gamma=o.gamma,
        warmup_epochs=o.warmup_epochs,
    )
    distiller.compile(
        optimizer=precision.loss_scaled(optimizer, t.precision),
        jit_compile=precision.resolve_jit_compile(t.jit_compile),
        steps_per_execution=t.steps_per_execution,
    )
    return distiller


def steps_per_epoch_for(cfg: Config, num_train: int) -> int:
    """Training steps per epoch: full batches, plus the last partial one unless it is dropped."""
    return data_lib.steps_per_epoch(num_train, cfg.train.batch_size, cfg.train.drop_remainder)


def make_datasets(cfg: Config, splits: data_lib.DatasetSplits, *, first_epoch: int, epochs: int):
    """(training dataset, validation dataset or None, steps per epoch) for the config.

    The training dataset holds epochs `first_epoch .. epochs - 1`, each a pure function of
    `train.seed` and the epoch: fit it with `steps_per_epoch`, and a resumed run replays the
    uninterrupted run's batches exactly.
    """
    t, d = cfg.train, cfg.data
    steps_per_epoch = steps_per_epoch_for(cfg, len(splits.train.y))
    if steps_per_epoch < 1:
        raise RunError(
            f"train.batch_size={t.batch_size} is larger than the "
            f"{len(splits.train.y)} training images"
        )
    train_ds = data_lib.make_train_dataset(
        splits.train,
        t.batch_size,
        augment=d.augment,
        crop_padding=d.crop_padding,
        flip=d.flip,
        seed=t.seed,
        drop_remainder=t.drop_remainder,
        first_epoch=first_epoch,
        epochs=max(epochs - first_epoch, 1),
    )
    train_ds = distribute.distribute_options(train_ds)
    val_arrays = data_lib.Arrays(splits.val.x[: t.val_robust_n], splits.val.y[: t.val_robust_n])
    val_ds = data_lib.make_eval_dataset(val_arrays, t.batch_size) if len(val_arrays.y) else None
    if val_ds is not None:
        val_ds = distribute.distribute_options(val_ds)
    return train_ds, val_ds, steps_per_epoch


def selection_test_arrays(cfg: Config, splits: data_lib.DatasetSplits) -> data_lib.Arrays:
    """The test images `train.select=best_test` (or `rslad_pgd20`) selects the checkpoint on."""
    n = cfg.train.select_n
    return data_lib.Arrays(splits.test.x[:n], splits.test.y[:n])


def preflight(
    cfg: Config,
    run_dir: Optional[pathlib.Path] = None,
    splits: Optional[data_lib.DatasetSplits] = None,
    teacher: Optional[SharedTeacher] = None,
):
    """Every check that needs no writing: data, networks, teacher file, run directory.

    Args:
        cfg: the run's config.
        run_dir: where this process writes. Defaults to None (`output.dir`; a non-chief worker
            passes its scratch directory).
        splits: the data, already loaded for several runs (a study's `Context`). Defaults to
            None (loaded here).
        teacher: the teacher file, already loaded and checked on `splits` for several runs.
            Defaults to None (the file is loaded here to check it).

    Returns:
        (splits, run_dir) ready for `run`.
    """
    run_dir = pathlib.Path(cfg.output.dir) if run_dir is None else pathlib.Path(run_dir)
    check_run_dir(cfg, run_dir)
    if splits is None:
        splits = load_data(cfg)
    if cfg.train.drop_remainder and len(splits.train.y) < cfg.train.batch_size:
        raise RunError(
            f"train.batch_size={cfg.train.batch_size} is larger than the "
            f"{len(splits.train.y)} training images (and train.drop_remainder=true)"
        )
    rule = SELECTION_RULES.get(cfg.train.select, "train.select", RunError)
    if rule.needs_validation and len(splits.val.y) == 0:
        raise RunError(
            f"data.val_fraction={cfg.data.val_fraction} leaves no validation image out "
            f"of {len(splits.train.y)}; train.select={cfg.train.select} needs some (or set "
            "train.select=last)"
        )
    if rule.leaky and len(splits.test.y) == 0:
        raise RunError(f"train.select={cfg.train.select} needs a test split; this data has none")
    if cfg.method.loss.needs_teacher:
        check_teacher(cfg, splits, run_dir, teacher)
    build_network(cfg, cfg.model.student, splits)
    return splits, run_dir


def check_teacher(
    cfg: Config,
    splits: data_lib.DatasetSplits,
    run_dir: pathlib.Path,
    teacher: Optional[SharedTeacher] = None,
):
    """The teacher file loads and suits the data, or a teacher can be trained here.

    Args:
        cfg: the run's config.
        splits: the run's data.
        run_dir: where the run writes.
        teacher: the teacher file, already loaded and checked on `splits`; when it is this
            run's, its load is replayed instead of loading the file again. Defaults to None.

    Raises:
        RunError: naming `model.teacher_path` and what is wrong.
    """
    if check_teacher_file(cfg, run_dir):
        path = teacher_path_for(cfg, run_dir)
        if teacher is not None and teacher.serves(path):
            teacher.replay_load()
        else:
            load_teacher(path, splits)
    else:
        check_teacher_run(cfg, run_dir)
        teacher_cfg = teacher_run_config(cfg, run_dir)
        build_network(teacher_cfg, teacher_cfg.model.student, splits)


def make_strategy(cfg: Config, batch_sizes=None):
    """The configured distribution strategy, checked against every global batch size.

    Create it before anything else touches TensorFlow: logical CPUs are configured there.

    Args:
        cfg: the config (`distribute` and `train.batch_size`).
        batch_sizes: (key, global batch size) pairs to check. Defaults to None
            (`train.batch_size` only).

    Raises:
        RunError: settings `dgad_tf.distribute` cannot honour, naming the key.
    """
    try:
        strategy = distribute.make_strategy(cfg.distribute)
    except distribute.DistributeError as err:
        raise RunError(str(err)) from err
    check_batch_sizes(cfg, strategy, batch_sizes)
    return strategy


def check_batch_sizes(cfg: Config, strategy, batch_sizes=None) -> None:
    """Every global batch size splits evenly over `strategy`'s replicas.

    A run on a strategy built for several runs (a study's cells) checks its own
    `train.batch_size` here, as `make_strategy` does for the strategy it creates.

    Args:
        cfg: the config (`train.batch_size`).
        strategy: the distribution strategy.
        batch_sizes: (key, global batch size) pairs to check. Defaults to None
            (`train.batch_size` only).

    Raises:
        RunError: naming the key (when `batch_sizes` is given) and the replicas.
    """
    for key, batch_size in batch_sizes or [("train.batch_size", cfg.train.batch_size)]:
        try:
            distribute.check_global_batch(batch_size, strategy)
        except distribute.DistributeError as err:
            raise RunError(f"{key}: {err}" if batch_sizes else str(err)) from err

"""The config's sections: frozen dataclasses whose defaults are the single source of truth.

Every name and choice list of the config lives here, but those of the registered objects: a
method and its options are its loss class in `dgad_tf.losses` (the `method:` section holds its
fields), and evaluation attacks, data sources, selection rules and export formats are the tables
of the modules that define them (`dgad_tf.serving.EXPORT_FORMATS` for `export.formats`). `validate`
checks values against them and `loading` reads YAML and `--set` overrides into them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import typing
from typing import Optional

import yaml

PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")
TEACHER_TRAIN_METHODS = ("pgd_at", "trades")
ATTACK_INITS = ("auto", "uniform", "gaussian", "none")
MODEL_INITS = ("torch", "keras")
SCHEDULES = ("piecewise", "cosine", "constant")
STRATEGIES = ("auto", "none", "mirrored", "multi_worker")
# The search (TuneConfig); a weighted objective is scored as the metric SCORE_METRIC.
TUNERS = ("random", "bayesian", "hyperband")
TUNE_OBJECTIVES = ("val_robust_accuracy", "val_clean_accuracy")
SCORE_METRIC = "val_score"
DIMENSION_TYPES = ("float", "int", "choice", "bool")


class ConfigError(ValueError):
    """A configuration value is unknown, of the wrong type, or out of range."""


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Where the images come from and how they are fed.

    Args:
        source: a source of `dgad_tf.data.DATA_SOURCES` (digits, tfds, npz, folder,
            tinyimagenet, or one registered). Defaults to "digits" (embedded, no download).
        name: TFDS dataset name for source "tfds" (e.g. "cifar10"). Defaults to None.
        path: file or folder for "npz", "folder" and "tinyimagenet". Defaults to None.
        data_dir: TFDS data directory. Defaults to None (TFDS's own default).
        val_fraction: share of the training data held out for validation. Defaults to 0.1.
        seed: seed of the validation carve-out and the shuffling. Defaults to 0.
        train_limit: use only the first n training images. Defaults to None (all).
        test_limit: use only the first n test images. Defaults to None (all).
        image_size: resize folder images to this square size. Defaults to None.
        augment: pad-and-crop augmentation of training images. Defaults to True.
        crop_padding: zero padding before the random crop. Defaults to None (H/8, 4 for CIFAR).
        flip: random horizontal flips. Defaults to True.
    """

    source: str = "digits"
    name: Optional[str] = None
    path: Optional[str] = None
    data_dir: Optional[str] = None
    val_fraction: float = 0.1
    seed: int = 0
    train_limit: Optional[int] = None
    test_limit: Optional[int] = None
    image_size: Optional[int] = None
    augment: bool = True
    crop_padding: Optional[int] = None
    flip: bool = True


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Student and teacher networks.

    Args:
        student: registry name of the student architecture. Defaults to "resnet-18".
        teacher: registry name of the teacher architecture (used when it is trained here).
            Defaults to "wrn-34-10".
        teacher_path: a `.keras` teacher. Loaded when the file exists; otherwise the teacher is
            trained as `teacher_train` says and saved there (a cache). Defaults to None
            (`<run dir>/teacher.keras`).
        normalize_mean: per-channel mean of an input-normalisation layer inside the models.
            Defaults to None (no normalisation layer).
        normalize_std: per-channel std of that layer. Defaults to None.
        sync_batchnorm: synchronised batch-norm statistics across replicas for the student.
            Defaults to False (as the reference).
        init: initial weights of networks built here: "torch" (PyTorch's defaults, as the
            reference: conv and linear U(+-1/sqrt(fan_in)); WideResNet convs
            N(0, sqrt(2/(k*k*out_channels))) and linear bias 0) or "keras" (Keras's
            initialisers). Defaults to "torch".
    """

    student: str = "resnet-18"
    teacher: str = "wrn-34-10"
    teacher_path: Optional[str] = None
    normalize_mean: Optional[tuple[float, ...]] = None
    normalize_std: Optional[tuple[float, ...]] = None
    sync_batchnorm: bool = False
    init: str = "torch"


@dataclasses.dataclass(frozen=True)
class TeacherTrainConfig:
    """How a teacher is trained when `model.teacher_path` does not exist yet.

    The teacher is trained with the same data, attack and optimiser sections as the student, but
    with its own method, epochs, learning rate and milestones.

    Args:
        method: "pgd_at" (Madry) or "trades". Defaults to "pgd_at".
        epochs: training epochs; 0 means a missing teacher file is an error. Defaults to 0.
        lr: initial learning rate. Defaults to 0.1.
        milestones: epochs at which the learning rate is divided by 10. Defaults to ().
    """

    method: str = "pgd_at"
    epochs: int = 0
    lr: float = 0.1
    milestones: tuple[int, ...] = ()


@dataclasses.dataclass(frozen=True)
class AttackConfig:
    """The L-inf PGD that makes training examples (inner maximisation).

    Args:
        eps: radius of the L-inf ball in pixel units; accepts fractions such as "8/255".
            Defaults to 8/255.
        step_size: PGD step. Defaults to 2/255.
        steps: PGD iterations during training. Defaults to 10.
        start: random start: "auto" (the method's own, `MethodLoss.random_start`: Gaussian
            0.001 for the distillation methods and TRADES, uniform in the ball for PGD-AT and
            ARD), "uniform", "gaussian" or "none". Defaults to "auto".
        start_std: standard deviation of the Gaussian start. Defaults to 0.001.
    """

    eps: float = 8 / 255
    step_size: float = 2 / 255
    steps: int = 10
    start: str = "auto"
    start_std: float = 0.001


@dataclasses.dataclass(frozen=True)
class MethodConfig:
    """The training method: its loss object, and whether to follow its reference code's forwards.

    In a config file the section is flat and holds exactly the loss class's fields besides
    `name` and `reference_forwards`, e.g. `method: {name: trades, beta: 6.0}`; a field another
    method has is an error listing the valid keys. `cfg.method.beta` reads the loss's field.
    A method with a teacher may add IGDM's term with an `igdm:` block,
    `method: {name: adaad, igdm: {alpha: 1.0}}` (its loss is then `IGDM(base=AdaAD(), ...)`).

    Args:
        name: a method name of `dgad_tf.losses.METHOD_LOSSES` ("dgad", "adaad", "rslad",
            "ard", "iad", "adaiad", "trades", "pgd_at", "clean"), or a dotted path to a
            `dgad_tf.losses.MethodLoss` subclass (`mypkg.mymodule.MyLoss`). Defaults to "dgad".
        reference_forwards: run the student's forwards in the order and batch-norm modes of the
            method's reference code (`MethodLoss.reference_forwards`, docs/method.md §9.10);
            they change only batch-norm statistics and, for PGD-AT, the start, not the loss
            formula. Defaults to False.
        loss: the method's loss object with the section's options, each defaulting to its
            class's default. Defaults to None (the class of `name` with its defaults).
    """

    name: str = "dgad"
    reference_forwards: bool = False
    loss: typing.Any = None

    def __post_init__(self):
        if self.loss is None:
            from dgad_tf.losses import get

            object.__setattr__(self, "loss", get(self.name)())

    def __getattr__(self, field: str):
        # Only reached for names that are not MethodConfig's own: the loss's options.
        if field.startswith("_") or field == "loss":
            raise AttributeError(field)
        loss = self.__dict__.get("loss")
        options = {} if loss is None else loss.section_options()
        if field in options:
            return options[field]
        raise AttributeError(f"method {self.name!r} has no option {field!r}")

    def to_dict(self) -> dict:
        """The flat section: name, reference_forwards and the loss's options."""
        return {
            "name": self.name,
            "reference_forwards": self.reference_forwards,
            **self.loss.section_options(),
        }


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    """SGD with PyTorch-coupled weight decay and its learning-rate schedule.

    Args:
        lr: initial learning rate. Defaults to 0.1.
        momentum: SGD momentum. Defaults to 0.9.
        weight_decay: L2 coefficient added to every gradient before momentum, as PyTorch's
            SGD does. Defaults to 5e-4.
        nesterov: Nesterov momentum. Defaults to False.
        schedule: "piecewise", "cosine" or "constant". Defaults to "piecewise".
        milestones: epochs at which a piecewise schedule multiplies the rate by `gamma`.
            Defaults to (100, 150).
        gamma: piecewise decay factor. Defaults to 0.1.
        warmup_epochs: linear warm-up length in epochs. Defaults to 0.
    """

    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    nesterov: bool = False
    schedule: str = "piecewise"
    milestones: tuple[int, ...] = (100, 150)
    gamma: float = 0.1
    warmup_epochs: int = 0


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """The training loop.

    Args:
        epochs: student training epochs. Defaults to 200.
        batch_size: GLOBAL batch size (split across replicas). Defaults to 128.
        seed: seed of initialisation, shuffling and attacks. Defaults to 0.
        val_every: compute validation (clean and PGD robust accuracy) every N epochs. Defaults to 1.
        val_robust_n: validation images attacked for `val_robust_accuracy`. Defaults to 1000.
        val_robust_steps: PGD steps of that validation attack (CE loss, uniform start,
            step eps/4). Defaults to 10.
        jit_compile: compile the train step with XLA: true, false, or "auto" (on where a GPU
            is visible; off on CPU, where XLA measured 2-7x slower, see benchmarks/README.md).
            Defaults to "auto".
        steps_per_execution: train steps per compiled call. Defaults to 1.
        precision: "float32", "mixed_bfloat16" (GPUs with bfloat16: A100/H100/H200) or
            "mixed_float16" (older GPUs; dynamic loss scaling); losses, softmax, KL and the
            attack's sign step stay float32 (see `dgad_tf.precision`). Defaults to "float32".
        select: the checkpoint the final report evaluates (and export uses): "last"
            (`student_last.keras`), "best_val" (`student_best_robust.keras`, best
            `val_robust_accuracy` on the validation split; needs `data.val_fraction > 0`) or
            "best_test" (`student_best_test_robust.keras`, best PGD accuracy on the TEST split
            as the DGAD reference selects; leaky, a reproduction mode only) or "rslad_pgd20"
            (`student_best_test_pgd20.keras`, RSLAD's rule: best `test_pgd20_accuracy`, PGD-20
            with step 0.003 from a uniform start, after every 20th epoch before epoch 215 and
            every epoch from 215, counted from 1; also leaky), or a rule registered in
            `dgad_tf.selection`. Defaults to "best_val".
        select_n: first n test images evaluated for `select="best_test"` (clean and
            PGD-`val_robust_steps` after every epoch) or `"rslad_pgd20"`. Defaults to None (the
            whole test split, as the references).
        drop_remainder: drop the last partial training batch of each epoch (the reference keeps
            it). Defaults to True.
    """

    epochs: int = 200
    batch_size: int = 128
    seed: int = 0
    val_every: int = 1
    val_robust_n: int = 1000
    val_robust_steps: int = 10
    jit_compile: typing.Union[bool, str] = "auto"
    steps_per_execution: int = 1
    precision: str = "float32"
    select: str = "best_val"
    select_n: Optional[int] = None
    drop_remainder: bool = True


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """The final report on the test split.

    Args:
        attacks: attacks of the final report, by name (see `dgad_tf.evaluate`).
            Defaults to ("clean", "pgd20").
        n: first n test images attacked. Defaults to 1000.
        batch_size: evaluation batch size. Defaults to 256.
    """

    attacks: tuple[str, ...] = ("clean", "pgd20")
    n: int = 1000
    batch_size: int = 256


@dataclasses.dataclass(frozen=True)
class OutputConfig:
    """Where a run writes.

    Args:
        dir: run directory. Defaults to "runs/default".
        tensorboard: write TensorBoard logs. Defaults to True.
        quiet: no progress bars, log lines only. Defaults to False.
    """

    dir: str = "runs/default"
    tensorboard: bool = True
    quiet: bool = False


@dataclasses.dataclass(frozen=True)
class DistributeConfig:
    """Data-parallel training.

    Args:
        strategy: "auto", "none", "mirrored" or "multi_worker". Defaults to "auto".
        devices: explicit device list for "mirrored". Defaults to () (all visible GPUs).
        logical_cpus: split the CPU into this many logical devices (to try data-parallel
            training without GPUs). Defaults to 0 (off).
    """

    strategy: str = "auto"
    devices: tuple[str, ...] = ()
    logical_cpus: int = 0


@dataclasses.dataclass(frozen=True)
class ExportConfig:
    """Automatic export of the finished student.

    Args:
        formats: artifacts to write after training, names of
            `dgad_tf.serving.EXPORT_FORMATS`, e.g. ("saved_model", "tflite_float").
            Defaults to () (no export).
        dir: export folder; versions go in numbered sub-folders. Defaults to None
            (`<run dir>/export`).
    """

    formats: tuple[str, ...] = ()
    dir: Optional[str] = None


@dataclasses.dataclass(frozen=True)
class Dimension:
    """One searched config value of `tune.space` (read by `dgad_tf.config.space`).

    Args:
        type: "float", "int", "choice" or "bool".
        min, max: inclusive bounds of "float" and "int". Defaults to None.
        step: grid step of "float" and "int". Defaults to None (continuous / 1).
        log: sample a "float" uniformly in log space. Defaults to False.
        values: the options of "choice". Defaults to ().
    """

    type: str
    min: Optional[float] = None
    max: Optional[float] = None
    step: Optional[float] = None
    log: bool = False
    values: tuple = ()

    def extremes(self) -> tuple:
        """The values that bound the dimension: each must make a valid config."""
        if self.type in ("float", "int"):
            return (self.min, self.max)
        return (False, True) if self.type == "bool" else self.values

    def to_dict(self) -> dict:
        """The dimension as written in `tune.space`, e.g. {"type": "float", "min": 0, "max": 4}."""
        return _plain(_written_fields(self))


@dataclasses.dataclass(frozen=True)
class TuneConfig:
    """The hyperparameter search of `python -m dgad_tf.tune` (see `dgad_tf.search`).

    Args:
        objective: "val_robust_accuracy", "val_clean_accuracy", or weights
            {clean_weight: a, robust_weight: b} of `val_score`. Defaults to "val_robust_accuracy".
        tuner: "random", "bayesian" or "hyperband". Defaults to "random".
        max_trials: trials in all, resumed ones included (not hyperband). Defaults to 10.
        epochs: epochs per trial (hyperband's max_epochs). Defaults to None (train.epochs).
        seed: seed of the tuner's sampling. Defaults to 0.
        space: dotted config key -> `Dimension`, read from `{type: float, min: 0, max: 4}`
            entries. Defaults to {} (no search; `fit` ignores the section).
    """

    objective: typing.Union[str, dict] = "val_robust_accuracy"
    tuner: str = "random"
    max_trials: int = 10
    epochs: Optional[int] = None
    seed: int = 0
    space: dict[str, Dimension] = dataclasses.field(default_factory=dict)

    @property
    def metric(self) -> str:
        """The metric trials are ranked by."""
        return SCORE_METRIC if isinstance(self.objective, dict) else self.objective

    @property
    def weights(self) -> tuple[float, float]:
        """(clean_weight, robust_weight) of `val_score`."""
        if isinstance(self.objective, dict):
            return (
                float(self.objective.get("clean_weight", 0.0)),
                float(self.objective.get("robust_weight", 0.0)),
            )
        return (1.0, 0.0) if self.objective == "val_clean_accuracy" else (0.0, 1.0)

    def to_dict(self) -> dict:
        """The section as written, defaults left out: runs without a search keep `tune: {}`."""
        values = _written_fields(self)
        if self.space:
            values["space"] = {key: dimension.to_dict() for key, dimension in self.space.items()}
        return values


@dataclasses.dataclass(frozen=True)
class Config:
    """A whole run. Every section has the defaults of its dataclass."""

    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    teacher_train: TeacherTrainConfig = TeacherTrainConfig()
    attack: AttackConfig = AttackConfig()
    method: MethodConfig = MethodConfig()
    optimizer: OptimizerConfig = OptimizerConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()
    output: OutputConfig = OutputConfig()
    distribute: DistributeConfig = DistributeConfig()
    export: ExportConfig = ExportConfig()
    tune: TuneConfig = TuneConfig()

    def to_dict(self) -> dict:
        """Plain nested dict (tuples as lists), as written to `config.yaml`."""
        values = {
            f.name: _plain(
                getattr(self, f.name).to_dict()
                if f.name in ("method", "tune")
                else dataclasses.asdict(getattr(self, f.name))
            )
            for f in dataclasses.fields(self)
        }
        return values

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def teacher_config(self, output_dir: str) -> "Config":
        """The resolved config of the run that trains this run's teacher when its file is missing.

        The teacher run trains the network `model.teacher` (its student, built without
        synchronised batch norm) with `teacher_train`'s method, epochs, learning rate and
        milestones. Its `method:` section is this run's when `teacher_train.method` is this run's
        method (a TRADES teacher of a TRADES run takes its `beta`), otherwise that method's loss
        with its class's defaults and this run's `reference_forwards`. Its
        data, attack, optimiser (but `lr` and `milestones`), train, eval and distribute sections
        are this run's; it distils from no teacher, trains none, searches nothing and exports
        nothing. It is written to `<output_dir>/config.yaml`, a config `fit` reads.

        Args:
            output_dir: the teacher run's folder (`teacher_run/` of this run's folder).
        """
        tt = self.teacher_train
        method = self.method
        if tt.method != method.name:
            method = MethodConfig(name=tt.method, reference_forwards=method.reference_forwards)
        return dataclasses.replace(
            self,
            model=dataclasses.replace(
                self.model, student=self.model.teacher, teacher_path=None, sync_batchnorm=False
            ),
            teacher_train=TeacherTrainConfig(),
            method=method,
            optimizer=dataclasses.replace(self.optimizer, lr=tt.lr, milestones=tt.milestones),
            train=dataclasses.replace(self.train, epochs=tt.epochs),
            output=dataclasses.replace(self.output, dir=str(output_dir)),
            export=ExportConfig(),
            tune=TuneConfig(),
        )

    def hash(self) -> str:
        """sha256 of the resolved config, independent of the file it came from."""
        return hashlib.sha256(self.to_yaml().encode()).hexdigest()


def _written_fields(section) -> dict:
    """The fields of a dataclass instance that differ from their defaults."""
    defaults = {
        f.name: f.default if f.default_factory is dataclasses.MISSING else f.default_factory()
        for f in dataclasses.fields(section)
    }
    return {
        name: getattr(section, name)
        for name, default in defaults.items()
        if getattr(section, name) != default
    }


def _plain(value):
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value

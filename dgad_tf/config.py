"""Typed run configuration: frozen dataclasses, YAML overrides and `--set` overrides.

The dataclasses below are the single source of truth for every default. A YAML file in `configs/`
holds only what differs from them, and `--set section.key=value` overrides on top of that. Every
value is checked before anything runs: unknown keys, wrong types and out-of-range values raise
`ConfigError` naming the key and the value received.

Example:
    >>> cfg = load_config("configs/quickstart.yaml", ["attack.steps=5"])
    >>> cfg.attack.steps
    5
"""

from __future__ import annotations

import dataclasses
import fractions
import hashlib
import pathlib
import types
import typing
from typing import Any, Optional

import yaml

METHODS = ("clean", "pgd_at", "trades", "ard", "rslad", "adaad", "iad", "dgad")
TEACHER_METHODS = ("ard", "rslad", "adaad", "iad", "dgad")
EXPORT_FORMATS = ("saved_model", "tflite_float", "tflite_dynamic", "tflite_int8")
# Attacks of an evaluation by name; "pgd<K>" (K >= 1 steps) is a family (see dgad_tf.evaluate).
EVAL_ATTACKS = ("clean", "fgsm", "cw_inf", "cw_l2", "autoattack", "autoattack_custom")
PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")
KL_REDUCTIONS = ("batchmean", "class_mean")
DGAD_WEIGHTINGS = ("standard", "reference_mobilenetv2")
TEACHER_TRAIN_METHODS = ("pgd_at", "trades")
DATA_SOURCES = ("digits", "tfds", "npz", "folder", "tinyimagenet")
ATTACK_INITS = ("auto", "uniform", "gaussian", "none")
MODEL_INITS = ("torch", "keras")
SCHEDULES = ("piecewise", "cosine", "constant")
STRATEGIES = ("auto", "none", "mirrored", "multi_worker")
# Which checkpoint the final report (and export) uses: see TrainConfig.select.
SELECTION_RULES = ("last", "best_val", "best_test")


class ConfigError(ValueError):
    """A configuration value is unknown, of the wrong type, or out of range."""


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Where the images come from and how they are fed.

    Args:
        source: one of `DATA_SOURCES`. Default "digits" (embedded, no download).
        name: TFDS dataset name for source "tfds" (e.g. "cifar10"). Default None.
        path: file or folder for "npz", "folder" and "tinyimagenet". Default None.
        data_dir: TFDS data directory. Default None (TFDS's own default).
        val_fraction: share of the training data held out for validation. Default 0.1.
        seed: seed of the validation carve-out and the shuffling. Default 0.
        train_limit: use only the first n training images. Default None (all).
        test_limit: use only the first n test images. Default None (all).
        image_size: resize folder images to this square size. Default None.
        augment: pad-and-crop augmentation of training images. Default True.
        crop_padding: zero padding before the random crop. Default None (H/8, 4 for CIFAR).
        flip: random horizontal flips. Default True.
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
        student: registry name of the student architecture. Default "resnet-18".
        teacher: registry name of the teacher architecture (used when it is trained here).
            Default "wrn-34-10".
        teacher_path: a `.keras` teacher. Loaded when the file exists; otherwise the teacher is
            trained as `teacher_train` says and saved there (a cache). Default None
            (`<run dir>/teacher.keras`).
        normalize_mean: per-channel mean of an input-normalisation layer inside the models.
            Default None (no normalisation layer).
        normalize_std: per-channel std of that layer. Default None.
        sync_batchnorm: synchronised batch-norm statistics across replicas for the student.
            Default False (as the reference).
        init: initial weights of networks built here: "torch" (PyTorch's defaults, as the
            reference: conv and linear U(+-1/sqrt(fan_in)); WideResNet convs
            N(0, sqrt(2/(k*k*out_channels))) and linear bias 0) or "keras" (Keras's
            initialisers). Default "torch".
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
        method: "pgd_at" (Madry) or "trades". Default "pgd_at".
        epochs: training epochs; 0 means a missing teacher file is an error. Default 0.
        lr: initial learning rate. Default 0.1.
        milestones: epochs at which the learning rate is divided by 10. Default ().
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
            Default 8/255.
        step_size: PGD step. Default 2/255.
        steps: PGD iterations during training. Default 10.
        init: random start: "auto" (the method's own: Gaussian 0.001 for the distillation
            methods and TRADES, uniform in the ball for PGD-AT and ARD), "uniform",
            "gaussian" or "none". Default "auto".
        init_std: standard deviation of the Gaussian start. Default 0.001.
    """

    eps: float = 8 / 255
    step_size: float = 2 / 255
    steps: int = 10
    init: str = "auto"
    init_std: float = 0.001


@dataclasses.dataclass(frozen=True)
class MethodConfig:
    """Training method and its loss weights.

    Args:
        name: one of `METHODS`. Default "dgad".
        beta: weight of DGAD's predictive-consistency regulariser (0 turns PCR off). Default 1.0.
        use_map: DGAD's misclassification-aware partitioning. Default True.
        use_els: DGAD's error-corrective label swapping. Default True.
        distill_weight: explicit weight on DGAD's distillation (KL) term. Default 1.0.
        trades_beta: TRADES's KL weight. Default 6.0.
        ard_alpha: ARD's weight on the distillation term. Default 1.0.
        ard_temperature: ARD's temperature. Default 30.0.
        adaad_alpha: AdaAD's weight on the adversarial term. Default 1.0.
        dgad_weighting: "standard" (the paper's loss) or "reference_mobilenetv2" (the reference
            code's MobileNetV2 branch, which multiplies the clean and adversarial KL means; for
            reproducing its MobileNetV2 rows, see `losses.dgad_loss`). Default "standard".
        kl_reduction: scale of the KL terms of AdaAD, RSLAD and ARD: "batchmean" (KL summed over
            classes, mean over the batch) or "class_mean" (also divided by the number of classes,
            PyTorch's default `nn.KLDivLoss()` as their reference code uses on CIFAR-10).
            Default "batchmean".
        kl_scale: constant factor on those KL terms (the reference RSLAD's CIFAR-100 `10 * mean`
            is class_mean with kl_scale 10). Default 1.0.
        rslad_log_epsilon: RSLAD's student log-probabilities as log(p + epsilon), as its code;
            0 is the exact log-softmax. Default 0.0.
        reference_forwards: run the baselines' forward passes in the order and batch-norm modes of
            their reference code (PGD-AT: Gaussian 0.001 start and an extra training-mode clean
            forward after the adversarial one; TRADES: clean, adversarial, clean; RSLAD and ARD:
            adversarial then clean; ARD: attack with the student in training mode). They change
            only batch-norm statistics and the start, not the loss formula. Default False.
        iad_alpha: IAD's weight on its distillation terms. Default 1.0.
        iad_beta: exponent of the teacher's true-class confidence in IAD's introspection weight.
            Default 0.1.
        iad_temperature: IAD's distillation temperature. Default 30.0.
        iad_warmup_epochs: epochs before IAD's introspection term starts. Default 60.
    """

    name: str = "dgad"
    beta: float = 1.0
    use_map: bool = True
    use_els: bool = True
    distill_weight: float = 1.0
    trades_beta: float = 6.0
    ard_alpha: float = 1.0
    ard_temperature: float = 30.0
    adaad_alpha: float = 1.0
    dgad_weighting: str = "standard"
    kl_reduction: str = "batchmean"
    kl_scale: float = 1.0
    rslad_log_epsilon: float = 0.0
    reference_forwards: bool = False
    iad_alpha: float = 1.0
    iad_beta: float = 0.1
    iad_temperature: float = 30.0
    iad_warmup_epochs: int = 60


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    """SGD with PyTorch-coupled weight decay and its learning-rate schedule.

    Args:
        lr: initial learning rate. Default 0.1.
        momentum: SGD momentum. Default 0.9.
        weight_decay: L2 coefficient added to every gradient before momentum, as PyTorch's
            SGD does. Default 5e-4.
        nesterov: Nesterov momentum. Default False.
        schedule: "piecewise", "cosine" or "constant". Default "piecewise".
        milestones: epochs at which a piecewise schedule multiplies the rate by `gamma`.
            Default (100, 150).
        gamma: piecewise decay factor. Default 0.1.
        warmup_epochs: linear warm-up length in epochs. Default 0.
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
        epochs: student training epochs. Default 200.
        batch_size: GLOBAL batch size (split across replicas). Default 128.
        seed: seed of initialisation, shuffling and attacks. Default 0.
        val_every: compute validation (clean and PGD robust accuracy) every N epochs. Default 1.
        val_robust_n: validation images attacked for `val_robust_accuracy`. Default 1000.
        val_robust_steps: PGD steps of that validation attack (CE loss, uniform start,
            step eps/4). Default 10.
        jit_compile: compile the train step with XLA: true, false, or "auto" (on where a GPU
            is visible; off on CPU, where XLA measured 2-7x slower, see benchmarks/README.md).
            Default "auto".
        steps_per_execution: train steps per compiled call. Default 1.
        precision: "float32", "mixed_bfloat16" (GPUs with bfloat16: A100/H100/H200) or
            "mixed_float16" (older GPUs; dynamic loss scaling); losses, softmax, KL and the
            attack's sign step stay float32 (see `dgad_tf.precision`). Default "float32".
        select: the checkpoint the final report evaluates (and export uses): "last"
            (`student_last.keras`), "best_val" (`student_best_robust.keras`, best
            `val_robust_accuracy` on the validation split; needs `data.val_fraction > 0`) or
            "best_test" (`student_best_test_robust.keras`, best PGD accuracy on the TEST split
            as the reference selects; leaky, a reproduction mode only). Default "best_val".
        select_n: first n test images evaluated after every epoch (clean and
            PGD-`val_robust_steps`) for `select="best_test"`. Default None (the whole test
            split, as the reference).
        drop_remainder: drop the last partial training batch of each epoch (the reference keeps
            it). Default True.
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
            Default ("clean", "pgd20").
        n: first n test images attacked. Default 1000.
        batch_size: evaluation batch size. Default 256.
    """

    attacks: tuple[str, ...] = ("clean", "pgd20")
    n: int = 1000
    batch_size: int = 256


@dataclasses.dataclass(frozen=True)
class OutputConfig:
    """Where a run writes.

    Args:
        dir: run directory. Default "runs/default".
        tensorboard: write TensorBoard logs. Default True.
        quiet: no progress bars, log lines only. Default False.
    """

    dir: str = "runs/default"
    tensorboard: bool = True
    quiet: bool = False


@dataclasses.dataclass(frozen=True)
class DistributeConfig:
    """Data-parallel training.

    Args:
        strategy: "auto", "none", "mirrored" or "multi_worker". Default "auto".
        devices: explicit device list for "mirrored". Default () (all visible GPUs).
        logical_cpus: split the CPU into this many logical devices (to try data-parallel
            training without GPUs). Default 0 (off).
    """

    strategy: str = "auto"
    devices: tuple[str, ...] = ()
    logical_cpus: int = 0


@dataclasses.dataclass(frozen=True)
class ExportConfig:
    """Automatic export of the finished student.

    Args:
        formats: artifacts to write after training, e.g. ("saved_model", "tflite_float").
            Default () (no export).
        dir: export folder; versions go in numbered sub-folders. Default None
            (`<run dir>/export`).
    """

    formats: tuple[str, ...] = ()
    dir: Optional[str] = None


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
    tune: dict = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict:
        """Plain nested dict (tuples as lists), as written to `config.yaml`."""
        return _plain(dataclasses.asdict(self))

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def hash(self) -> str:
        """sha256 of the resolved config, independent of the file it came from."""
        return hashlib.sha256(self.to_yaml().encode()).hexdigest()


def _plain(value):
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


# --------------------------------------------------------------------------- coercion


def parse_fraction(text) -> float:
    """Read "8/255", "0.03" or a number as a float; ValueError names the text otherwise.

    Example:
        >>> parse_fraction("8/255") == 8 / 255
        True
    """
    try:
        return float(fractions.Fraction(str(text).strip()))
    except (ValueError, ZeroDivisionError):
        raise ValueError(f"not a number or a fraction a/b: {text!r}") from None


def _parse_number(key: str, value: Any, kind: type):
    if isinstance(value, bool):
        raise ConfigError(f"`{key}` must be a {kind.__name__}; received {key}={value!r}")
    if kind is int:
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif kind is float:
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            # Fractions such as "8/255" are how the field writes eps and step sizes.
            try:
                return parse_fraction(value)
            except ValueError:
                pass
    raise ConfigError(f"`{key}` must be a {kind.__name__}; received {key}={value!r}")


def _coerce(key: str, value: Any, annotation: Any):
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        if bool in inner and str in inner:  # a switch with a named mode, e.g. true/false/"auto"
            return value if isinstance(value, (bool, str)) else _coerce(key, value, bool)
        return _coerce(key, value, inner[0])
    if annotation is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"`{key}` must be true or false; received {key}={value!r}")
    if annotation in (int, float):
        return _parse_number(key, value, annotation)
    if annotation is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"`{key}` must be a string; received {key}={value!r}")
    if origin is tuple:
        if isinstance(value, str):
            value = [v for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"`{key}` must be a list; received {key}={value!r}")
        return tuple(_coerce(f"{key}[{i}]", v, args[0]) for i, v in enumerate(value))
    if annotation is dict or origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"`{key}` must be a mapping; received {key}={value!r}")
        return value
    raise ConfigError(f"`{key}` has an unsupported type {annotation!r}")


def _build(cls, values: dict, prefix: str):
    if not isinstance(values, dict):
        raise ConfigError(f"`{prefix}` must be a mapping; received {prefix}={values!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - fields)
    if unknown:
        where = f"section `{prefix}`" if prefix else "the top level"
        raise ConfigError(
            f"unknown key `{(prefix + '.') if prefix else ''}{unknown[0]}` in {where}; "
            f"known keys: {', '.join(sorted(fields))}"
        )
    kwargs = {}
    for name, value in values.items():
        key = f"{prefix}.{name}" if prefix else name
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            kwargs[name] = _build(hint, value if value is not None else {}, key)
        else:
            kwargs[name] = _coerce(key, value, hint)
    return cls(**kwargs)


# --------------------------------------------------------------------------- validation


def _check(condition: bool, key: str, value: Any, requirement: str):
    if not condition:
        raise ConfigError(f"`{key}` must be {requirement}; received {key}={value!r}")


def _check_choice(key: str, value: str, choices: tuple):
    _check(value in choices, key, value, "one of " + ", ".join(choices))


def validate(cfg: Config) -> Config:
    """Check ranges and choices that types alone cannot; returns `cfg` unchanged.

    Raises:
        ConfigError: naming the first offending key and its value.
    """
    d, m, a, me, o, t = cfg.data, cfg.model, cfg.attack, cfg.method, cfg.optimizer, cfg.train
    _check_choice("data.source", d.source, DATA_SOURCES)
    _check(0.0 <= d.val_fraction < 1.0, "data.val_fraction", d.val_fraction, "in [0, 1)")
    for key in ("train_limit", "test_limit", "image_size"):
        value = getattr(d, key)
        _check(value is None or value >= 1, f"data.{key}", value, ">= 1 or null")
    _check(d.crop_padding is None or d.crop_padding >= 0, "data.crop_padding", d.crop_padding,
           ">= 0 or null")
    if d.source == "tfds":
        _check(bool(d.name), "data.name", d.name, "a TFDS dataset name when data.source=tfds")
    if d.source in ("npz", "folder", "tinyimagenet"):
        _check(bool(d.path), "data.path", d.path, f"a path when data.source={d.source}")

    if (m.normalize_mean is None) != (m.normalize_std is None):
        raise ConfigError("`model.normalize_mean` and `model.normalize_std` must be given together;"
                          f" received normalize_mean={m.normalize_mean!r}, "
                          f"normalize_std={m.normalize_std!r}")
    if m.normalize_std is not None:
        _check(len(m.normalize_std) == len(m.normalize_mean), "model.normalize_std",
               m.normalize_std, "as long as model.normalize_mean")
        _check(all(s > 0 for s in m.normalize_std), "model.normalize_std", m.normalize_std,
               "positive")
    _check_choice("model.init", m.init, MODEL_INITS)

    _check_choice("teacher_train.method", cfg.teacher_train.method, TEACHER_TRAIN_METHODS)
    _check(cfg.teacher_train.epochs >= 0, "teacher_train.epochs", cfg.teacher_train.epochs, ">= 0")
    _check(cfg.teacher_train.lr > 0, "teacher_train.lr", cfg.teacher_train.lr, "> 0")

    _check(0.0 <= a.eps <= 1.0, "attack.eps", a.eps, "in [0, 1]")
    _check(0.0 <= a.step_size <= 1.0, "attack.step_size", a.step_size, "in [0, 1]")
    _check(a.steps >= 0, "attack.steps", a.steps, ">= 0")
    _check_choice("attack.init", a.init, ATTACK_INITS)
    _check(a.init_std >= 0, "attack.init_std", a.init_std, ">= 0")
    attacked = [f"method.name={me.name}"] if me.name != "clean" else []
    if cfg.teacher_train.epochs > 0:
        attacked.append(f"teacher_train.method={cfg.teacher_train.method}")
    if attacked:
        # Every method but `clean` trains on adversarial examples; without them it silently
        # becomes clean training under another name.
        needs = f"for {' and '.join(attacked)}, which train on adversarial examples"
        _check(a.eps > 0, "attack.eps", a.eps, f"> 0 {needs}")
        _check(a.steps >= 1, "attack.steps", a.steps, f">= 1 {needs}")
        _check(a.step_size > 0, "attack.step_size", a.step_size, f"> 0 {needs}")
        _check(a.step_size <= a.eps, "attack.step_size", a.step_size,
               f"<= attack.eps={a.eps:g} (a longer step only overshoots the eps-ball and is "
               "clipped back)")

    validate_method(me)

    _check(o.lr > 0, "optimizer.lr", o.lr, "> 0")
    _check(0.0 <= o.momentum < 1.0, "optimizer.momentum", o.momentum, "in [0, 1)")
    _check(o.weight_decay >= 0, "optimizer.weight_decay", o.weight_decay, ">= 0")
    _check_choice("optimizer.schedule", o.schedule, SCHEDULES)
    _check(0.0 < o.gamma <= 1.0, "optimizer.gamma", o.gamma, "in (0, 1]")
    _check(o.warmup_epochs >= 0, "optimizer.warmup_epochs", o.warmup_epochs, ">= 0")
    _check(list(o.milestones) == sorted(o.milestones), "optimizer.milestones", o.milestones,
           "increasing")

    _check(t.epochs >= 1, "train.epochs", t.epochs, ">= 1")
    _check(t.batch_size >= 1, "train.batch_size", t.batch_size, ">= 1")
    _check(t.val_every >= 1, "train.val_every", t.val_every, ">= 1")
    _check(t.val_robust_n >= 1, "train.val_robust_n", t.val_robust_n, ">= 1")
    _check(t.val_robust_steps >= 0, "train.val_robust_steps", t.val_robust_steps, ">= 0")
    _check(t.steps_per_execution >= 1, "train.steps_per_execution", t.steps_per_execution, ">= 1")
    _check(isinstance(t.jit_compile, bool) or t.jit_compile == "auto", "train.jit_compile",
           t.jit_compile, 'true, false or "auto"')
    _check_choice("train.precision", t.precision, PRECISIONS)
    _check_choice("train.select", t.select, SELECTION_RULES)
    _check(t.select_n is None or t.select_n >= 1, "train.select_n", t.select_n, ">= 1 or null")
    if t.select == "best_val" and d.val_fraction == 0:
        raise ConfigError("`train.select`=best_val chooses the checkpoint on the validation split, "
                          "but `data.val_fraction`=0 leaves none; set data.val_fraction > 0, or "
                          "train.select=last (or best_test, the reference's leaky test-set rule)")

    check_attack_names(cfg.eval.attacks)
    check_export_formats(cfg.export.formats)
    _check(cfg.eval.n >= 1, "eval.n", cfg.eval.n, ">= 1")
    _check(cfg.eval.batch_size >= 1, "eval.batch_size", cfg.eval.batch_size, ">= 1")
    _check(bool(cfg.output.dir), "output.dir", cfg.output.dir, "a non-empty path")
    _check_choice("distribute.strategy", cfg.distribute.strategy, STRATEGIES)
    _check(cfg.distribute.logical_cpus >= 0, "distribute.logical_cpus",
           cfg.distribute.logical_cpus, ">= 0")
    return cfg


def check_attack_names(names, key: str = "eval.attacks") -> list[str]:
    """Lower-cased attack names, each one of `EVAL_ATTACKS` or `pgd<K>` with K >= 1.

    Raises:
        ConfigError: naming `key` and the unknown name.
    """
    import re

    checked = [str(n).strip().lower() for n in names if str(n).strip()]
    for name in checked:
        match = re.fullmatch(r"pgd(\d+)", name)
        if name not in EVAL_ATTACKS and not (match and int(match.group(1)) >= 1):
            raise ConfigError(f"`{key}` has an unknown attack {name!r}; known: "
                              f"{', '.join(EVAL_ATTACKS)} and pgd<K> with K >= 1 steps")
    if not checked:
        raise ConfigError(f"`{key}` must name at least one attack; received {list(names)!r}")
    return checked


def check_export_formats(formats, key: str = "export.formats") -> list[str]:
    """Export formats, each one of `EXPORT_FORMATS`; ConfigError naming `key` otherwise."""
    checked = [str(f).strip() for f in formats if str(f).strip()]
    for name in checked:
        _check(name in EXPORT_FORMATS, key, list(formats), "a list of " + ", ".join(EXPORT_FORMATS))
    return checked


def validate_method(me: MethodConfig, prefix: str = "method") -> MethodConfig:
    """Check the method section alone (the distiller checks its options with it too)."""
    _check_choice(f"{prefix}.name", me.name, METHODS)
    for key in ("beta", "distill_weight", "trades_beta", "rslad_log_epsilon", "iad_beta",
                "iad_warmup_epochs"):
        _check(getattr(me, key) >= 0, f"{prefix}.{key}", getattr(me, key), ">= 0")
    for key in ("ard_alpha", "adaad_alpha", "iad_alpha"):
        _check(0.0 <= getattr(me, key) <= 1.0, f"{prefix}.{key}", getattr(me, key), "in [0, 1]")
    for key in ("ard_temperature", "iad_temperature", "kl_scale"):
        _check(getattr(me, key) > 0, f"{prefix}.{key}", getattr(me, key), "> 0")
    _check_choice(f"{prefix}.dgad_weighting", me.dgad_weighting, DGAD_WEIGHTINGS)
    _check_choice(f"{prefix}.kl_reduction", me.kl_reduction, KL_REDUCTIONS)
    return me


# --------------------------------------------------------------------------- loading


def _deep_merge(base: dict, override: dict) -> dict:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def parse_override(text: str) -> dict:
    """Turn `section.key=value` into a nested dict; the value is read as YAML.

    Example:
        >>> parse_override("attack.eps=8/255")
        {'attack': {'eps': '8/255'}}
    """
    if "=" not in text:
        raise ConfigError(f"an override must look like section.key=value; received {text!r}")
    dotted, raw = text.split("=", 1)
    parts = [p.strip() for p in dotted.strip().split(".")]
    if not all(parts):
        raise ConfigError(f"an override must look like section.key=value; received {text!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as err:
        raise ConfigError(f"cannot read the value of `{dotted}`: {err}") from None
    nested: dict = value
    for part in reversed(parts):
        nested = {part: nested}
    return nested


def config_from_dict(values: dict) -> Config:
    """Build and validate a `Config` from a nested dict of overrides."""
    if values is None:
        values = {}
    return validate(_build(Config, values, ""))


def load_config(path: str | pathlib.Path | None = None, overrides: list[str] = ()) -> Config:
    """Read a YAML file of overrides, apply `--set` overrides, validate.

    Args:
        path: YAML file holding only what differs from the defaults. Default None.
        overrides: `section.key=value` strings applied after the file. Default ().

    Returns:
        The resolved, validated `Config`.

    Raises:
        ConfigError: the file is missing or malformed, or a key or value is wrong.
    """
    values: dict = {}
    if path is not None:
        path = pathlib.Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            values = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"{path} is not valid YAML: {err}") from None
        if not isinstance(values, dict):
            raise ConfigError(f"{path} must hold a mapping of sections; received {values!r}")
    for text in overrides:
        values = _deep_merge(values, parse_override(text))
    return config_from_dict(values)


def resolved_attack_init(method: str, init: str, reference_forwards: bool = False) -> str:
    """The random start a method uses when `attack.init` is "auto".

    The distillation methods and TRADES start from x + 0.001·N(0, I) as their reference code;
    ARD and the clean baseline start uniformly in the ball as Madry et al., and so does PGD-AT
    unless `reference_forwards` asks for the Gaussian start of the AdaAD code's SAT baseline.
    """
    if init != "auto":
        return init
    gaussian = ("trades", "rslad", "adaad", "iad", "dgad")
    if method in gaussian or (method == "pgd_at" and reference_forwards):
        return "gaussian"
    return "uniform"

"""Checks that types alone cannot make: ranges, choices and how sections fit together.

Every check raises `ConfigError` naming the key and the value received, before anything runs.
"""

from __future__ import annotations

from typing import Any

from dgad_tf import eval_attacks
from dgad_tf.config.sections import (
    ATTACK_INITS,
    MODEL_INITS,
    PRECISIONS,
    SCHEDULES,
    STRATEGIES,
    TEACHER_TRAIN_METHODS,
    TUNE_OBJECTIVES,
    TUNERS,
    Config,
    ConfigError,
    TuneConfig,
)
from dgad_tf.data import DATA_SOURCES
from dgad_tf.selection import SELECTION_RULES, rules_without_validation


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
    _check_choice("data.source", d.source, DATA_SOURCES.names())
    _check(0.0 <= d.val_fraction < 1.0, "data.val_fraction", d.val_fraction, "in [0, 1)")
    for key in ("train_limit", "test_limit", "image_size"):
        value = getattr(d, key)
        _check(value is None or value >= 1, f"data.{key}", value, ">= 1 or null")
    _check(
        d.crop_padding is None or d.crop_padding >= 0,
        "data.crop_padding",
        d.crop_padding,
        ">= 0 or null",
    )
    if d.source == "tfds":
        _check(bool(d.name), "data.name", d.name, "a TFDS dataset name when data.source=tfds")
    if d.source in ("npz", "folder", "tinyimagenet"):
        _check(bool(d.path), "data.path", d.path, f"a path when data.source={d.source}")

    if (m.normalize_mean is None) != (m.normalize_std is None):
        raise ConfigError(
            "`model.normalize_mean` and `model.normalize_std` must be given together;"
            f" received normalize_mean={m.normalize_mean!r}, "
            f"normalize_std={m.normalize_std!r}"
        )
    if m.normalize_std is not None:
        _check(
            len(m.normalize_std) == len(m.normalize_mean),
            "model.normalize_std",
            m.normalize_std,
            "as long as model.normalize_mean",
        )
        _check(
            all(s > 0 for s in m.normalize_std), "model.normalize_std", m.normalize_std, "positive"
        )
    _check_choice("model.init", m.init, MODEL_INITS)

    _check_choice("teacher_train.method", cfg.teacher_train.method, TEACHER_TRAIN_METHODS)
    _check(cfg.teacher_train.epochs >= 0, "teacher_train.epochs", cfg.teacher_train.epochs, ">= 0")
    _check(cfg.teacher_train.lr > 0, "teacher_train.lr", cfg.teacher_train.lr, "> 0")

    _check(0.0 <= a.eps <= 1.0, "attack.eps", a.eps, "in [0, 1]")
    _check(0.0 <= a.step_size <= 1.0, "attack.step_size", a.step_size, "in [0, 1]")
    _check(a.steps >= 0, "attack.steps", a.steps, ">= 0")
    _check_choice("attack.start", a.start, ATTACK_INITS)
    _check(a.start_std >= 0, "attack.start_std", a.start_std, ">= 0")
    attacked = [f"method.name={me.name}"] if me.loss.ascent is not None else []
    if cfg.teacher_train.epochs > 0:
        attacked.append(f"teacher_train.method={cfg.teacher_train.method}")
    if attacked:
        # Every method but `clean` trains on adversarial examples; without them it silently
        # becomes clean training under another name.
        needs = f"for {' and '.join(attacked)}, which train on adversarial examples"
        _check(a.eps > 0, "attack.eps", a.eps, f"> 0 {needs}")
        _check(a.steps >= 1, "attack.steps", a.steps, f">= 1 {needs}")
        _check(a.step_size > 0, "attack.step_size", a.step_size, f"> 0 {needs}")
        _check(
            a.step_size <= a.eps,
            "attack.step_size",
            a.step_size,
            f"<= attack.eps={a.eps:g} (a longer step only overshoots the eps-ball and is "
            "clipped back)",
        )

    _check(o.lr > 0, "optimizer.lr", o.lr, "> 0")
    _check(0.0 <= o.momentum < 1.0, "optimizer.momentum", o.momentum, "in [0, 1)")
    _check(o.weight_decay >= 0, "optimizer.weight_decay", o.weight_decay, ">= 0")
    _check_choice("optimizer.schedule", o.schedule, SCHEDULES)
    _check(0.0 < o.gamma <= 1.0, "optimizer.gamma", o.gamma, "in (0, 1]")
    _check(o.warmup_epochs >= 0, "optimizer.warmup_epochs", o.warmup_epochs, ">= 0")
    _check(
        list(o.milestones) == sorted(o.milestones),
        "optimizer.milestones",
        o.milestones,
        "increasing",
    )

    _check(t.epochs >= 1, "train.epochs", t.epochs, ">= 1")
    _check(t.batch_size >= 1, "train.batch_size", t.batch_size, ">= 1")
    _check(t.val_every >= 1, "train.val_every", t.val_every, ">= 1")
    _check(t.val_robust_n >= 1, "train.val_robust_n", t.val_robust_n, ">= 1")
    _check(t.val_robust_steps >= 0, "train.val_robust_steps", t.val_robust_steps, ">= 0")
    _check(t.steps_per_execution >= 1, "train.steps_per_execution", t.steps_per_execution, ">= 1")
    _check(
        isinstance(t.jit_compile, bool) or t.jit_compile == "auto",
        "train.jit_compile",
        t.jit_compile,
        'true, false or "auto"',
    )
    _check_choice("train.precision", t.precision, PRECISIONS)
    _check_choice("train.select", t.select, SELECTION_RULES.names())
    _check(t.select_n is None or t.select_n >= 1, "train.select_n", t.select_n, ">= 1 or null")
    if SELECTION_RULES.get(t.select).needs_validation and d.val_fraction == 0:
        honest, leaky = rules_without_validation()
        raise ConfigError(
            f"`train.select`={t.select} chooses the checkpoint on the validation split, "
            "but `data.val_fraction`=0 leaves none; set data.val_fraction > 0, or "
            f"train.select={' / '.join(honest)} (or {' / '.join(leaky)}, the references' leaky "
            "test-set rules)"
        )

    check_attack_names(cfg.eval.attacks)
    check_export_formats(cfg.export.formats)
    _check(cfg.eval.n >= 1, "eval.n", cfg.eval.n, ">= 1")
    _check(cfg.eval.batch_size >= 1, "eval.batch_size", cfg.eval.batch_size, ">= 1")
    _check(bool(cfg.output.dir), "output.dir", cfg.output.dir, "a non-empty path")
    _check_choice("distribute.strategy", cfg.distribute.strategy, STRATEGIES)
    _check(
        cfg.distribute.logical_cpus >= 0,
        "distribute.logical_cpus",
        cfg.distribute.logical_cpus,
        ">= 0",
    )
    validate_tune(cfg.tune)
    return cfg


def validate_tune(tune: TuneConfig) -> TuneConfig:
    """Check the search settings (`loading` checks the space against the config)."""
    objective = tune.objective
    if isinstance(objective, dict):
        unknown = sorted(set(objective) - {"clean_weight", "robust_weight"})
        if unknown:
            raise ConfigError(
                f"unknown key `tune.objective.{unknown[0]}`; known keys: "
                "clean_weight, robust_weight"
            )
        for name in ("clean_weight", "robust_weight"):
            weight = objective.get(name, 0.0)
            _check(
                not isinstance(weight, bool) and isinstance(weight, (int, float)) and weight >= 0,
                f"tune.objective.{name}",
                weight,
                "a number >= 0",
            )
        _check(sum(tune.weights) > 0, "tune.objective", objective, "weights that are not both 0")
    else:
        _check(
            objective in TUNE_OBJECTIVES,
            "tune.objective",
            objective,
            f"one of {', '.join(TUNE_OBJECTIVES)} or {{clean_weight: a, robust_weight: b}}",
        )
    _check_choice("tune.tuner", tune.tuner, TUNERS)
    _check(tune.max_trials >= 1, "tune.max_trials", tune.max_trials, ">= 1")
    _check(tune.epochs is None or tune.epochs >= 1, "tune.epochs", tune.epochs, ">= 1 or null")
    _check(tune.seed >= 0, "tune.seed", tune.seed, ">= 0")
    return tune


def check_attack_names(names, key: str = "eval.attacks") -> list[str]:
    """Lower-cased attack names, each registered in `dgad_tf.eval_attacks` (or `pgd<K>`, K >= 1).

    Raises:
        ConfigError: naming `key` and the unknown name.
    """
    checked = [str(n).strip().lower() for n in names if str(n).strip()]
    for name in checked:
        if eval_attacks.lookup(name) is None:
            raise ConfigError(
                f"`{key}` has an unknown attack {name!r}; known: {eval_attacks.known_names()}"
            )
    if not checked:
        raise ConfigError(f"`{key}` must name at least one attack; received {list(names)!r}")
    return checked


def check_export_formats(formats, key: str = "export.formats") -> list[str]:
    """Export formats, each one of `dgad_tf.serving.EXPORT_FORMATS`; ConfigError naming `key`.

    The formats are registered by the TFLite and SavedModel writers, which load TensorFlow, so an
    empty list (no export, the default) is accepted without asking them.
    """
    checked = [str(f).strip() for f in formats if str(f).strip()]
    if not checked:
        return checked
    from dgad_tf.serving import EXPORT_FORMATS

    for name in checked:
        _check(
            name in EXPORT_FORMATS,
            key,
            list(formats),
            "a list of " + ", ".join(EXPORT_FORMATS.names()),
        )
    return checked

"""Typed run configuration: frozen dataclasses, YAML overrides and `--set` overrides.

The dataclasses below are the single source of truth for every default. A YAML file in `configs/`
holds only what differs from them, and `--set section.key=value` overrides on top of that. Every
value is checked before anything runs: unknown keys, wrong types and out-of-range values raise
`ConfigError` naming the key and the value received.

Example:
    >>> cfg = load_config("configs/quickstart.yaml", ["attack.steps=5"])
    >>> cfg.attack.steps
    5

The package: `sections` (the dataclasses and every choice list), `validate` (ranges and
choices), `space` (the search space of `tune.space`), `loading` (YAML, `--set`, coercion).
Importing it never imports TensorFlow.
"""

from dgad_tf.config.loading import (
    config_from_dict,
    config_with_overrides,
    load_config,
    method_section_for,
    parse_fraction,
    parse_override,
    read_sections,
    with_values,
)
from dgad_tf.config.sections import (
    ATTACK_INITS,
    DIMENSION_TYPES,
    MODEL_INITS,
    PRECISIONS,
    SCHEDULES,
    SCORE_METRIC,
    STRATEGIES,
    TEACHER_TRAIN_METHODS,
    TUNE_OBJECTIVES,
    TUNERS,
    AttackConfig,
    Config,
    ConfigError,
    DataConfig,
    Dimension,
    DistributeConfig,
    EvalConfig,
    ExportConfig,
    MethodConfig,
    ModelConfig,
    OptimizerConfig,
    OutputConfig,
    TeacherTrainConfig,
    TrainConfig,
    TuneConfig,
)
from dgad_tf.config.space import parse_space
from dgad_tf.config.validate import (
    check_attack_names,
    check_export_formats,
    validate,
)

__all__ = [
    "ATTACK_INITS",
    "AttackConfig",
    "Config",
    "ConfigError",
    "DIMENSION_TYPES",
    "DataConfig",
    "Dimension",
    "DistributeConfig",
    "EvalConfig",
    "ExportConfig",
    "MODEL_INITS",
    "MethodConfig",
    "ModelConfig",
    "OptimizerConfig",
    "OutputConfig",
    "PRECISIONS",
    "SCHEDULES",
    "SCORE_METRIC",
    "STRATEGIES",
    "TEACHER_TRAIN_METHODS",
    "TUNERS",
    "TUNE_OBJECTIVES",
    "TeacherTrainConfig",
    "TrainConfig",
    "TuneConfig",
    "check_attack_names",
    "check_export_formats",
    "config_from_dict",
    "config_with_overrides",
    "load_config",
    "method_section_for",
    "parse_fraction",
    "parse_override",
    "read_sections",
    "parse_space",
    "validate",
    "with_values",
]

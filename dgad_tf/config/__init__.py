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
choices), `loading` (YAML, `--set`, coercion). Importing it never imports TensorFlow.
"""

from dgad_tf.config.loading import (config_from_dict, load_config, parse_fraction,
                                    parse_override)
from dgad_tf.config.sections import (ATTACK_INITS, AttackConfig, Config, ConfigError, DATA_SOURCES,
                                     DGAD_WEIGHTINGS, DataConfig, DistributeConfig, EVAL_ATTACKS,
                                     EXPORT_FORMATS, EvalConfig, ExportConfig, KL_REDUCTIONS,
                                     METHODS, MODEL_INITS, MethodConfig, ModelConfig,
                                     OptimizerConfig, OutputConfig, PRECISIONS, SCHEDULES,
                                     SELECTION_RULES, STRATEGIES, TEACHER_METHODS,
                                     TEACHER_TRAIN_METHODS, TeacherTrainConfig, TrainConfig)
from dgad_tf.config.validate import (check_attack_names, check_export_formats,
                                     resolved_attack_init, validate, validate_method)

__all__ = ["ATTACK_INITS", "AttackConfig", "Config", "ConfigError", "DATA_SOURCES",
           "DGAD_WEIGHTINGS", "DataConfig", "DistributeConfig", "EVAL_ATTACKS", "EXPORT_FORMATS",
           "EvalConfig", "ExportConfig", "KL_REDUCTIONS", "METHODS", "MODEL_INITS", "MethodConfig",
           "ModelConfig", "OptimizerConfig", "OutputConfig", "PRECISIONS", "SCHEDULES",
           "SELECTION_RULES", "STRATEGIES", "TEACHER_METHODS", "TEACHER_TRAIN_METHODS",
           "TeacherTrainConfig", "TrainConfig", "check_attack_names", "check_export_formats",
           "config_from_dict", "load_config", "parse_fraction", "parse_override",
           "resolved_attack_init", "validate", "validate_method"]

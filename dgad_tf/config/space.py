"""The search space of `tune.space`: dotted config keys -> `Dimension`, checked at load.

    tune:
      space:                            # dotted config keys -> dimensions
        method.beta: {type: float, min: 0, max: 4}
        optimizer.lr: {type: float, min: 0.005, max: 0.2, log: true}
        attack.steps: {type: int, min: 1, max: 10, step: 3}
        optimizer.schedule: {type: choice, values: [piecewise, cosine]}
        method.use_els: {type: bool}
        method.igdm.alpha: {type: float, min: 0.5, max: 10}   # IGDM's weight (an `igdm:` block)

The space may also be nested (`method: {beta: {type: float, ...}}`), which is what
`--set tune.space.method.beta=...` produces. Each key must be a config field that trials may
vary (for `method.`, an option of the configured method's loss class); `loading` then puts every
bound and choice into the config and validates it, so a misspelt key or an out-of-range bound is
a `ConfigError` naming `tune.space.<key>` before anything runs.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any

from dgad_tf.config.sections import DIMENSION_TYPES, Config, ConfigError, Dimension

_DIMENSION_FIELDS = {
    "float": ("type", "min", "max", "log", "step"),
    "int": ("type", "min", "max", "step"),
    "choice": ("type", "values"),
    "bool": ("type",),
}

# Keys a trial cannot vary, with the reason given to the user. A section name covers all its
# fields. These are fixed once per search, or they define how trials are measured.
_UNTUNABLE = {
    "data": "the data are loaded once for the whole search",
    "teacher_train": "the teacher is obtained once for the whole search",
    "model.teacher": "the teacher is obtained once for the whole search",
    "model.teacher_path": "the teacher is obtained once for the whole search",
    "train.epochs": "trials run `tune.epochs` epochs; set that instead",
    "train.val_every": "it decides how trials are measured; all trials must be scored alike",
    "train.val_robust_n": "it decides how trials are measured; all trials must be scored alike",
    "train.val_robust_steps": "it decides how trials are measured; all trials must be scored alike",
    "train.select": "trials are scored on the validation split; no checkpoint is selected",
    "train.select_n": "trials are never evaluated on the test split",
    "eval": "trials are never evaluated on the test split",
    "output": "it is not a training hyperparameter",
    "export": "it is not a training hyperparameter",
    "distribute": "it is not a training hyperparameter",
    "tune": "it is not a training hyperparameter",
}


def parse_space(space: Any) -> dict[str, Dimension]:
    """Read `tune.space` into {dotted key: Dimension}, in the order written.

    Args:
        space: the `tune.space` mapping, flat (`method.beta: {...}`) or nested.

    Returns:
        The dimensions by dotted config key; a later entry for the same key wins (a `--set`
        after the file's own entry).

    Raises:
        ConfigError: naming `tune.space.<key>` and what is wrong with it.

    Example:
        >>> parse_space({"method.beta": {"type": "float", "min": 0, "max": 4}})
        {'method.beta': Dimension(type='float', min=0.0, max=4.0, step=None, log=False, ...)}
    """
    if not isinstance(space, dict):
        raise ConfigError(
            "`tune.space` must map config keys to dimensions, e.g. "
            "`method.beta: {type: float, min: 0, max: 4}`; received "
            f"tune.space={space!r}"
        )
    dimensions = {}
    for key, entry in _flatten_space(space).items():
        _check_key(key)
        dimension = _parse_dimension(key, entry)
        if not key.startswith("method."):  # the method's options: `check_method_dimensions`
            check_integer_dimension(key, dimension, _field_type(key))
        dimensions[key] = dimension
    return dimensions


def _flatten_space(space: dict, prefix: str = "") -> dict:
    """{"method": {"beta": {...}}} and {"method.beta": {...}} both become {"method.beta": {...}}."""
    flat = {}
    for key, entry in space.items():
        if not isinstance(key, str) or not key:
            raise ConfigError(f"`tune.space` keys must be dotted config keys; received {key!r}")
        path = prefix + key
        if (
            isinstance(entry, dict)
            and entry
            and "type" not in entry
            and all(isinstance(v, dict) for v in entry.values())
        ):
            flat.update(_flatten_space(entry, path + "."))
        else:
            flat[path] = entry
    return flat


def _check_key(key: str):
    where = f"tune.space.{key}"
    parts = key.split(".")
    if len(parts) == 3 and parts[:2] == ["method", "igdm"]:
        parts = parts[:2]  # IGDM's options (`method.igdm.alpha`): `loading` checks them
    hints = typing.get_type_hints(Config)
    if len(parts) != 2 or parts[0] not in hints or not dataclasses.is_dataclass(hints[parts[0]]):
        sections = ", ".join(n for n, h in hints.items() if dataclasses.is_dataclass(h))
        raise ConfigError(
            f"{where}: `{key}` is not a config field; a key is `section.field` "
            f"with section one of {sections}"
        )
    section, field = parts
    if section == "method":
        # The options of the configured method's loss class; `loading` checks them against it.
        fields = ["name", "reference_forwards"] if field == "loss" else [field]
    else:
        fields = [f.name for f in dataclasses.fields(hints[section])]
    if field not in fields:
        raise ConfigError(
            f"{where}: `{key}` is not a config field; section `{section}` has {', '.join(fields)}"
        )
    for prefix in (key, section):
        if prefix in _UNTUNABLE:
            raise ConfigError(f"{where}: `{key}` cannot be searched: {_UNTUNABLE[prefix]}")


def check_integer_dimension(key: str, dimension: Dimension, field_type) -> None:
    """Refuse a float dimension over an integer field."""
    if dimension.type == "float" and field_type is int:
        raise ConfigError(f"tune.space.{key}: `{key}` is an integer field; use type int")


def field_type(hint):
    """The type of a field annotated `hint`, Optional unwrapped."""
    inner = [a for a in typing.get_args(hint) if a is not type(None)]
    return inner[0] if typing.get_origin(hint) in (typing.Union, types.UnionType) else hint


def _field_type(key: str):
    section, field = key.split(".")
    hint = typing.get_type_hints(typing.get_type_hints(Config)[section])[field]
    return field_type(hint)


def _number(where: str, name: str, value, kind: type):
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or (kind is int and not float(value).is_integer())
        or not math.isfinite(float(value))
    ):
        raise ConfigError(
            f"{where}: `{name}` must be a{'n int' if kind is int else ' number'}; "
            f"received {name}={value!r}"
        )
    return kind(value)


def _parse_dimension(key: str, entry: Any) -> Dimension:
    where = f"tune.space.{key}"
    if not isinstance(entry, dict):
        raise ConfigError(
            f"{where}: must be a mapping such as {{type: float, min: 0, max: 1}}; "
            f"received {entry!r}"
        )
    kind = entry.get("type")
    if kind not in DIMENSION_TYPES:
        raise ConfigError(
            f"{where}: unknown type {kind!r}; expected one of {', '.join(DIMENSION_TYPES)}"
        )
    unknown = sorted(set(entry) - set(_DIMENSION_FIELDS[kind]))
    if unknown:
        raise ConfigError(
            f"{where}: unknown field {unknown[0]!r} for type {kind}; known fields: "
            f"{', '.join(_DIMENSION_FIELDS[kind])}"
        )
    if kind in ("float", "int"):
        return _parse_range(where, kind, entry)
    if kind == "bool":
        return Dimension(kind)
    values = entry.get("values")
    if not isinstance(values, (list, tuple)) or not values:
        raise ConfigError(
            f"{where}: type choice needs a non-empty list `values`; received values={values!r}"
        )
    if not all(isinstance(v, (bool, int, float, str)) for v in values):
        raise ConfigError(
            f"{where}: choice values must be numbers, strings or booleans; "
            f"received values={list(values)!r}"
        )
    kinds = {bool if isinstance(v, bool) else str if isinstance(v, str) else float for v in values}
    if len(kinds) > 1:
        raise ConfigError(
            f"{where}: choice values must all be of one type; received values={list(values)!r}"
        )
    if kinds == {float} and any(isinstance(v, float) for v in values):
        values = [float(v) for v in values]  # KerasTuner wants one type: 0 and 0.5 -> floats
    if len(set(values)) != len(values):
        raise ConfigError(f"{where}: choice values repeat; received values={list(values)!r}")
    return Dimension(kind, values=tuple(values))


def _parse_range(where: str, kind: str, entry: dict) -> Dimension:
    number = float if kind == "float" else int
    for name in ("min", "max"):
        if name not in entry:
            raise ConfigError(f"{where}: type {kind} needs `{name}`")
    low, high = (_number(where, n, entry[n], number) for n in ("min", "max"))
    if not low < high:
        raise ConfigError(f"{where}: `min` must be below `max`; received min={low}, max={high}")
    step = entry.get("step")
    if step is not None:
        step = _number(where, "step", step, number)
        if step <= 0:
            raise ConfigError(f"{where}: `step` must be > 0; received step={step}")
    use_log = entry.get("log", False)
    if not isinstance(use_log, bool):
        raise ConfigError(f"{where}: `log` must be true or false; received log={use_log!r}")
    if use_log and low <= 0:
        raise ConfigError(f"{where}: `log: true` needs min > 0; received min={low}")
    if use_log and step is not None:
        # KerasTuner would read `step` as a multiplicative factor in log space.
        raise ConfigError(f"{where}: `log` and `step` cannot be combined")
    return Dimension(kind, min=low, max=high, step=step, log=use_log)

"""Reading a config: YAML files of overrides, `--set section.key=value`, type coercion.

Example:
    >>> cfg = load_config("configs/quickstart.yaml", ["attack.steps=5"])
    >>> cfg.attack.steps
    5
"""

from __future__ import annotations

import dataclasses
import fractions
import pathlib
import types
import typing
from typing import Any

import yaml

from dgad_tf import losses
from dgad_tf.config.sections import AttackConfig, Config, ConfigError, Dimension, MethodConfig
from dgad_tf.config.space import check_integer_dimension, field_type, parse_space
from dgad_tf.config.validate import validate


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
        if dict in inner and isinstance(value, dict):  # a name or a mapping: tune.objective
            return value
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
    if annotation == dict[str, Dimension]:
        return parse_space(value)
    if annotation is dict or origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"`{key}` must be a mapping; received {key}={value!r}")
        return value
    raise ConfigError(f"`{key}` has an unsupported type {annotation!r}")


# Keys of the earlier flat `method:` and `attack:` sections, and their spelling now.
RENAMED_KEYS = {
    "method.trades_beta": ("method.beta", "trades"),
    "method.ard_alpha": ("method.alpha", "ard"),
    "method.ard_temperature": ("method.temperature", "ard"),
    "method.adaad_alpha": ("method.alpha", "adaad"),
    "method.dgad_weighting": ("method.weighting", "dgad"),
    "method.rslad_log_epsilon": ("method.log_epsilon", "rslad"),
    "method.iad_alpha": ("method.alpha", "iad or adaiad"),
    "method.iad_beta": ("method.beta", "iad or adaiad"),
    "method.iad_temperature": ("method.temperature", "iad or adaiad"),
    "method.iad_warmup_epochs": ("method.warmup_epochs", "iad or adaiad"),
    "attack.init": ("attack.start", None),
    "attack.init_std": ("attack.start_std", None),
}


# A whole `method:` section as `config.yaml` files written before the method sections (issue 29)
# hold it, and which of its keys fill each method's options; a run, study cell or export folder
# of an earlier version still reads (only the named method's options counted there).
_WRITTEN_FLAT_METHOD = (
    "name beta use_map use_els distill_weight trades_beta ard_alpha ard_temperature adaad_alpha "
    "dgad_weighting kl_reduction kl_scale rslad_log_epsilon reference_forwards iad_alpha "
    "iad_beta iad_temperature iad_warmup_epochs"
).split()
_KL = {"kl_reduction": "kl_reduction", "kl_scale": "kl_scale"}
_IAD = {"alpha": "iad_alpha", "beta": "iad_beta", "temperature": "iad_temperature"}
_IAD = {**_IAD, "warmup_epochs": "iad_warmup_epochs"}
_WRITTEN_FLAT_OPTIONS = {
    "clean": {},
    "pgd_at": {},
    "trades": {"beta": "trades_beta"},
    "ard": {"alpha": "ard_alpha", "temperature": "ard_temperature", **_KL},
    "rslad": {**_KL, "log_epsilon": "rslad_log_epsilon"},
    "adaad": {"alpha": "adaad_alpha", **_KL},
    "iad": _IAD,
    "adaiad": _IAD,
    "dgad": {
        "beta": "beta",
        "use_map": "use_map",
        "use_els": "use_els",
        "distill_weight": "distill_weight",
        "weighting": "dgad_weighting",
    },
}
_WRITTEN_FLAT_ATTACK = {"eps", "step_size", "steps", "init", "init_std"}


def _from_written_flat(values, prefix: str):
    """A complete earlier-format section, as an older `config.yaml` holds it, in today's keys;
    any other mapping unchanged (a hand-written old key stays an error naming its new one)."""
    if prefix == "method" and isinstance(values, dict) and set(values) == set(_WRITTEN_FLAT_METHOD):
        options = _WRITTEN_FLAT_OPTIONS.get(values["name"], {})
        section = {"name": values["name"], "reference_forwards": values["reference_forwards"]}
        return {**section, **{new: values[old] for new, old in options.items()}}
    if prefix == "attack" and isinstance(values, dict) and set(values) == _WRITTEN_FLAT_ATTACK:
        moved = {"start": values["init"], "start_std": values["init_std"]}
        return {k: v for k, v in values.items() if k not in ("init", "init_std")} | moved
    return values


def from_earlier_version(values: dict) -> dict:
    """A whole config mapping as an earlier version wrote it (a run folder's `config.yaml`, the
    base of a `study.yaml`), with its complete `method:` and `attack:` sections in today's keys;
    any other mapping unchanged."""
    return {
        key: _from_written_flat(section, key) if key in ("method", "attack") else section
        for key, section in values.items()
    }


def renamed_override(text: str) -> str:
    """A `section.key=value` override in today's spelling (`method.trades_beta=6` ->
    `method.beta=6`); any other text unchanged."""
    key, sep, value = text.partition("=")
    renamed = RENAMED_KEYS.get(key.strip())
    return f"{renamed[0]}{sep}{value}" if sep and renamed else text


def _check_renamed(prefix: str, keys):
    for name in sorted(keys):
        key = f"{prefix}.{name}"
        if key in RENAMED_KEYS:
            new, method = RENAMED_KEYS[key]
            where = f" (with method.name: {method})" if method else ""
            raise ConfigError(f"`{key}` is now spelled `{new}`{where}; rename it")


def _build_method(values: dict, prefix: str) -> MethodConfig:
    """The `method:` section: `name`, `reference_forwards` and exactly the loss class's fields."""
    if not isinstance(values, dict):
        raise ConfigError(f"`{prefix}` must be a mapping; received {prefix}={values!r}")
    name = _coerce(f"{prefix}.name", values.get("name", MethodConfig.name), str)
    try:
        cls = losses.get(name)
    except ValueError as err:
        raise ConfigError(f"`{prefix}.name`: {err}") from None
    own = set(losses.option_names(cls))
    wrapper = {"igdm"} if cls.needs_teacher else set()
    unknown = sorted(set(values) - own - {"name", "reference_forwards"} - wrapper)
    if "igdm" in unknown:
        raise ConfigError(
            f"`{prefix}.igdm`: IGDM matches the student to a teacher, but method {name} trains "
            "without one; use it with a method that distils (adaad, adaiad, rslad, ard, iad, "
            "dgad)"
        )
    if unknown:
        _check_renamed(prefix, unknown)
        known = ", ".join(["name", "reference_forwards", *losses.option_names(cls), *wrapper])
        raise ConfigError(
            f"unknown key `{prefix}.{unknown[0]}` for method {name}; known keys: {known}"
        )
    hints = typing.get_type_hints(cls)
    options = {}
    for field in own & set(values):
        options[field] = _coerce_option(f"{prefix}.{field}", values[field], hints.get(field))
    try:
        loss = cls(**options)
    except (TypeError, ValueError) as err:
        message = str(err)
        for field in own:
            message = message.replace(f"`{field}`", f"`{prefix}.{field}`")
        raise ConfigError(f"method {name}: {message}") from None
    if values.get("igdm") is not None:
        loss = _build_igdm(loss, values["igdm"], f"{prefix}.igdm")
    reference = _coerce(
        f"{prefix}.reference_forwards",
        values.get("reference_forwards", MethodConfig.reference_forwards),
        bool,
    )
    return MethodConfig(name=name, reference_forwards=reference, loss=loss)


def _build_igdm(base, values, prefix: str):
    """A teacher-based method's loss with IGDM's term: its `igdm:` block (alpha, total_epochs;
    total_epochs null is the run's `train.epochs`, filled by `build.method_loss`)."""
    if not isinstance(values, dict):
        raise ConfigError(
            f"`{prefix}` must be a mapping such as {{alpha: 1.0}}; received {prefix}={values!r}"
        )
    fields = [f for f in losses.option_names(losses.IGDM) if f != "base"]
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ConfigError(f"unknown key `{prefix}.{unknown[0]}`; known keys: {', '.join(fields)}")
    hints = typing.get_type_hints(losses.IGDM)
    options = {f: _coerce(f"{prefix}.{f}", values[f], hints[f]) for f in fields if f in values}
    try:
        return losses.IGDM(base=base, **options)
    except (TypeError, ValueError) as err:
        message = str(err)
        for field in fields:
            message = message.replace(f"`{field}`", f"`{prefix}.{field}`")
        raise ConfigError(f"{prefix}: {message}") from None


def _coerce_option(key: str, value: Any, annotation: Any):
    """A loss option from YAML: coerced as a config field when its type is one, else as is."""
    try:
        return _coerce(key, value, annotation)
    except ConfigError as err:
        if "unsupported type" in str(err):
            return value
        raise


def _build(cls, values: dict, prefix: str):
    values = _from_written_flat(values, prefix)
    if cls is MethodConfig:
        return _build_method(values, prefix)
    if not isinstance(values, dict):
        if not prefix:
            raise ConfigError(f"a config must be a mapping of sections; received {values!r}")
        raise ConfigError(f"`{prefix}` must be a mapping; received {prefix}={values!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - fields)
    if unknown and cls is AttackConfig:
        _check_renamed(prefix, unknown)
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
    cfg = validate(_build(Config, values, ""))
    hints = _method_hints(cfg.method.loss)
    method_keys = ["name", "reference_forwards", *hints]
    for key, dimension in cfg.tune.space.items():
        section, _, field = key.partition(".")
        if section == "method" and field not in method_keys:
            raise ConfigError(
                f"tune.space.{key}: `{key}` is not a config field; section `method` has "
                f"{', '.join(method_keys)} (method.name={cfg.method.name})"
            )
        if section == "method" and field in hints:
            check_integer_dimension(key, dimension, field_type(hints[field]))
        # `method.beta: {min: -1, ...}` is refused as the config refuses `method.beta=-1`.
        for value in dimension.extremes():
            try:
                with_values(cfg, {key: value})
            except ConfigError as err:
                raise ConfigError(f"tune.space.{key}: {err}") from None
    return cfg


def _method_hints(loss) -> dict:
    """{option of the `method:` section: its type}: the loss's fields, IGDM's as `igdm.<field>`."""
    if isinstance(loss, losses.IGDM):
        own = typing.get_type_hints(losses.IGDM)
        nested = {f"igdm.{f}": own[f] for f in losses.option_names(losses.IGDM) if f != "base"}
        return {**_method_hints(loss.base), **nested}
    hints = typing.get_type_hints(type(loss))
    return {field: hints.get(field) for field in losses.option_names(type(loss))}


def with_values(cfg: Config, values: dict) -> Config:
    """`cfg` with the dotted `values` put in, validated, its `tune` section emptied.

    This is the config of one trial of a search.

    Args:
        cfg: the config the search starts from.
        values: {"method.beta": 2.0, ...}.

    Raises:
        ConfigError: a value is of the wrong type or out of range for its field.

    Example:
        >>> with_values(Config(), {"method.beta": 2.0}).method.beta
        2.0
    """
    merged = cfg.to_dict()
    if "method.name" in values:
        # A trial of another method: the searched options of the configured method apply to the
        # trials whose method has them (each method's options are its own).
        merged["method"] = method_section_for(merged["method"], values["method.name"])
        try:
            cls = losses.get(values["method.name"])
        except ValueError as err:
            raise ConfigError(f"`method.name`: {err}") from None
        own = set(losses.option_names(cls)) | ({"igdm"} if cls.needs_teacher else set())
        values = {
            key: value
            for key, value in values.items()
            if not key.startswith("method.")
            or key.partition(".")[2].split(".")[0] in own | {"name", "reference_forwards"}
        }
    for key, value in values.items():
        section, _, field = key.partition(".")
        if "." in field:  # method.igdm.alpha
            block, _, field = field.partition(".")
            inner = merged[section].get(block) or {}
            merged[section] = {**merged[section], block: {**inner, field: value}}
        else:
            merged[section] = {**merged[section], field: value}
    merged["tune"] = {}
    return config_from_dict(merged)


def method_section_for(section: dict, name) -> dict:
    """A resolved `method:` section with its method set to `name`: as it is for the same method;
    for another, only `reference_forwards` is kept (each method's options are its own)."""
    if section.get("name") == name:
        return section
    return {"name": name, **{k: v for k, v in section.items() if k == "reference_forwards"}}


def load_config(path: str | pathlib.Path | None = None, overrides: list[str] = ()) -> Config:
    """Read a YAML file of overrides, apply `--set` overrides, validate.

    Args:
        path: YAML file holding only what differs from the defaults. Defaults to None.
        overrides: `section.key=value` strings applied after the file. Defaults to ().

    Returns:
        The resolved, validated `Config`.

    Raises:
        ConfigError: the file is missing or malformed, or a key or value is wrong.
    """
    values = read_sections(path) if path is not None else {}
    if "study" in values:
        raise ConfigError(
            f"{path} holds a `study:` section: it is a study of several runs, for "
            f"`python -m dgad_tf.compare --config {path}`"
        )
    return config_with_overrides(values, overrides)


def read_sections(path: str | pathlib.Path) -> dict:
    """The mapping of sections a YAML config file holds (not yet checked against the fields).

    Raises:
        ConfigError: the file is missing, is not valid YAML or does not hold a mapping.
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path} is not valid YAML: {err}") from None
    if not isinstance(values, dict):
        raise ConfigError(f"{path} must hold a mapping of sections; received {values!r}")
    return values


def config_with_overrides(values: dict, overrides: list[str] = ()) -> Config:
    """`values` (a mapping of sections) with `section.key=value` overrides applied, validated."""
    for text in overrides:
        values = _deep_merge(values, parse_override(text))
    return config_from_dict(values)

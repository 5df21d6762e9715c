"""The study file: methods x seeds under one base config and one protocol, parsed and checked.

A study file is an ordinary config (the base every cell starts from: data, networks, attack,
optimiser, epochs, `output.dir` = the study folder) with one more section, `study:`:

    study:
      methods:                 # a method name, or {name, method, set} for a variant
        - pgd_at
        - adaad
        - dgad
        - {name: dgad_no_pcr, method: dgad, set: [method.beta=0]}
      seeds: [0, 1, 2]         # train.seed of each cell
      reference: adaad         # every other method is compared with it, seed by seed
      attacks: [clean, pgd20, autoattack]   # the protocol: same attacks, images, eps for all
      n: 1000                  # the first n test images (default eval.n)
      eps: 8/255               # default attack.eps
      batch_size: 256          # default eval.batch_size
      seed: 0                  # seed of the attacks' random starts, the same for every cell
      primary: {method: dgad, versus: adaad, attack: autoattack}
                               # the one comparison declared before the results (versus
                               # defaults to the reference); every other p is Holm-adjusted

`load_study` reads one (no TensorFlow is loaded) into a `Study`: its rows (`MethodEntry`), seeds,
reference, `Protocol`, and one `Cell` (an ordinary `fit` config) per method x seed. Running it is
`dgad_tf.study`'s.

Example:
    >>> study = load_study("configs/compare_quickstart.yaml", ["study.seeds=[0,1]"])
    >>> [cell.label for cell in study.cells()]
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Optional

from dgad_tf import losses, rundir
from dgad_tf.config import (
    Config,
    ConfigError,
    config_with_overrides,
    method_section_for,
    parse_fraction,
    parse_override,
    read_sections,
)
from dgad_tf.config.validate import check_attack_names

CELLS_DIR = "cells"

# A method's own `set:` may change how it trains, never what every cell must share.
_SHARED_SECTIONS = ("data", "teacher_train", "output", "eval", "export", "distribute", "tune")
_SHARED_KEYS = ("model.teacher", "model.teacher_path", "train.seed")
_STUDY_KEYS = (
    "methods",
    "seeds",
    "reference",
    "attacks",
    "n",
    "eps",
    "batch_size",
    "seed",
    "primary",
)


@dataclasses.dataclass(frozen=True)
class MethodEntry:
    """One row of the study: a label, the `method.name` it trains, its own overrides."""

    name: str
    method: str
    overrides: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class Protocol:
    """The evaluation every cell (and the teacher) gets: same attacks, images, eps and seed."""

    attacks: tuple[str, ...]
    n: int
    eps: float
    batch_size: int
    seed: int

    @property
    def robust_attacks(self) -> tuple[str, ...]:
        return tuple(a for a in self.attacks if a != "clean")


@dataclasses.dataclass(frozen=True)
class Cell:
    """One method x seed: an ordinary `fit` run folder."""

    entry: MethodEntry
    seed: int
    cfg: Config

    @property
    def folder(self) -> pathlib.Path:
        return pathlib.Path(self.cfg.output.dir)

    @property
    def label(self) -> str:
        return f"{self.entry.name} seed {self.seed}"


@dataclasses.dataclass(frozen=True)
class Study:
    """A parsed, checked study: the base config, the rows, the seeds and the protocol."""

    base: Config
    methods: tuple[MethodEntry, ...]
    seeds: tuple[int, ...]
    reference: str
    protocol: Protocol
    primary: Optional[dict] = None  # {method, versus, attack}

    @property
    def folder(self) -> pathlib.Path:
        return pathlib.Path(self.base.output.dir)

    @property
    def needs_teacher(self) -> bool:
        # The loss classes import no TensorFlow: reading a study file does not load it.
        return any(losses.get(e.method).needs_teacher for e in self.methods)

    @property
    def teacher_path(self) -> pathlib.Path:
        return rundir.teacher_path_for(self.base, self.folder)

    def cells(self) -> list[Cell]:
        """Every cell in the order they are trained: seed by seed, methods in file order."""
        return [_cell(self, entry, seed) for seed in self.seeds for entry in self.methods]

    def identity(self) -> dict:
        """Everything that makes two studies the same study (output.* aside).

        The primary comparison is part of it when declared: it is chosen before the results.
        """
        base = self.base.to_dict()
        base.pop("output")
        primary = {"primary": dict(self.primary)} if self.primary else {}
        return primary | {
            "base": base,
            "methods": [
                dataclasses.asdict(e) | {"overrides": list(e.overrides)} for e in self.methods
            ],
            "seeds": list(self.seeds),
            "reference": self.reference,
            "protocol": dataclasses.asdict(self.protocol)
            | {"attacks": list(self.protocol.attacks)},
        }


def _cell(study: Study, entry: MethodEntry, seed: int) -> Cell:
    values = study.base.to_dict()
    values["tune"] = {}
    # Another method than the base's keeps none of the base's options (each are its own).
    values["method"] = method_section_for(values["method"], entry.method)
    values["train"] = {**values["train"], "seed": seed}
    # The cell's own report needs no attack: the protocol evaluation is the study's own.
    values["eval"] = {**values["eval"], "attacks": ["clean"], "n": study.protocol.n}
    values["export"] = {**values["export"], "formats": []}
    values["output"] = {
        **values["output"],
        "dir": str(study.folder / CELLS_DIR / f"{entry.name}_seed{seed}"),
    }
    if study.needs_teacher:
        values["model"] = {**values["model"], "teacher_path": str(study.teacher_path)}
    try:
        cfg = config_with_overrides(values, list(entry.overrides))
    except ConfigError as err:
        raise ConfigError(f"study.methods: {entry.name}: {err}") from None
    return Cell(entry, seed, cfg)


def _check_override(name: str, text: str) -> str:
    if not isinstance(text, str):
        raise ConfigError(
            f"study.methods: {name}: `set` must be a list of section.key=value strings; "
            f"received {text!r}"
        )
    ((section, value),) = parse_override(text).items()
    # Every key a section-wide override (`model={student: ..., teacher_path: ...}`) sets.
    keys = [f"{section}.{field}" for field in value] if isinstance(value, dict) else []
    shared = [k for k in keys if k in _SHARED_KEYS or k == "method.name"]
    if section in _SHARED_SECTIONS or shared or not keys:
        raise ConfigError(
            f"study.methods: {name}: `set: {text}` changes what every cell must share (the data, "
            "the teacher, the seed, the evaluation, the folders); put it in the base config, "
            "or use `method:` to choose the method"
        )
    return text


def _parse_entry(raw) -> MethodEntry:
    if isinstance(raw, str):
        raw = {"name": raw}
    if not isinstance(raw, dict):
        raise ConfigError(
            f"study.methods: each entry must be a method name or a mapping with `name` (and "
            f"optionally `method` and `set`); received {raw!r}"
        )
    unknown = sorted(set(raw) - {"name", "method", "set"})
    if unknown:
        raise ConfigError(
            f"study.methods: unknown key `{unknown[0]}` in {raw!r}; known keys: method, name, set"
        )
    name = raw.get("name")
    if not isinstance(name, str) or not name or not all(c.isalnum() or c in "-_." for c in name):
        raise ConfigError(
            f"study.methods: `name` must be a non-empty string of letters, digits, '-', '_' or "
            f"'.' (it names the cell folders); received name={name!r}"
        )
    method = raw.get("method", name)
    try:
        losses.get(method)
    except ValueError as err:
        raise ConfigError(
            f"study.methods: {name}: {err} (a variant names one with `method:`)"
        ) from None
    sets = raw.get("set") or []
    if isinstance(sets, str):
        sets = [sets]
    if not isinstance(sets, list):
        raise ConfigError(
            f"study.methods: {name}: `set` must be a list of section.key=value strings; "
            f"received {sets!r}"
        )
    return MethodEntry(name, method, tuple(_check_override(name, s) for s in sets))


def _parse_primary(raw, names, attacks, reference) -> Optional[dict]:
    if raw is None:
        return None
    if not isinstance(raw, dict) or sorted(set(raw) - {"method", "versus", "attack"}):
        raise ConfigError(
            "`study.primary` must be a mapping {method, versus, attack} (versus defaults to "
            f"study.reference); received primary={raw!r}"
        )
    primary = {
        "method": raw.get("method"),
        "versus": raw.get("versus", reference),
        "attack": raw.get("attack"),
    }
    for key in ("method", "versus"):
        if primary[key] not in names:
            raise ConfigError(
                f"`study.primary.{key}` must be one of the study's methods ({', '.join(names)}); "
                f"received {key}={primary[key]!r}"
            )
    if primary["method"] == primary["versus"]:
        raise ConfigError(
            f"`study.primary` compares {primary['method']!r} with itself; name two methods"
        )
    if primary["attack"] not in attacks:
        raise ConfigError(
            f"`study.primary.attack` must be one of the protocol's attacks "
            f"({', '.join(attacks)}); received attack={primary['attack']!r}"
        )
    return primary


def _integer(key: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"`study.{key}` must be an integer >= {minimum}; received {value!r}")
    return value


def parse_study(section, base: Config) -> Study:
    """The `study:` section checked against `base` (the config without it)."""
    if not isinstance(section, dict):
        raise ConfigError(
            "a study file needs a `study:` mapping with at least `methods` and `seeds`; "
            f"received study={section!r}"
        )
    unknown = sorted(set(section) - set(_STUDY_KEYS))
    if unknown:
        raise ConfigError(
            f"unknown key `study.{unknown[0]}`; known keys: {', '.join(sorted(_STUDY_KEYS))}"
        )
    if base.tune.space:
        raise ConfigError("a study trains fixed configs: remove the `tune:` section")
    raw_methods = section.get("methods")
    if not isinstance(raw_methods, list) or not raw_methods:
        raise ConfigError(f"`study.methods` must be a non-empty list; received {raw_methods!r}")
    methods = tuple(_parse_entry(raw) for raw in raw_methods)
    names = [e.name for e in methods]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ConfigError(
            f"study.methods: the name {repeated[0]!r} is used twice; give each variant its "
            "own `name`"
        )
    raw_seeds = section.get("seeds")
    if not isinstance(raw_seeds, list) or not raw_seeds:
        raise ConfigError(f"`study.seeds` must be a non-empty list; received {raw_seeds!r}")
    seeds = tuple(_integer("seeds", s, 0) for s in raw_seeds)
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"`study.seeds` lists a seed twice: {list(seeds)}")
    reference = section.get("reference", names[0])
    if reference not in names:
        raise ConfigError(
            f"`study.reference` must be one of the study's methods ({', '.join(names)}); "
            f"received reference={reference!r}"
        )
    attacks = section.get("attacks", list(base.eval.attacks))
    if isinstance(attacks, str):
        attacks = [a for a in attacks.split(",") if a.strip()]
    if not isinstance(attacks, list) or not attacks:
        raise ConfigError(f"`study.attacks` must be a non-empty list; received {attacks!r}")
    attacks = check_attack_names([str(a) for a in attacks], "study.attacks")
    if "clean" not in attacks:
        attacks = ["clean", *attacks]
    eps = section.get("eps", base.attack.eps)
    try:
        eps = parse_fraction(eps) if not isinstance(eps, bool) else None
    except ValueError:
        eps = None
    if eps is None or not 0.0 <= eps <= 1.0:
        raise ConfigError(
            f"`study.eps` must be a number in [0, 1] (a fraction such as 8/255 is fine); "
            f"received {section.get('eps')!r}"
        )
    protocol = Protocol(
        attacks=tuple(attacks),
        n=_integer("n", section.get("n", base.eval.n), 1),
        eps=eps,
        batch_size=_integer("batch_size", section.get("batch_size", base.eval.batch_size), 1),
        seed=_integer("seed", section.get("seed", 0), 0),
    )
    primary = _parse_primary(section.get("primary"), names, protocol.attacks, reference)
    study = Study(base, methods, seeds, reference, protocol, primary)
    study.cells()  # every cell's config must be valid before anything runs
    return study


def load_study(path, overrides=()) -> Study:
    """Read a study file; `--set` overrides go to the base config, `study.KEY=VALUE` to the study.

    Raises:
        ConfigError: naming the key or entry that is wrong.
    """
    values = dict(read_sections(path))
    section = values.pop("study", None)
    base_overrides = []
    for text in overrides:
        if text.strip().startswith("study."):
            nested = parse_override(text)["study"]
            if not isinstance(section, dict):
                section = {}
            section = {**section, **nested} if isinstance(nested, dict) else section
        else:
            base_overrides.append(text)
    base = config_with_overrides(values, base_overrides)
    return parse_study(section, base)

"""A study: methods x seeds under one teacher and one protocol (`python -m dgad_tf.compare`).

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

A study folder holds:

    study.yaml               what was studied (a re-run must match it, then it resumes)
    teacher.keras, teacher_run/   the one teacher, when it was trained here
    teacher_eval.json        the teacher under the protocol
    cells/<name>_seed<k>/    one ordinary `python -m dgad_tf.fit` run folder per cell, plus
                             study_eval.json (its selected student under the protocol)
    results.csv, summary.md, summary.json, *.png   see `dgad_tf.study_report`

A killed study resumes: finished cells (their study_eval.json) are never retrained, an
interrupted one resumes after its last completed epoch as `fit` does.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import pathlib
import shlex
import time
from typing import Optional

import numpy as np
import yaml

from dgad_tf import rundir
from dgad_tf.config import (
    METHODS,
    Config,
    ConfigError,
    config_with_overrides,
    parse_fraction,
    parse_override,
    read_sections,
)
from dgad_tf.config.validate import check_attack_names

log = logging.getLogger(__name__)

STUDY_FILE = "study.yaml"
CELLS_DIR = "cells"
CELL_EVAL_FILE = "study_eval.json"
TEACHER_EVAL_FILE = "teacher_eval.json"

# A method's own `set:` may change how it trains, never what every cell must share.
_SHARED_SECTIONS = ("data", "teacher_train", "output", "eval", "export", "distribute", "tune")
_SHARED_KEYS = ("model.teacher", "model.teacher_path", "train.seed")
_STUDY_KEYS = ("methods", "seeds", "reference", "attacks", "n", "eps", "batch_size", "seed")


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

    @property
    def folder(self) -> pathlib.Path:
        return pathlib.Path(self.base.output.dir)

    @property
    def needs_teacher(self) -> bool:
        from dgad_tf.methods import METHOD_SPECS  # TensorFlow: not loaded to read a study file

        return any(METHOD_SPECS[e.method].needs_teacher for e in self.methods)

    @property
    def teacher_path(self) -> pathlib.Path:
        return rundir.teacher_path_for(self.base, self.folder)

    def cells(self) -> list[Cell]:
        """Every cell in the order they are trained: seed by seed, methods in file order."""
        return [_cell(self, entry, seed) for seed in self.seeds for entry in self.methods]

    def identity(self) -> dict:
        """Everything that makes two studies the same study (output.* aside)."""
        base = self.base.to_dict()
        base.pop("output")
        return {
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
    values["method"] = {**values["method"], "name": entry.method}
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
    if method not in METHODS:
        raise ConfigError(
            f"study.methods: {name}: unknown method {method!r}; known methods: "
            f"{', '.join(METHODS)} (a variant names one with `method:`)"
        )
    sets = raw.get("set") or []
    if isinstance(sets, str):
        sets = [sets]
    if not isinstance(sets, list):
        raise ConfigError(
            f"study.methods: {name}: `set` must be a list of section.key=value strings; "
            f"received {sets!r}"
        )
    return MethodEntry(name, method, tuple(_check_override(name, s) for s in sets))


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
    study = Study(base, methods, seeds, reference, protocol)
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


def check_study_dir(study: Study) -> None:
    """The study folder is new, or holds this same study (which then resumes).

    Raises:
        RunError: naming the first setting that differs from the stored study.
    """
    folder = study.folder
    if rundir.holds_previous(folder, STUDY_FILE):
        previous = yaml.safe_load((folder / STUDY_FILE).read_text())
        current = yaml.safe_load(yaml.safe_dump(study.identity(), sort_keys=False))
        differs = rundir.first_difference(previous, current)
        if differs:
            raise rundir.RunError(
                f"output.dir {folder} holds a different study (`{differs}` differs); choose "
                "another output.dir or restore the setting"
            )


def preflight_study(study: Study):
    """Every check that writes nothing: the study folder, the data, the teacher, the networks.

    Returns:
        The data splits.
    """
    from dgad_tf import build

    check_study_dir(study)
    splits = build.load_data(study.base)
    if study.protocol.n > len(splits.test.y):
        raise rundir.RunError(
            f"study.n={study.protocol.n} is larger than the {len(splits.test.y)} test images"
        )
    if study.needs_teacher:
        build.check_teacher(study.base, splits, study.folder)
    for cell in study.cells():
        rundir.check_run_dir(cell.cfg, cell.folder)
    for student in sorted({cell.cfg.model.student for cell in study.cells()}):
        build.build_network(study.base, student, splits)
    return splits


def images_digest(x: np.ndarray, y: np.ndarray) -> str:
    """sha256 of the evaluated images and labels: equal digests = the same test images."""
    digest = hashlib.sha256()
    digest.update(np.ascontiguousarray(x).tobytes())
    digest.update(np.ascontiguousarray(y).astype(np.int64).tobytes())
    return digest.hexdigest()


def evaluate_protocol(model, study: Study, splits) -> dict:
    """`model` under the study's protocol on the first `n` test images."""
    from dgad_tf.robustness import evaluate_robustness

    p = study.protocol
    x, y = splits.test.x[: p.n], splits.test.y[: p.n]
    report = evaluate_robustness(
        model, x, y, attacks=p.attacks, eps=p.eps, batch_size=p.batch_size, seed=p.seed
    )
    report["images_sha256"] = images_digest(x, y)
    return report


@dataclasses.dataclass
class StudyResult:
    """What `run_study` did: the folder, every cell's row, how many cells trained now."""

    folder: pathlib.Path
    rows: list
    teacher: Optional[dict]
    cells_run: int
    seconds: float


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def _cell_row(cell: Cell, evaluation: dict, report: dict) -> dict:
    return {
        "method": cell.entry.name,
        "seed": cell.seed,
        "evaluation": evaluation,
        "epochs": cell.cfg.train.epochs,
        "seconds": float(report.get("seconds", 0.0)),
        "run_dir": str(cell.folder),
        "checkpoint": report["student"]["path"],
        "history": report.get("history", []),
    }


def run_study(study: Study, *, command: str = "", on_cell_done=None) -> StudyResult:
    """Train and evaluate every cell not finished yet, then write the tables and figures.

    Args:
        study: the parsed study.
        command: the command line, recorded in study.yaml and the summary.
        on_cell_done: called with each cell after its evaluation is written (for tests).
    """
    import keras

    from dgad_tf import build, models, study_report
    from dgad_tf import run as run_lib

    started = time.time()
    strategy = build.make_strategy(study.base)
    splits = preflight_study(study)
    folder = study.folder
    with rundir.FolderLock(folder, "output.dir (the study folder)"):
        check_study_dir(study)  # another writer may have come and gone between check and lock
        if not (folder / STUDY_FILE).exists():
            rundir.atomic_write_text(
                folder / STUDY_FILE,
                f"# {command}\n" + yaml.safe_dump(study.identity(), sort_keys=False),
            )
        teacher_report = None
        if study.needs_teacher:
            teacher_report = _teacher(study, splits, folder, strategy)
        cells = study.cells()
        rows, trained_seconds, cells_run = [], [], 0
        for index, cell in enumerate(cells, start=1):
            eval_file = cell.folder / CELL_EVAL_FILE
            if eval_file.exists():
                evaluation = json.loads(eval_file.read_text())
                report = json.loads((cell.folder / rundir.REPORT_FILE).read_text())
                rows.append(_cell_row(cell, evaluation, report))
                continue
            cell_started = time.time()
            log.info("cell %d/%d (%s): %s", index, len(cells), cell.label, cell.folder)
            report_file = cell.folder / rundir.REPORT_FILE
            if report_file.exists():
                report = json.loads(report_file.read_text())
            else:
                keras.backend.clear_session()
                cell_command = shlex.join(
                    ["python", "-m", "dgad_tf.fit", "--config", str(cell.folder / "config.yaml")]
                )
                report = run_lib.run(cell.cfg, command=cell_command)
            student = models.load_model(cell.folder / report["student"]["path"])
            evaluation = evaluate_protocol(student, study, splits)
            evaluation["checkpoint"] = report["student"]["path"]
            rundir.atomic_write_text(eval_file, json.dumps(evaluation, indent=2, default=float))
            rows.append(_cell_row(cell, evaluation, report))
            cells_run += 1
            trained_seconds.append(time.time() - cell_started)
            left = len(cells) - index
            mean = sum(trained_seconds) / len(trained_seconds)
            log.info(
                "cell %d/%d (%s) done in %s: %s; %d cell(s) left%s",
                index,
                len(cells),
                cell.label,
                _duration(trained_seconds[-1]),
                ", ".join(
                    f"{a} {evaluation['attacks'][a]['robust_accuracy']:.4f}"
                    for a in study.protocol.attacks
                ),
                left,
                f", about {_duration(mean * left)} more at {_duration(mean)} per cell"
                if left
                else "",
            )
            study_report.write_outputs(study, rows, teacher_report, command=command)
            if on_cell_done is not None:
                on_cell_done(cell)
        study_report.write_outputs(study, rows, teacher_report, command=command)
    return StudyResult(folder, rows, teacher_report, cells_run, time.time() - started)


def _teacher(study: Study, splits, folder: pathlib.Path, strategy) -> dict:
    """The one teacher (trained here once when it is missing) and its protocol evaluation."""
    import keras

    from dgad_tf import run as run_lib

    eval_file = folder / TEACHER_EVAL_FILE
    if eval_file.exists() and study.teacher_path.exists():
        return json.loads(eval_file.read_text())
    keras.utils.set_random_seed(study.base.train.seed)
    teacher = run_lib.obtain_teacher(study.base, splits, folder, strategy)
    log.info("teacher %s under the study's protocol", study.teacher_path)
    evaluation = evaluate_protocol(teacher, study, splits)
    evaluation["path"] = str(study.teacher_path)
    rundir.atomic_write_text(eval_file, json.dumps(evaluation, indent=2, default=float))
    return evaluation


__all__ = [
    "Cell",
    "MethodEntry",
    "Protocol",
    "Study",
    "StudyResult",
    "check_study_dir",
    "evaluate_protocol",
    "images_digest",
    "load_study",
    "parse_study",
    "preflight_study",
    "run_study",
]

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
      primary: {method: dgad, versus: adaad, attack: autoattack}
                               # the one comparison declared before the results (versus
                               # defaults to the reference); every other p is Holm-adjusted

A study folder holds:

    study.yaml               what was studied (a re-run must match it or grow it, see
                             `check_study_dir`)
    teacher.keras, teacher_run/   the one teacher, when it was trained here
    teacher_eval.json        the teacher under the protocol
    teacher_correct.npz      the teacher's per-image correctness (see below)
    cells/<name>_seed<k>/    one ordinary `python -m dgad_tf.fit` run folder per cell, plus
                             study_eval.json (its selected student under the protocol) and
                             study_correct.npz (that student's per-image correctness)
    results.csv, summary.md, summary.json, *.png   see `dgad_tf.study_report`

Every evaluation file names the sha256 of the images it scored (`images_sha256`) and of the
model file (`model_sha256`). A correctness file holds, per protocol attack ("clean" included),
`np.packbits` of a bool [n] array: whether test image i (the first n test images, in the data's
order, which `images_sha256` pins) is still classified correctly; `dgad_tf.stats.unpack_correct`
reads it back.

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

from dgad_tf import losses, rundir, stats
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

log = logging.getLogger(__name__)

STUDY_FILE = "study.yaml"
CELLS_DIR = "cells"
CELL_EVAL_FILE = "study_eval.json"
TEACHER_EVAL_FILE = "teacher_eval.json"
CELL_CORRECT_FILE = "study_correct.npz"
TEACHER_CORRECT_FILE = "teacher_correct.npz"

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


def check_study_dir(study: Study) -> bool:
    """The study folder is new, holds this same study (which resumes) or a study it grows.

    A study grows by more seeds or more methods: every stored seed and method (with the same
    definition) is still there, so only the new cells train. Anything else that differs (the
    base config: data, teacher, training; the protocol; the reference) is refused.

    Returns:
        Whether the stored study.yaml must be rewritten (the study grew).

    Raises:
        RunError: naming the first setting that differs from the stored study.
    """
    folder = study.folder
    if not rundir.holds_previous(folder, STUDY_FILE):
        return False
    previous = yaml.safe_load((folder / STUDY_FILE).read_text())
    current = yaml.safe_load(yaml.safe_dump(study.identity(), sort_keys=False))
    grows = {"methods", "seeds"}
    differs = rundir.first_difference(
        {k: v for k, v in previous.items() if k not in grows},
        {k: v for k, v in current.items() if k not in grows},
    )
    if differs:
        raise rundir.RunError(
            f"output.dir {folder} holds a different study (`{differs}` differs); choose "
            "another output.dir or restore the setting (a study may only grow by seeds and "
            "methods)"
        )
    methods = {m["name"]: m for m in current["methods"]}
    for method in previous["methods"]:
        if method["name"] not in methods:
            raise rundir.RunError(
                f"output.dir {folder} holds a study with method {method['name']!r}, which "
                "`study.methods` no longer lists; a study may grow but not lose cells: list it "
                "again or choose another output.dir"
            )
        if methods[method["name"]] != method:
            key = rundir.first_difference(method, methods[method["name"]])
            raise rundir.RunError(
                f"output.dir {folder} holds a different study (`methods.{method['name']}."
                f"{key}` differs): its finished cells were trained otherwise; give the changed "
                "variant a new `name` or choose another output.dir"
            )
    dropped = sorted(set(previous["seeds"]) - set(current["seeds"]))
    if dropped:
        raise rundir.RunError(
            f"output.dir {folder} holds a study with seed {dropped[0]}, which `study.seeds` no "
            "longer lists; a study may grow but not lose cells: list it again or choose another "
            "output.dir"
        )
    return previous != current


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


def file_digest(path) -> str:
    """sha256 of a file's bytes: ties an evaluation to the exact model file it scored."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def evaluate_protocol(model, study: Study, splits) -> dict:
    """`model` under the study's protocol on the first `n` test images.

    The report holds, under "per_image", a bool [n] array per attack (see `write_evaluation`).
    """
    from dgad_tf.robustness import evaluate_robustness

    p = study.protocol
    x, y = splits.test.x[: p.n], splits.test.y[: p.n]
    report = evaluate_robustness(
        model,
        x,
        y,
        attacks=p.attacks,
        eps=p.eps,
        batch_size=p.batch_size,
        seed=p.seed,
        per_image=True,
    )
    report["images_sha256"] = images_digest(x, y)
    return report


def write_evaluation(
    eval_file: pathlib.Path, correct_file: pathlib.Path, evaluation: dict, model_file
) -> dict:
    """Write the per-image correctness, then the evaluation (the file that marks it done).

    Returns:
        The evaluation as written: "per_image" replaced by the correctness file's name, and
        the model file's sha256 added.
    """
    per_image = evaluation.pop("per_image")
    arrays = {name: stats.pack_correct(mask) for name, mask in per_image.items()}
    arrays["n"] = np.array(evaluation["n"])
    arrays["images_sha256"] = np.array(evaluation["images_sha256"])

    def save(tmp):
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)

    rundir.atomic_write(correct_file, save)
    evaluation["per_image_file"] = correct_file.name
    evaluation["model_sha256"] = file_digest(model_file)
    rundir.atomic_write_text(eval_file, json.dumps(evaluation, indent=2, default=float))
    return evaluation


def read_correct(correct_file: pathlib.Path):
    """{attack: bool [n]} from a correctness file, or None when there is none (older studies)."""
    if not correct_file.exists():
        return None
    with np.load(correct_file) as data:
        n = int(data["n"])
        return {
            name: stats.unpack_correct(data[name], n)
            for name in data.files
            if name not in ("n", "images_sha256")
        }


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


def _time_left(cell_seconds, left: int) -> str:
    """ "k cell(s) left, about T more at t per cell": t is the mean over every finished cell.

    `cell_seconds` holds one duration per finished cell, those of earlier invocations (as
    recorded) as well as this one's, so a resumed study estimates from all it knows.
    """
    if not left:
        return "0 cell(s) left"
    mean = sum(cell_seconds) / len(cell_seconds)
    return (
        f"{left} cell(s) left, about {_duration(mean * left)} more at {_duration(mean)} per "
        f"cell (the mean of {len(cell_seconds)} finished)"
    )


def _recorded_seconds(evaluation: dict, report: dict) -> float:
    """A cell finished earlier: its training time (report.json) plus its protocol's attacks."""
    return float(report.get("seconds", 0.0)) + sum(
        float(entry.get("seconds", 0.0)) for entry in evaluation.get("attacks", {}).values()
    )


def _log_skipped(labels, total: int) -> None:
    log.info(
        "%d of %d cell(s) finished earlier, skipped (not retrained): %s",
        len(labels),
        total,
        ", ".join(labels),
    )


def _cell_row(cell: Cell, evaluation: dict, report: dict) -> dict:
    selection = report["student"].get("selection", {})
    return {
        "method": cell.entry.name,
        "seed": cell.seed,
        "evaluation": evaluation,
        "epochs": cell.cfg.train.epochs,
        "seconds": float(report.get("seconds", 0.0)),
        "run_dir": str(cell.folder),
        "checkpoint": report["student"]["path"],
        "select": selection.get("rule", cell.cfg.train.select),
        "selected_epoch": selection.get("epoch"),
        "history": report.get("history", []),
        "correct": read_correct(cell.folder / CELL_CORRECT_FILE),
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
        # another writer may have come and gone between check and lock
        grown = check_study_dir(study)
        if grown or not (folder / STUDY_FILE).exists():
            rundir.atomic_write_text(
                folder / STUDY_FILE,
                f"# {command}\n" + yaml.safe_dump(study.identity(), sort_keys=False),
            )
        teacher_report = None
        if study.needs_teacher:
            teacher_report = _teacher(study, splits, folder, strategy)
        cells = study.cells()
        rows, cell_seconds, cells_run, skipped = [], [], 0, []
        for index, cell in enumerate(cells, start=1):
            eval_file = cell.folder / CELL_EVAL_FILE
            if eval_file.exists():
                evaluation = json.loads(eval_file.read_text())
                report = json.loads((cell.folder / rundir.REPORT_FILE).read_text())
                rows.append(_cell_row(cell, evaluation, report))
                cell_seconds.append(_recorded_seconds(evaluation, report))
                skipped.append(cell.label)
                continue
            if skipped:
                _log_skipped(skipped, len(cells))
                skipped = []
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
            student_file = cell.folder / report["student"]["path"]
            evaluation = evaluate_protocol(models.load_model(student_file), study, splits)
            evaluation["checkpoint"] = report["student"]["path"]
            write_evaluation(eval_file, cell.folder / CELL_CORRECT_FILE, evaluation, student_file)
            rows.append(_cell_row(cell, evaluation, report))
            cells_run += 1
            cell_seconds.append(time.time() - cell_started)
            log.info(
                "cell %d/%d (%s) done in %s: %s; %s",
                index,
                len(cells),
                cell.label,
                _duration(cell_seconds[-1]),
                ", ".join(
                    f"{a} {evaluation['attacks'][a]['robust_accuracy']:.4f}"
                    for a in study.protocol.attacks
                ),
                _time_left(cell_seconds, len(cells) - index),
            )
            study_report.write_outputs(study, rows, teacher_report, command=command)
            if on_cell_done is not None:
                on_cell_done(cell)
        if skipped:
            _log_skipped(skipped, len(cells))
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
    return write_evaluation(
        eval_file, folder / TEACHER_CORRECT_FILE, evaluation, study.teacher_path
    )


__all__ = [
    "Cell",
    "MethodEntry",
    "Protocol",
    "Study",
    "StudyResult",
    "check_study_dir",
    "evaluate_protocol",
    "file_digest",
    "images_digest",
    "load_study",
    "parse_study",
    "preflight_study",
    "read_correct",
    "run_study",
    "write_evaluation",
]

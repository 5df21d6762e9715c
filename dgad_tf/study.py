"""A study: methods x seeds under one teacher and one protocol (`python -m dgad_tf.compare`).

The study file (a config with a `study:` section) is `dgad_tf.study_spec`'s: `load_study` reads
it into a `Study`. This module runs one: it checks everything first (`preflight_study`), builds
the strategy and the data and loads the one teacher once (a `dgad_tf.context.Context`) for every
cell, then trains and evaluates each cell not finished yet. The tables are rewritten after every
cell, the figures drawn once at the end.

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

The evaluation files are `dgad_tf.study_eval`'s.

A killed study resumes: finished cells (their study_eval.json) are never retrained, an
interrupted one resumes after its last completed epoch as `fit` does.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import pathlib
import shlex
import time
from typing import Optional

import yaml

from dgad_tf import rundir
from dgad_tf.config.loading import from_earlier_version, renamed_override
from dgad_tf.context import Context, build_context
from dgad_tf.study_eval import (  # noqa: F401  (the study's API, re-exported)
    evaluate_protocol,
    file_digest,
    images_digest,
    read_correct,
    write_evaluation,
)
from dgad_tf.study_spec import (  # noqa: F401  (the study's API, re-exported)
    CELLS_DIR,
    Cell,
    MethodEntry,
    Protocol,
    Study,
    load_study,
    parse_study,
)
from dgad_tf.workspace import Workspace

log = logging.getLogger(__name__)

STUDY_FILE = "study.yaml"
CELL_EVAL_FILE = "study_eval.json"
TEACHER_EVAL_FILE = "teacher_eval.json"
CELL_CORRECT_FILE = "study_correct.npz"
TEACHER_CORRECT_FILE = "teacher_correct.npz"


def _in_todays_keys(identity):
    """A stored study identity in today's keys: a study.yaml written before the method sections
    (issue 29) holds the flat `method:`/`attack:` sections and overrides such as
    `method.rslad_log_epsilon=1e-5`, which name the same study as today's spelling."""
    if not isinstance(identity, dict):
        return identity
    identity = dict(identity)
    if isinstance(identity.get("base"), dict):
        identity["base"] = from_earlier_version(identity["base"])
    if isinstance(identity.get("methods"), list):
        identity["methods"] = [
            entry | {"overrides": [renamed_override(o) for o in entry.get("overrides") or []]}
            if isinstance(entry, dict)
            else entry
            for entry in identity["methods"]
        ]
    return identity


def check_study_dir(study: Study) -> bool:
    """The study folder is new, holds this same study (which resumes) or a study it grows.

    A study grows by more seeds or more methods: every stored seed and method (with the same
    definition) is still there, so only the new cells train. Anything else that differs (the
    base config: data, teacher, training; the protocol; the reference) is refused.

    Returns:
        Whether the stored study.yaml must be rewritten (the study grew, or its file was
        written in an earlier version's keys).

    Raises:
        RunError: naming the first setting that differs from the stored study.
    """
    folder = study.folder
    if not rundir.holds_previous(folder, STUDY_FILE):
        return False
    previous = _in_todays_keys(yaml.safe_load((folder / STUDY_FILE).read_text()))
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


def study_workspace(study: Study) -> Workspace:
    """The study folder as a `Workspace` guarded by `check_study_dir`."""
    return Workspace(
        study.folder,
        STUDY_FILE,
        check=lambda: check_study_dir(study),
        what="output.dir (the study folder)",
    )


def preflight_study(study: Study) -> Context:
    """Every check that writes nothing: the study folder, the data, the teacher, the networks.

    Returns:
        The strategy, the data and (when its file exists) the teacher every cell shares,
        built and loaded here once.
    """
    from dgad_tf import build

    study_workspace(study).check()
    context = build_context(study.base)
    splits = context.splits
    if study.protocol.n > len(splits.test.y):
        raise rundir.RunError(
            f"study.n={study.protocol.n} is larger than the {len(splits.test.y)} test images"
        )
    if study.needs_teacher:
        if rundir.check_teacher_file(study.base, study.folder):
            teacher = build.load_shared_teacher(study.teacher_path, splits, context.strategy)
            context = context.with_teacher(teacher)
        else:
            build.check_teacher(study.base, splits, study.folder)
    for cell in study.cells():
        rundir.check_run_dir(cell.cfg, cell.folder)
    for student in sorted({cell.cfg.model.student for cell in study.cells()}):
        build.build_network(study.base, student, splits)
    return context


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

    from dgad_tf import models, study_report
    from dgad_tf import run as run_lib

    started = time.time()
    context = preflight_study(study)
    folder = study.folder
    workspace = study_workspace(study)
    with workspace.writing() as grown:
        workspace.write_identity(
            f"# {command}\n" + yaml.safe_dump(study.identity(), sort_keys=False), replace=grown
        )
        teacher_report = None
        if study.needs_teacher:
            teacher_report, context = _teacher(study, context, folder)
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
                # The cell trains on the study's data under its strategy, from its teacher
                # (built and loaded once above).
                report = run_lib.run(cell.cfg, command=cell_command, context=context)
            student_file = cell.folder / report["student"]["path"]
            evaluation = evaluate_protocol(models.load_model(student_file), study, context.splits)
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
            # The tables after every cell; the figures (seconds each) once, at the end.
            study_report.write_outputs(study, rows, teacher_report, command=command, figures=False)
            if on_cell_done is not None:
                on_cell_done(cell)
        if skipped:
            _log_skipped(skipped, len(cells))
        study_report.write_outputs(study, rows, teacher_report, command=command)
    return StudyResult(folder, rows, teacher_report, cells_run, time.time() - started)


def _teacher(study: Study, context: Context, folder: pathlib.Path) -> tuple[dict, Context]:
    """The one teacher (trained here once when it is missing), loaded once for every cell, and
    its protocol evaluation.

    Returns:
        (the teacher's evaluation, `context` holding the teacher when its file is loaded).
    """
    import keras

    from dgad_tf import build, distribute
    from dgad_tf import run as run_lib

    eval_file = folder / TEACHER_EVAL_FILE
    if eval_file.exists() and study.teacher_path.exists():
        return json.loads(eval_file.read_text()), context
    # As `run_lib.obtain_teacher` under this seed: train when missing, then load; a teacher
    # loaded before (`preflight_study`) has its load replayed instead.
    keras.utils.set_random_seed(study.base.train.seed)
    if context.teacher is None:
        path = rundir.teacher_path_for(study.base, folder)
        distribute.check_workers_agree(
            context.strategy, int(path.exists()), f"whether {path} exists"
        )
        if not path.exists():
            path = run_lib.train_teacher(study.base, context.splits, folder, context.strategy)
        context = context.with_teacher(
            build.load_shared_teacher(path, context.splits, context.strategy)
        )
        teacher = context.teacher.model
    else:
        teacher = run_lib.obtain_teacher(
            study.base, context.splits, folder, context.strategy, context.teacher
        )
    log.info("teacher %s under the study's protocol", study.teacher_path)
    evaluation = evaluate_protocol(teacher, study, context.splits)
    evaluation["path"] = str(study.teacher_path)
    report = write_evaluation(
        eval_file, folder / TEACHER_CORRECT_FILE, evaluation, study.teacher_path
    )
    return report, context


__all__ = [
    "Cell",
    "MethodEntry",
    "Protocol",
    "Study",
    "StudyResult",
    "check_study_dir",
    "study_workspace",
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

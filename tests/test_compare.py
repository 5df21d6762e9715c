"""`python -m dgad_tf.compare`: a study of methods x seeds under one teacher and one protocol.

One tiny study on the embedded digits (pgd_at and adaad, 2 seeds, 1 epoch, a teacher trained
once in the study folder) is killed after its second cell, resumed, and re-run; the tests read
what it wrote. The refusals and the arithmetic need no training.
"""

import csv
import json
import logging
import math
import pathlib
import re
import sys

import numpy as np
import pytest
import yaml
from subprocesses import run_command

from dgad_tf import stats, study_markdown, study_report
from dgad_tf import study as study_lib
from dgad_tf.config import ConfigError

REPO = pathlib.Path(__file__).resolve().parents[1]

BASE = {
    "data": {"source": "digits", "flip": False, "train_limit": 800},
    "model": {"student": "small-cnn", "teacher": "small-cnn"},
    "teacher_train": {"method": "pgd_at", "epochs": 4, "lr": 0.05},
    "attack": {"eps": 0.1, "step_size": 0.05, "steps": 2},
    "optimizer": {"lr": 0.05, "milestones": []},
    "train": {"epochs": 1, "batch_size": 64, "val_robust_n": 40, "val_robust_steps": 2},
    "output": {"quiet": True, "tensorboard": False},
}
STUDY = {
    "methods": ["pgd_at", {"name": "adaad"}],
    "seeds": [0, 1],
    "reference": "adaad",
    "attacks": ["clean", "fgsm", "pgd3"],
    "n": 48,
}


def write_study(path: pathlib.Path, out_dir, **study) -> pathlib.Path:
    values = {**BASE, "output": {**BASE["output"], "dir": str(out_dir)}}
    values["study"] = {**STUDY, **study}
    path.write_text(yaml.safe_dump(values, sort_keys=False))
    return path


class Killed(Exception):
    pass


@pytest.fixture(scope="module")
def finished_study(tmp_path_factory):
    """The study killed after cell 2 of 4, resumed to the end, then run a third time."""
    from dgad_tf import data as data_lib
    from dgad_tf import distribute
    from dgad_tf import run as run_lib

    root = tmp_path_factory.mktemp("study")
    out = root / "out"
    path = write_study(root / "study.yaml", out)
    trained = {"first": [], "resumed": [], "again": []}
    real_run = run_lib.run
    # How often each phase loads the data and creates a strategy (the loader and the strategy
    # factory every command goes through).
    built = {"loads": {}, "strategies": {}}
    real_load, real_strategy = data_lib.splits_from_config, distribute.make_strategy

    def counting_calls(kind, real, phase_name):
        def call(*args, **kwargs):
            built[kind][phase_name] = built[kind].get(phase_name, 0) + 1
            return real(*args, **kwargs)

        return call

    def counting(phase):
        def run(cfg, **kwargs):
            trained[phase].append(pathlib.Path(cfg.output.dir).name)
            return real_run(cfg, **kwargs)

        return run

    def kill_after_two(cell):
        if len(trained["first"]) == 2:
            raise Killed(cell.label)

    logs = {"first": [], "resumed": [], "again": []}
    handler = logging.Handler(logging.INFO)
    study_logger = logging.getLogger(study_lib.__name__)
    study_logger.addHandler(handler)
    old_level = study_logger.level
    study_logger.setLevel(logging.INFO)

    def phase(name):
        run_lib.run = counting(name)
        data_lib.splits_from_config = counting_calls("loads", real_load, name)
        distribute.make_strategy = counting_calls("strategies", real_strategy, name)
        handler.emit = lambda record: logs[name].append(record.getMessage())

    phase("first")
    try:
        with pytest.raises(Killed):
            study_lib.run_study(study_lib.load_study(path), on_cell_done=kill_after_two)
        teacher_mtime = (out / "teacher.keras").stat().st_mtime_ns
        partial = (out / study_report.RESULTS_FILE).read_text()
        phase("resumed")
        resumed = study_lib.run_study(study_lib.load_study(path), command="resume")
        phase("again")
        again = study_lib.run_study(study_lib.load_study(path), command="again")
    finally:
        run_lib.run = real_run
        data_lib.splits_from_config = real_load
        distribute.make_strategy = real_strategy
        study_logger.removeHandler(handler)
        study_logger.setLevel(old_level)
    return {
        "path": path,
        "out": out,
        "trained": trained,
        "teacher_mtime": teacher_mtime,
        "partial": partial,
        "resumed": resumed,
        "again": again,
        "logs": logs,
        **built,
    }


def test_a_killed_study_resumes_and_never_retrains_a_finished_cell(finished_study):
    trained = finished_study["trained"]
    assert trained["first"] == ["pgd_at_seed0", "adaad_seed0"]
    assert trained["resumed"] == ["pgd_at_seed1", "adaad_seed1"]
    assert trained["again"] == []
    assert finished_study["resumed"].cells_run == 2 and finished_study["again"].cells_run == 0
    # The results written before the kill held the two finished cells.
    assert len(list(csv.DictReader(finished_study["partial"].splitlines()))) == 2


def test_a_study_loads_its_data_and_creates_its_strategy_once_for_all_its_cells(
    finished_study,
):
    # The first run trains the teacher and two cells, the resumed one two cells, the third
    # none: each loads the data once and creates one strategy, however many cells it trains.
    assert [len(finished_study["trained"][p]) for p in ("first", "resumed", "again")] == [2, 2, 0]
    assert finished_study["loads"] == {"first": 1, "resumed": 1, "again": 1}
    assert finished_study["strategies"] == {"first": 1, "resumed": 1, "again": 1}


def test_a_cell_trained_in_a_shared_context_equals_fit_of_its_config(finished_study, tmp_path):
    # adaad seed 1 trained second in the resumed run, after pgd_at seed 1 in the same process and
    # on data loaded once for both: its student must be, bit for bit, what `fit` of the cell's own
    # config.yaml trains alone (a shared context may skip work, never change a number).
    import keras

    from dgad_tf import run as run_lib
    from dgad_tf.config import load_config

    cell = finished_study["out"] / "cells" / "adaad_seed1"
    cfg = load_config(cell / "config.yaml", [f"output.dir={tmp_path / 'alone'}"])
    run_lib.run(cfg)
    in_study = keras.saving.load_model(cell / "student_last.keras", compile=False)
    alone = keras.saving.load_model(tmp_path / "alone" / "student_last.keras", compile=False)
    for a, b in zip(in_study.get_weights(), alone.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_a_study_loads_its_teacher_once_and_each_cell_still_equals_fit(finished_study, tmp_path):
    # Four cells distil from the first study's teacher file: the study loads it once, and each
    # cell's student is still, bit for bit, what `fit` of the cell's config.yaml trains alone
    # (which loads the file itself, twice: to check it, then to distil from it).
    import keras

    from dgad_tf import models
    from dgad_tf import run as run_lib
    from dgad_tf.config import load_config

    teacher = (finished_study["out"] / "teacher.keras").resolve()
    values = {
        **BASE,
        "data": {**BASE["data"], "train_limit": 240},
        "model": {**BASE["model"], "teacher_path": str(teacher)},
        "train": {**BASE["train"], "val_robust_n": 16},
        "eval": {"n": 16, "attacks": ["clean"]},
        "output": {**BASE["output"], "dir": str(tmp_path / "out")},
        "study": {**STUDY, "methods": ["adaad", "rslad"], "attacks": ["clean"], "n": 16},
    }
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(values, sort_keys=False))
    loads = []
    real_load = models.load_model

    def counting_load(file, *args, **kwargs):
        if pathlib.Path(file).resolve() == teacher:
            loads.append(file)
        return real_load(file, *args, **kwargs)

    models.load_model = counting_load
    try:
        result = study_lib.run_study(study_lib.load_study(path))
    finally:
        models.load_model = real_load
    assert result.cells_run == 4 and len(loads) == 1
    for cell in study_lib.load_study(path).cells():
        alone = tmp_path / "alone" / cell.folder.name
        run_lib.run(load_config(cell.folder / "config.yaml", [f"output.dir={alone}"]))
        in_study = keras.saving.load_model(cell.folder / "student_last.keras", compile=False)
        by_fit = keras.saving.load_model(alone / "student_last.keras", compile=False)
        for a, b in zip(in_study.get_weights(), by_fit.get_weights(), strict=True):
            np.testing.assert_array_equal(a, b, err_msg=cell.label)


def test_a_loads_footprint_is_a_count_of_keras_seeds_or_none_when_another_state_moved():
    import random

    import keras

    from dgad_tf import context

    keras.utils.set_random_seed(3)
    before = context.random_state()
    for _ in range(7):
        random.randint(1, 10**9)  # what Keras draws for each initialiser it constructs
    assert context.seed_draws(before, context.random_state()) == 7
    assert context.seed_draws(before, before) == 0
    before = context.random_state()
    np.random.rand()
    assert context.seed_draws(before, context.random_state()) is None
    before = context.random_state()
    keras.random.uniform((2,))  # no seed: Keras's global SeedGenerator
    assert context.seed_draws(before, context.random_state()) is None


def test_a_rerun_logs_which_finished_cells_it_skipped(finished_study):
    logs = finished_study["logs"]
    assert not any("skipped" in line for line in logs["first"])
    skipped = "finished earlier, skipped (not retrained)"
    assert f"2 of 4 cell(s) {skipped}: pgd_at seed 0, adaad seed 0" in logs["resumed"]
    assert (
        f"4 of 4 cell(s) {skipped}: pgd_at seed 0, adaad seed 0, pgd_at seed 1, adaad seed 1"
        in logs["again"]
    )


def _seconds(text: str) -> int:
    """A duration as the study log writes it ("42 s", "3 min 05 s") in seconds."""
    minutes = re.search(r"(\d+) min", text)
    seconds = re.search(r"(\d+) s", text)
    return (int(minutes.group(1)) * 60 if minutes else 0) + (
        int(seconds.group(1)) if seconds else 0
    )


def test_the_time_estimate_of_a_resumed_study_counts_the_cells_finished_before(finished_study):
    out = finished_study["out"]
    # What the two cells finished before the kill recorded: training plus protocol attacks.
    recorded = []
    for name in ("pgd_at_seed0", "adaad_seed0"):
        report = json.loads((out / "cells" / name / "report.json").read_text())
        evaluation = json.loads((out / "cells" / name / study_lib.CELL_EVAL_FILE).read_text())
        recorded.append(
            report["seconds"] + sum(a["seconds"] for a in evaluation["attacks"].values())
        )
    (line,) = [
        x for x in finished_study["logs"]["resumed"] if x.startswith("cell 3/4 (") and "done" in x
    ]
    assert "1 cell(s) left" in line and "(the mean of 3 finished)" in line
    this_cell = _seconds(line.split(" done in ")[1].split(":")[0])
    per_cell = _seconds(line.split(" more at ")[1].split(" per cell")[0])
    assert abs(per_cell - (sum(recorded) + this_cell) / 3) <= 1.5  # each logged to the second


def test_one_teacher_trained_once_serves_every_cell(finished_study):
    out = finished_study["out"]
    assert (out / "teacher_run" / "log.csv").exists()
    assert (out / "teacher.keras").stat().st_mtime_ns == finished_study["teacher_mtime"]
    for cell in (out / "cells").iterdir():
        cfg = yaml.safe_load((cell / "config.yaml").read_text())
        assert cfg["model"]["teacher_path"] == str(out / "teacher.keras")


def test_every_cell_is_a_fit_run_evaluated_on_the_same_images(finished_study):
    out = finished_study["out"]
    evaluations = {
        cell.name: json.loads((cell / study_lib.CELL_EVAL_FILE).read_text())
        for cell in (out / "cells").iterdir()
    }
    assert sorted(evaluations) == ["adaad_seed0", "adaad_seed1", "pgd_at_seed0", "pgd_at_seed1"]
    digests = {e["images_sha256"] for e in evaluations.values()}
    teacher = json.loads((out / study_lib.TEACHER_EVAL_FILE).read_text())
    assert digests == {teacher["images_sha256"]}
    assert {e["n"] for e in evaluations.values()} == {48}
    for name, evaluation in evaluations.items():
        assert set(evaluation["attacks"]) == {"clean", "fgsm", "pgd3"}
        cfg = yaml.safe_load((out / "cells" / name / "config.yaml").read_text())
        assert cfg["train"]["seed"] == int(name[-1])
        assert cfg["method"]["name"] == name.rsplit("_seed", 1)[0]
        assert (out / "cells" / name / "report.json").exists()


def test_results_csv_has_one_row_per_cell_with_the_promised_columns(finished_study):
    out = finished_study["out"]
    rows = list(csv.DictReader((out / study_report.RESULTS_FILE).open()))
    assert list(rows[0]) == [
        "method",
        "seed",
        "clean_accuracy",
        "fgsm_accuracy",
        "pgd3_accuracy",
        "epochs",
        "select",
        "selected_epoch",
        "seconds",
        "run_dir",
    ]
    assert [(r["method"], r["seed"]) for r in rows] == [
        ("pgd_at", "0"),
        ("adaad", "0"),
        ("pgd_at", "1"),
        ("adaad", "1"),
    ]
    for row in rows:
        evaluation = json.loads(
            (pathlib.Path(row["run_dir"]) / study_lib.CELL_EVAL_FILE).read_text()
        )
        assert float(row["pgd3_accuracy"]) == pytest.approx(
            evaluation["attacks"]["pgd3"]["robust_accuracy"], abs=5e-5
        )


def test_summary_numbers_are_the_mean_std_and_paired_interval_of_the_rows(finished_study):
    out = finished_study["out"]
    rows = list(csv.DictReader((out / study_report.RESULTS_FILE).open()))
    summary = json.loads((out / study_report.SUMMARY_JSON).read_text())
    value = {(r["method"], int(r["seed"])): float(r["pgd3_accuracy"]) for r in rows}
    pgd = [value["pgd_at", 0], value["pgd_at", 1]]
    entry = summary["methods"]["pgd_at"]["metrics"]["pgd3_accuracy"]
    assert entry["mean"] == pytest.approx(sum(pgd) / 2, abs=1e-4)
    assert entry["std"] == pytest.approx(abs(pgd[0] - pgd[1]) / math.sqrt(2), abs=1e-4)
    d = [value["pgd_at", s] - value["adaad", s] for s in (0, 1)]
    paired = summary["methods"]["pgd_at"]["vs_reference"]["pgd3_accuracy"]
    half = 12.7062 * (abs(d[0] - d[1]) / math.sqrt(2)) / math.sqrt(2)
    assert paired["mean"] == pytest.approx(sum(d) / 2, abs=1e-4)
    assert paired["low"] == pytest.approx(sum(d) / 2 - half, abs=1e-3)
    assert "vs_reference" not in summary["methods"]["adaad"]
    assert summary["cells_done"] == summary["cells_total"] == 4
    text = (out / study_report.SUMMARY_MD).read_text()
    assert "| pgd_at | 2 |" in text and "pgd_at − adaad, pgd3_accuracy" in text


@pytest.mark.parametrize(
    "a, b, words",
    [
        ([0.52, 0.50, 0.55], [0.50, 0.49, 0.52], "includes 0: these 3 seeds do not show"),
        ([0.60, 0.70, 0.65], [0.50, 0.52, 0.49], "excludes 0: over these 3 seeds dgad is higher"),
        ([0.40, 0.42, 0.41], [0.50, 0.51, 0.52], "excludes 0: over these 3 seeds dgad is lower"),
        # RSLAD's clean accuracy in the CIFAR-10 study: -2 points on both seeds.
        ([0.18, 0.19], [0.20, 0.21], "-2.00 points on each of the 2 seeds; with no spread"),
        ([0.60], [0.50], "one pair gives no interval"),
    ],
)
def test_the_comparison_sentence_says_what_the_interval_says(a, b, words):
    paired = stats.paired_difference(a, b).to_dict()
    sentence = study_markdown.comparison_sentence("dgad", "adaad", "autoattack_accuracy", paired)
    assert words in sentence
    assert sentence.startswith("dgad − adaad, autoattack_accuracy: ")


def test_figures_are_drawn_when_matplotlib_is_there(finished_study):
    pytest.importorskip("matplotlib")
    for name in (study_report.SCATTER_FIGURE, study_report.CURVE_FIGURE):
        data = (finished_study["out"] / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000


def test_without_matplotlib_the_tables_are_written_and_the_log_says_why(
    finished_study, tmp_path, monkeypatch, caplog
):
    import builtins

    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name.startswith("matplotlib"):
            raise ImportError("no matplotlib")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    summary = json.loads((finished_study["out"] / study_report.SUMMARY_JSON).read_text())
    with caplog.at_level("WARNING"):
        assert study_report.write_figures(tmp_path, summary, [], "pgd3_accuracy") == []
    assert "matplotlib is not installed" in caplog.text and "dgad_tf[plot]" in caplog.text
    assert not list(tmp_path.iterdir())


def test_a_changed_study_in_the_same_folder_is_refused(finished_study, tmp_path):
    from dgad_tf.rundir import RunError

    changed = write_study(tmp_path / "changed.yaml", finished_study["out"], n=40)
    before = sorted(p.name for p in (finished_study["out"] / "cells").iterdir())
    with pytest.raises(RunError, match="different study.*protocol.n"):
        study_lib.run_study(study_lib.load_study(changed))
    with pytest.raises(RunError, match="different study.*base.attack.steps"):
        study_lib.run_study(study_lib.load_study(finished_study["path"], ["attack.steps=3"]))
    assert sorted(p.name for p in (finished_study["out"] / "cells").iterdir()) == before


def test_a_second_writer_is_refused(finished_study):
    from dgad_tf.rundir import FolderBusy, FolderLock

    with FolderLock(finished_study["out"], "test"):
        with pytest.raises(FolderBusy, match="being written"):
            study_lib.run_study(study_lib.load_study(finished_study["path"]))


@pytest.mark.parametrize(
    "study, message",
    [
        ({"methods": []}, "study.methods` must be a non-empty list"),
        ({"methods": ["pgd_at", "nope"]}, "unknown method 'nope'"),
        ({"methods": ["pgd_at", "pgd_at"]}, "used twice"),
        ({"seeds": [0, 0]}, "lists a seed twice"),
        ({"seeds": "0"}, "study.seeds` must be a non-empty list"),
        ({"reference": "dgad"}, "study.reference` must be one of"),
        ({"attacks": ["pgd"]}, "study.attacks"),
        ({"n": 0}, "study.n` must be an integer >= 1"),
        ({"eps": "big"}, "study.eps"),
        ({"colour": "red"}, "unknown key `study.colour`"),
        ({"methods": [{"name": "x", "method": "dgad", "set": ["data.train_limit=5"]}]}, "share"),
        ({"methods": [{"name": "x", "method": "dgad", "set": ["train.seed=5"]}]}, "share"),
        ({"methods": [{"name": "x", "method": "dgad", "set": ["method.name=clean"]}]}, "share"),
        (
            {
                "methods": [{"name": "x", "method": "dgad", "set": ["method.bta=1"]}],
                "reference": "x",
            },
            "study.methods: x: unknown key `method.bta`",
        ),
        ({"methods": [{"name": "a/b"}]}, "`name` must be"),
    ],
)
def test_a_malformed_study_is_refused_naming_the_key(tmp_path, study, message):
    path = write_study(tmp_path / "bad.yaml", tmp_path / "out", **study)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("[", r"\[")):
        study_lib.load_study(path)
    assert not (tmp_path / "out").exists()


def test_a_variant_gets_its_own_overrides_and_folder(tmp_path):
    path = write_study(
        tmp_path / "v.yaml",
        tmp_path / "out",
        methods=["dgad", {"name": "dgad_no_pcr", "method": "dgad", "set": ["method.beta=0"]}],
        reference="dgad",
    )
    cells = study_lib.load_study(path, ["study.seeds=[3]"]).cells()
    assert [(c.folder.name, c.cfg.method.name, c.cfg.method.beta, c.seed) for c in cells] == [
        ("dgad_seed3", "dgad", 1.0, 3),
        ("dgad_no_pcr_seed3", "dgad", 0.0, 3),
    ]


def test_a_study_file_without_a_study_section_is_refused_by_the_command(tmp_path):
    path = tmp_path / "plain.yaml"
    path.write_text(yaml.safe_dump({"output": {"dir": str(tmp_path / "out")}}))
    result = run_command(
        [sys.executable, "-m", "dgad_tf.compare", "--config", str(path)],
        cwd=REPO,
    )
    assert result.returncode == 2
    assert "needs a `study:` mapping" in result.stderr
    assert not (tmp_path / "out").exists()


def test_the_command_hides_tensorflows_start_up_and_a_rerun_names_the_skipped_cell(tmp_path):
    # One cell without a teacher, so the command's own output is all there is to read.
    values = {
        **BASE,
        "data": {**BASE["data"], "train_limit": 128},
        "output": {**BASE["output"], "dir": str(tmp_path / "out")},
        "study": {"methods": ["clean"], "seeds": [0], "attacks": ["clean"], "n": 16},
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(values, sort_keys=False))
    command = [sys.executable, "-m", "dgad_tf.compare", "--config", str(path)]
    first = run_command(command, cwd=REPO)
    assert first.returncode == 0, first.stderr
    noise = [
        line
        for line in first.stderr.splitlines()
        if "absl::InitializeLog" in line or "cuda" in line.lower() or "oneDNN" in line
    ]
    assert noise == []
    again = run_command(command, cwd=REPO)
    assert again.returncode == 0, again.stderr
    assert "1 of 1 cell(s) finished earlier, skipped (not retrained): clean seed 0" in again.stderr


@pytest.mark.parametrize("name", ["compare_quickstart.yaml", "compare_cifar10_cpu.yaml"])
def test_shipped_study_configs_parse(name):
    study = study_lib.load_study(REPO / "configs" / name)
    assert len(study.cells()) == len(study.methods) * len(study.seeds)
    assert "autoattack" in study.protocol.attacks


# --------------------------------------------------------------------------- pairing by seed

# pgd3 accuracy of each (method, seed): the differences to adaad are +0.10 (seed 2), -0.02
# (seed 0) and +0.06 (seed 1), so pairing by position in any other order gives other numbers.
PGD3 = {
    ("pgd_at", 2): 0.30,
    ("pgd_at", 0): 0.10,
    ("pgd_at", 1): 0.25,
    ("adaad", 2): 0.20,
    ("adaad", 0): 0.12,
    ("adaad", 1): 0.19,
}


def _row(cell, table=PGD3) -> dict:
    """The row `run_study` keeps for a cell: clean accuracy 0.5 above its `table` entry."""
    accuracy = table[cell.entry.name, cell.seed]
    evaluation = {
        "clean_accuracy": accuracy + 0.5,
        "attacks": {name: {"robust_accuracy": accuracy} for name in ("fgsm", "pgd3")},
        "images_sha256": "same",
    }
    return {
        "method": cell.entry.name,
        "seed": cell.seed,
        "evaluation": evaluation,
        "epochs": 1,
        "seconds": 1.0,
        "run_dir": str(cell.folder),
        "history": [],
    }


@pytest.mark.parametrize("methods", [["pgd_at", "adaad"], ["adaad", "pgd_at"]])
def test_paired_differences_pair_each_seed_with_the_references_same_seed(tmp_path, methods):
    """Seeds listed out of order ([2, 0, 1]), the reference last or first in `study.methods`.

    The summary is written after every cell, as `run_study` does: with the reference first,
    after its seed-0 cell it has one seed more than pgd_at, which must pair only seed 2. The
    interval is re-derived with NumPy and SciPy's t quantile. The figures of the same partial
    study are drawn by the next test; here they are left out, so that a mutation-testing run
    (docs/contributing.md) can repeat this test for every mutant of the statistics.
    """
    from scipy import stats as scipy_stats

    path = write_study(
        tmp_path / "s.yaml", tmp_path / "out", methods=methods, seeds=[2, 0, 1], reference="adaad"
    )
    study = study_lib.load_study(path)
    rows = []
    for cell in study.cells():
        rows.append(_row(cell))
        study_report.write_outputs(study, rows, None, figures=False)
        summary = json.loads((tmp_path / "out" / study_report.SUMMARY_JSON).read_text())
        paired = summary["methods"]["pgd_at"].get("vs_reference", {}).get("pgd3_accuracy")
        done = {(r["method"], r["seed"]) for r in rows}
        seeds = sorted(s for s in (0, 1, 2) if ("pgd_at", s) in done and ("adaad", s) in done)
        if not seeds:
            assert paired is None
            continue
        differences = np.array([PGD3["pgd_at", s] - PGD3["adaad", s] for s in seeds])
        assert paired["seeds"] == seeds and paired["n"] == len(seeds)
        assert paired["mean"] == pytest.approx(differences.mean(), abs=1e-12)
        if len(seeds) > 1:
            half = (
                scipy_stats.t.ppf(0.975, len(seeds) - 1)
                * differences.std(ddof=1)
                / np.sqrt(len(seeds))
            )
            assert paired["low"] == pytest.approx(differences.mean() - half, abs=1e-9)
            assert paired["high"] == pytest.approx(differences.mean() + half, abs=1e-9)
    assert paired["mean"] == pytest.approx((0.10 - 0.02 + 0.06) / 3, abs=1e-12)
    assert summary["methods"]["pgd_at"]["metrics"]["pgd3_accuracy"]["values"] == [0.10, 0.25, 0.30]


def test_the_figures_are_drawn_after_every_cell_and_kept_when_left_out(tmp_path):
    """Each write of a study in progress draws every figure, the reference one seed ahead.

    With `figures=False` the tables are rewritten and the figures already drawn stay as they
    were (a redraw from fewer cells would change their bytes).
    """
    pytest.importorskip("matplotlib")
    from dgad_tf import study_figures

    out = tmp_path / "out"
    path = write_study(
        tmp_path / "s.yaml", out, methods=["adaad", "pgd_at"], seeds=[2, 0, 1], reference="adaad"
    )
    study = study_lib.load_study(path)
    names = [
        study_figures.PER_SEED_FIGURE,
        study_figures.SCATTER_FIGURE,
        study_figures.CURVE_FIGURE,
    ]
    figures = [out / n for n in names] + [
        (out / n).with_suffix(study_figures.VECTOR_SUFFIX) for n in names
    ]
    rows = []
    for cell in study.cells():
        rows.append(_row(cell))
        for figure in figures:
            figure.unlink(missing_ok=True)
        study_report.write_outputs(study, rows, None)
        assert all(f.stat().st_size > 1000 for f in figures), (cell.entry.name, cell.seed)
    drawn = {f: f.read_bytes() for f in figures}
    (out / study_report.SUMMARY_JSON).unlink()
    study_report.write_outputs(study, rows[:1], None, figures=False)
    summary = json.loads((out / study_report.SUMMARY_JSON).read_text())
    assert summary["methods"]["adaad"]["metrics"]["pgd3_accuracy"]["values"] == [0.20]
    assert {f: f.read_bytes() for f in figures} == drawn


# --------------------------------------------------------------------------- what cells share


@pytest.mark.parametrize(
    "changed, key",
    [
        ("study.n=40", "protocol.n"),
        ("study.attacks=[clean, fgsm]", "protocol.attacks"),
        ("study.eps=0.2", "protocol.eps"),
        ("study.seed=1", "protocol.seed"),
        ("study.batch_size=32", "protocol.batch_size"),
    ],
)
def test_a_study_rerun_under_another_protocol_is_refused_naming_the_key(
    finished_study, changed, key
):
    """Cells scored under two protocols would be compared as one study: the re-run is refused."""
    from dgad_tf.rundir import RunError

    out = finished_study["out"]
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    with pytest.raises(RunError, match=rf"different study \(`{key}` differs\)"):
        study_lib.run_study(study_lib.load_study(finished_study["path"], [changed]))
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == before


@pytest.mark.parametrize(
    "override",
    [
        "model.teacher_path=/elsewhere/teacher.keras",
        "model.teacher=resnet18",
        # A whole-section override hides the teacher behind another key of the same section.
        "model={student: small-cnn, teacher_path: /elsewhere/teacher.keras}",
        "model={student: small-cnn, teacher: resnet18}",
    ],
)
def test_a_methods_set_cannot_change_the_study_teacher(tmp_path, override):
    """Every cell distils from the one study teacher: a variant may not bring its own."""
    path = write_study(
        tmp_path / "s.yaml",
        tmp_path / "out",
        methods=["adaad", {"name": "own_teacher", "method": "dgad", "set": [override]}],
    )
    with pytest.raises(ConfigError, match="own_teacher: `set: .*` changes what every cell"):
        study_lib.load_study(path)
    assert not (tmp_path / "out").exists()


def test_every_cell_distils_from_the_study_teacher(tmp_path):
    path = write_study(
        tmp_path / "s.yaml",
        tmp_path / "out",
        methods=["adaad", {"name": "v", "method": "dgad", "set": ["model={student: small-cnn}"]}],
    )
    study = study_lib.load_study(path)
    assert {(c.cfg.model.teacher, c.cfg.model.teacher_path) for c in study.cells()} == {
        ("small-cnn", str(tmp_path / "out" / "teacher.keras"))
    }


@pytest.mark.parametrize(
    "attacks, headline",
    [
        (("clean", "fgsm", "pgd3"), "pgd3_accuracy"),  # the last attack of the protocol
        (("clean", "autoattack", "pgd20"), "autoattack_accuracy"),
        (("clean", "autoattack_custom", "pgd20"), "autoattack_custom_accuracy"),
        (("clean", "autoattack_custom", "autoattack"), "autoattack_accuracy"),
    ],
)
def test_the_headline_metric_is_autoattack_when_measured(attacks, headline):
    protocol = study_lib.Protocol(attacks=attacks, n=10, eps=0.03, batch_size=8, seed=0)
    assert study_report.strongest_metric(protocol) == headline


def test_results_csv_rows_are_the_cells_in_plain_newline_csv(tmp_path):
    path = write_study(tmp_path / "s.yaml", tmp_path / "out", seeds=[2])
    study = study_lib.load_study(path)
    rows = [_row(cell) for cell in study.cells()]
    text = study_report.results_csv(rows, study.protocol)
    out = tmp_path / "out" / "cells"
    assert text == (
        "method,seed,clean_accuracy,fgsm_accuracy,pgd3_accuracy,epochs,select,selected_epoch,"
        "seconds,run_dir\n"
        f"pgd_at,2,0.8000,0.3000,0.3000,1,,,1,{out / 'pgd_at_seed2'}\n"
        f"adaad,2,0.7000,0.2000,0.2000,1,,,1,{out / 'adaad_seed2'}\n"
    )
    rows[0] |= {"select": "best_val", "selected_epoch": 3}
    assert study_report.results_csv(rows, study.protocol).splitlines()[1] == (
        f"pgd_at,2,0.8000,0.3000,0.3000,1,best_val,3,1,{out / 'pgd_at_seed2'}"
    )
    del rows[0]["select"], rows[0]["selected_epoch"]
    summary = study_report.summarize(study, rows, None)
    assert summary["command"] == "" and summary["cells_done"] == 2 and summary["cells_total"] == 2
    # No command: no Command line. Cells on other images: no one digest to show.
    rows[1]["evaluation"]["images_sha256"] = "other"
    summary = study_report.summarize(study, rows, None)
    assert summary["protocol"]["images_sha256"] == ["other", "same"]
    text = study_report.summary_markdown(summary, ["clean_accuracy"], "clean_accuracy")
    assert text.splitlines()[:4] == [f"# Study {tmp_path / 'out'}", "", "", ""]
    assert "(the same images for every cell: sha256 ?)" in text


def _rounded(value):
    """`value` with every float rounded to 9 digits, to compare nested summaries."""
    if isinstance(value, float):
        return round(value, 9)
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_rounded(v) for v in value]
    return value


def _contains(value, expected) -> bool:
    """Whether `value` holds `expected`: equal leaves, and every key of a dict of `expected`
    in `value` (which may hold more), recursively."""
    if isinstance(expected, dict):
        return isinstance(value, dict) and all(
            key in value and _contains(value[key], item) for key, item in expected.items()
        )
    return value == expected


def test_summary_and_its_markdown_hold_every_number_of_the_rows(tmp_path):
    """A study in progress: pgd_at and adaad on both seeds, a variant on one, trades on none."""
    from scipy import stats as scipy_stats

    variant = {"name": "dgad_b0", "method": "dgad", "set": ["method.beta=0"]}
    path = write_study(
        tmp_path / "s.yaml",
        tmp_path / "out",
        methods=["pgd_at", "adaad", variant, "trades"],
        seeds=[2, 0],
        reference="adaad",
    )
    study = study_lib.load_study(path)
    pgd3 = {("pgd_at", 2): 0.30, ("adaad", 2): 0.20, ("dgad_b0", 2): 0.35}
    pgd3.update({("pgd_at", 0): 0.10, ("adaad", 0): 0.12})
    rows = []
    for cell in study.cells():
        if (cell.entry.name, cell.seed) in pgd3:
            rows.append(_row(cell, pgd3))
    teacher = {
        "clean_accuracy": 0.9,
        "attacks": {"fgsm": {"robust_accuracy": 0.5}, "pgd3": {"robust_accuracy": 0.4}},
        "path": "/t/teacher.keras",
    }
    summary = study_report.summarize(study, rows, teacher, command="compare s.yaml")

    def spread(values):
        return {
            "mean": float(np.mean(values)),
            "std": float(np.std(values, ddof=1)) if len(values) > 1 else None,
            "n": len(values),
            "values": values,
        }

    def paired(differences, seeds):
        n, mean = len(differences), float(np.mean(differences))
        std = float(np.std(differences, ddof=1)) if n > 1 else None
        half = scipy_stats.t.ppf(0.975, n - 1) * std / np.sqrt(n) if n > 1 else None
        low, high = (mean - half, mean + half) if n > 1 else (None, None)
        return {
            "mean": mean,
            "std": std,
            "n": n,
            "level": 0.95,
            "low": low,
            "high": high,
            "includes_zero": None if n < 2 else bool(low <= 0 <= high),
            "no_spread": False,
            "seeds": seeds,
        }

    def metrics(values):
        return {
            "clean_accuracy": spread([v + 0.5 for v in values]),
            "fgsm_accuracy": spread(values),
            "pgd3_accuracy": spread(values),
        }

    pgd_at_vs = paired([0.10 - 0.12, 0.30 - 0.20], [0, 2])
    variant_vs = paired([0.35 - 0.20], [2])
    expected = {
        "command": "compare s.yaml",
        "folder": str(tmp_path / "out"),
        "reference": "adaad",
        "seeds": [2, 0],
        "protocol": {
            "attacks": ["clean", "fgsm", "pgd3"],
            "n": 48,
            "eps": 0.1,
            "seed": 0,
            "images_sha256": "same",
        },
        "cells_done": 5,
        "cells_total": 8,
        "teacher": {
            "path": "/t/teacher.keras",
            "clean_accuracy": 0.9,
            "fgsm_accuracy": 0.5,
            "pgd3_accuracy": 0.4,
        },
        "methods": {
            "pgd_at": {
                "method": "pgd_at",
                "overrides": [],
                "seeds": [0, 2],
                "metrics": metrics([0.10, 0.30]),
                "vs_reference": {m: pgd_at_vs for m in ("clean_accuracy", "fgsm_accuracy")}
                | {"pgd3_accuracy": pgd_at_vs},
            },
            "adaad": {
                "method": "adaad",
                "overrides": [],
                "seeds": [0, 2],
                "metrics": metrics([0.12, 0.20]),
            },
            "dgad_b0": {
                "method": "dgad",
                "overrides": ["method.beta=0"],
                "seeds": [2],
                "metrics": metrics([0.35]),
                "vs_reference": {
                    m: variant_vs for m in ("clean_accuracy", "fgsm_accuracy", "pgd3_accuracy")
                },
            },
            "trades": {"method": "trades", "overrides": [], "seeds": [], "metrics": {}},
        },
    }
    expected |= {
        "data": "digits",
        # the validation curve's metric, as write_study's training section sets it
        "validation": {"steps": 2, "n": 40, "eps": 0.1},
        "primary": None,
        "holm_family": 6,  # pgd_at and dgad_b0, three metrics each
        "leaky_selection": [],
    }
    assert _contains(_rounded(summary), _rounded(expected))
    assert set(summary) == set(expected)
    assert "vs_reference" not in summary["methods"]["trades"]  # no seed to pair

    # The markdown: the same numbers in % (2 decimals), "–" where there is none.
    metric_names = ["clean_accuracy", "fgsm_accuracy", "pgd3_accuracy"]
    headline = "pgd3_accuracy"
    text = study_report.summary_markdown(summary, metric_names, headline)
    sd_pgd_at, sd_adaad = 100 * np.std([0.1, 0.3], ddof=1), 100 * np.std([0.12, 0.2], ddof=1)
    low, high = 100 * pgd_at_vs["low"], 100 * pgd_at_vs["high"]
    no_interval = (
        "points on 1 seed; one pair gives no interval, so nothing can be said about a difference."
    )
    includes_zero = "95% interval [{:+.2f}, {:+.2f}] includes 0: these 2 seeds do not show a "
    lines = [
        f"# Study {tmp_path / 'out'}",
        "",
        "Command: `compare s.yaml`",
        "",
        "Protocol: clean, fgsm, pgd3 at eps 0.1 on the first 48 test images (the same images "
        "for every cell: sha256 same), attack seed 0. Cells done: 5 of 8. Accuracies in %.",
        "",
        "Teacher (/t/teacher.keras): clean_accuracy 90.00, fgsm_accuracy 50.00, "
        "pgd3_accuracy 40.00",
        "",
        "| method | seeds | clean_accuracy | fgsm_accuracy | pgd3_accuracy |",
        "|---|---|---|---|---|",
        f"| pgd_at | 2 | 70.00 ± {sd_pgd_at:.2f} | 20.00 ± {sd_pgd_at:.2f} | "
        f"20.00 ± {sd_pgd_at:.2f} |",
        f"| adaad | 2 | 66.00 ± {sd_adaad:.2f} | 16.00 ± {sd_adaad:.2f} | 16.00 ± {sd_adaad:.2f} |",
        "| dgad_b0 | 1 | 85.00 | 35.00 | 35.00 |",
        "| trades | 0 | – | – | – |",
        "",
        "mean ± sample standard deviation over seeds.",
        "",
        "## Paired differences to adaad (same seeds)",
        "",
        "| method − adaad | metric | mean | 95% t interval | 95% seeds × images | sign-flip p "
        "| Holm p | McNemar p per seed | seeds | note |",
        "|---|---|---|---|---|---|---|---|---|---|",
        # No per-image results in these rows: no bootstrap, no McNemar. Sign-flip p is 1: pgd_at's
        # differences (-2, +10) give |mean| >= 4 under all four sign patterns; one seed, both.
        *[
            f"| pgd_at | {m} | +4.00 | [{low:+.2f}, {high:+.2f}] | – | 1 | 1 | – | 2 |  |"
            for m in metric_names
        ],
        *[f"| dgad_b0 | {m} | +15.00 | – | – | 1 | 1 | – | 1 |  |" for m in metric_names],
        "",
        *[
            f"- pgd_at − adaad, {m}: +4.00 points, "
            + includes_zero.format(low, high)
            + "difference."
            for m in ("clean_accuracy", "pgd3_accuracy")
        ],
        *[f"- dgad_b0 − adaad, {m}: +15.00 {no_interval}" for m in ("clean_accuracy", headline)],
        "",
    ]
    expected_lines = "\n".join(lines).splitlines()
    table_end = len(expected_lines) - 4  # the table and its blank line; then the 4 sentences
    shown = text.splitlines()
    assert shown[:table_end] == expected_lines[:table_end]
    assert shown[-4:] == expected_lines[-4:]
    # Between them: the columns explained and "no primary comparison", which
    # tests/test_study_report.py checks.
    assert shown[table_end].startswith("Differences in percentage points. t interval: mean ± ")


def test_the_no_spread_sentence_says_why_more_seeds_are_needed():
    paired = stats.paired_difference([0.18, 0.19], [0.20, 0.21]).to_dict()
    assert study_markdown.comparison_sentence("rslad", "adaad", "clean_accuracy", paired) == (
        "rslad − adaad, clean_accuracy: -2.00 points on each of the 2 seeds; with no spread "
        "between them the 95% interval [-2.00, -2.00] has width 0, which shows no seed-to-seed "
        "variation, not a certain difference: more seeds are needed to say more."
    )


EARLIER_STUDY = REPO / "benchmarks" / "cifar10_cpu_study" / "study.yaml"


@pytest.mark.parametrize(
    "edit, differs",
    [
        (None, None),
        # The same folder under another value is still another study, in either spelling.
        (("attack", "init_std", 0.5), "base.attack.start_std"),
        (("override", "method.rslad_log_epsilon=1e-5", "method.rslad_log_epsilon=1e-3"), "rslad"),
    ],
)
def test_a_study_folder_written_before_the_method_sections_resumes(tmp_path, edit, differs):
    # benchmarks/cifar10_cpu_study/study.yaml was written by the flat-method version (method.
    # trades_beta, attack.init, `set: [method.rslad_log_epsilon=1e-5]`); its study file in
    # today's keys names the same study, so the folder resumes instead of being refused.
    stored = yaml.safe_load(EARLIER_STUDY.read_text())
    assert "init" in stored["base"]["attack"] and "trades_beta" in stored["base"]["method"]
    if edit and edit[0] == "attack":
        stored["base"]["attack"][edit[1]] = edit[2]
    if edit and edit[0] == "override":
        for entry in stored["methods"]:
            entry["overrides"] = [edit[2] if o == edit[1] else o for o in entry["overrides"]]
    out = tmp_path / "study"
    out.mkdir()
    (out / study_lib.STUDY_FILE).write_text(yaml.safe_dump(stored, sort_keys=False))
    study = study_lib.load_study(
        REPO / "configs" / "compare_cifar10_cpu.yaml", [f"output.dir={out}"]
    )
    if differs is None:
        # The same study; its file is rewritten in today's keys when the study next writes.
        assert study_lib.check_study_dir(study) is True
    else:
        with pytest.raises(Exception, match="holds a different study") as err:
            study_lib.check_study_dir(study)
        assert differs in str(err.value)

"""A study that grows, and what every evaluation records (`dgad_tf.study` through `compare`).

A teacher-free study (clean and pgd_at, 1 epoch on 400 digits) runs once with seed 0, then grows
through `python -m dgad_tf.compare`'s `main` by a seed and by a method; a spy on the one function
that trains a cell counts what trained. The same folder then serves the checks of what each
evaluation file records.
"""

import csv
import hashlib
import json
import pathlib

import keras
import numpy as np
import pytest
import yaml

from dgad_tf import compare, stats, study_report
from dgad_tf import study as study_lib

BASE = {
    "data": {"source": "digits", "flip": False, "train_limit": 400},
    "model": {"student": "small-cnn"},
    "attack": {"eps": 0.1, "step_size": 0.05, "steps": 2},
    "optimizer": {"lr": 0.05, "milestones": []},
    "train": {"epochs": 1, "batch_size": 64, "val_robust_n": 40, "val_robust_steps": 2},
    "output": {"quiet": True, "tensorboard": False},
}
STUDY = {"methods": ["clean", "pgd_at"], "seeds": [0], "attacks": ["clean", "pgd3"], "n": 40}


def write_study(path, out_dir, **study):
    values = {**BASE, "output": {**BASE["output"], "dir": str(out_dir)}}
    values["study"] = {**STUDY, **study}
    path.write_text(yaml.safe_dump(values, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def grown(tmp_path_factory):
    """Seed 0; then seeds 0 and 1; then a third method on both seeds; then the same again."""
    from dgad_tf import run as run_lib

    root = tmp_path_factory.mktemp("grow")
    out = root / "out"
    path = write_study(root / "study.yaml", out)
    trained = []
    real_run = run_lib.run

    def spy(cfg, **kwargs):
        trained[-1].append(pathlib.Path(cfg.output.dir).name)
        return real_run(cfg, **kwargs)

    phases = [
        [],
        ["--set", "study.seeds=[0,1]"],
        ["--set", "study.seeds=[0,1]", "--set", "study.methods=[clean,pgd_at,trades]"],
        ["--set", "study.seeds=[0,1]", "--set", "study.methods=[clean,pgd_at,trades]"],
    ]
    run_lib.run = spy
    try:
        for extra in phases:
            trained.append([])
            assert compare.main(["--config", str(path), *extra]) == 0
    finally:
        run_lib.run = real_run
    return {"path": path, "out": out, "trained": trained}


def test_adding_a_seed_or_a_method_trains_only_the_new_cells(grown):
    first, more_seeds, more_methods, again = grown["trained"]
    assert first == ["clean_seed0", "pgd_at_seed0"]
    assert more_seeds == ["clean_seed1", "pgd_at_seed1"]  # one cell per method
    assert more_methods == ["trades_seed0", "trades_seed1"]  # one cell per seed
    assert again == []
    stored = yaml.safe_load((grown["out"] / study_lib.STUDY_FILE).read_text())
    assert stored["seeds"] == [0, 1]
    assert [m["name"] for m in stored["methods"]] == ["clean", "pgd_at", "trades"]
    summary = json.loads((grown["out"] / study_report.SUMMARY_JSON).read_text())
    assert summary["cells_done"] == summary["cells_total"] == 6


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--set", "data.train_limit=700"], "`base.data.train_limit` differs"),
        (["--set", "study.n=30", "--set", "study.seeds=[0,1]"], "`protocol.n` differs"),
        (
            ["--set", "study.seeds=[1]", "--set", "study.methods=[clean,pgd_at,trades]"],
            "seed 0, which `study.seeds` no longer lists",
        ),
        (["--set", "study.seeds=[0,1]"], "method 'trades', which `study.methods` no longer"),
        (
            [
                "--set",
                "study.seeds=[0,1]",
                "--set",
                "study.methods=[clean,pgd_at,{name: trades, set: [method.beta=1]}]",
            ],
            "`methods.trades.overrides` differs",
        ),
    ],
)
def test_a_study_cannot_change_or_lose_cells_and_the_error_names_the_key(
    grown, extra, message, capsys
):
    before = sorted(p.name for p in (grown["out"] / "cells").iterdir())
    stored = (grown["out"] / study_lib.STUDY_FILE).read_text()
    assert compare.main(["--config", str(grown["path"]), *extra]) != 0
    assert message in capsys.readouterr().err
    assert sorted(p.name for p in (grown["out"] / "cells").iterdir()) == before
    assert (grown["out"] / study_lib.STUDY_FILE).read_text() == stored


def sha256(path):
    return hashlib.sha256(pathlib.Path(path).read_bytes()).hexdigest()


def test_every_evaluation_names_its_images_and_model_and_keeps_per_image_correctness(grown):
    from dgad_tf import build

    cfg = study_lib.load_study(grown["path"]).base
    test = build.load_data(cfg).test
    digest = study_lib.images_digest(test.x[:40], test.y[:40])
    for cell in sorted((grown["out"] / "cells").iterdir()):
        evaluation = json.loads((cell / study_lib.CELL_EVAL_FILE).read_text())
        assert evaluation["images_sha256"] == digest
        assert evaluation["model_sha256"] == sha256(cell / evaluation["checkpoint"])
        with np.load(cell / evaluation["per_image_file"]) as data:
            assert str(data["images_sha256"]) == digest and int(data["n"]) == 40
            for attack in ("clean", "pgd3"):
                assert data[attack].dtype == np.uint8 and data[attack].size == 5
                correct = stats.unpack_correct(data[attack], 40)
                assert correct.mean() == evaluation["attacks"][attack]["robust_accuracy"]
        correct = study_lib.read_correct(cell / study_lib.CELL_CORRECT_FILE)
        # image i of the file is test image i: the model's own predictions, recomputed here
        x = test.x[:40].astype(np.float32) / (255.0 if test.x.dtype == np.uint8 else 1.0)
        model = keras.saving.load_model(cell / evaluation["checkpoint"])
        predicted = np.argmax(model.predict(x, verbose=0), axis=-1)
        np.testing.assert_array_equal(correct["clean"], predicted == test.y[:40])
        # a robust image is a clean-correct one
        assert not np.any(correct["pgd3"] & ~correct["clean"])


def test_results_csv_names_the_selection_rule_and_the_selected_epoch(grown):
    rows = list(csv.DictReader((grown["out"] / study_report.RESULTS_FILE).open()))
    assert len(rows) == 6
    for row in rows:
        report = json.loads((pathlib.Path(row["run_dir"]) / "report.json").read_text())
        selection = report["student"]["selection"]
        assert row["select"] == selection["rule"] == "best_val"
        assert int(row["selected_epoch"]) == selection["epoch"] == 1

"""`python -m dgad_tf.compare --plan`: the cells, what they share, a timed cost; nothing written."""

import pathlib

import yaml

from dgad_tf import compare
from dgad_tf import study as study_lib

REPO = pathlib.Path(__file__).resolve().parents[1]


def write_study(tmp_path, **study):
    values = {
        "data": {"source": "digits", "flip": False},
        "model": {"student": "small-cnn", "teacher": "small-cnn"},
        "attack": {"eps": 0.1, "step_size": 0.05, "steps": 2},
        "train": {"epochs": 3, "batch_size": 32},
        "output": {"dir": str(tmp_path / "out")},
        "study": {
            "methods": [
                "pgd_at",
                {"name": "adaad_cm", "method": "adaad", "set": ["method.kl_reduction=class_mean"]},
            ],
            "seeds": [0, 1],
            "reference": "pgd_at",
            "attacks": ["clean", "pgd5", "autoattack"],
            "n": 50,
            **study,
        },
    }
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(values, sort_keys=False))
    return path


def test_plan_prints_cells_shared_settings_and_a_cost_and_writes_nothing(tmp_path, capsys):
    path = write_study(tmp_path)
    assert compare.main(["--plan", "--config", str(path)]) == 0
    out = capsys.readouterr().out
    assert "2 methods x 2 seeds = 4 cells (0 finished here, 4 to train)" in out
    for cell in ("pgd_at_seed0", "adaad_cm_seed0", "pgd_at_seed1", "adaad_cm_seed1"):
        assert cell in out
    assert "method.kl_reduction=class_mean" in out
    # digits: 1,797 images, 20% test by default, so the training images come from the data
    assert "training images (loaded)" in out
    assert "on the first 50 of" in out and "pgd5" in out
    assert "train step  pgd_at" in out and "train step  adaad" in out
    assert "autoattack" in out and "total       training" in out
    assert "scaled linearly to batch 32" in out
    assert not (tmp_path / "out").exists()


def test_plan_costs_train_steps_from_the_probe_times_the_steps(tmp_path, monkeypatch, capsys):
    from dgad_tf import study_plan

    def fake_probe(study, facts, batch, repeats):
        # one second per image of training, no evaluation cost: the total is exact
        keys = {(c.cfg.method.name, c.cfg.method.reference_forwards) for c in study.cells()}
        return {
            "train_step": dict.fromkeys(keys, 1.0),
            "student": (0.0, 0.0),
            "teacher": (0.0, 0.0),
            "batch": batch,
        }

    monkeypatch.setattr(study_plan, "probe", fake_probe)
    study = study_lib.load_study(write_study(tmp_path))
    facts = study_plan.data_facts(study.base)
    text = study_plan.plan_text(study)
    # 3 epochs of ceil-or-floor(train / 32) batches of 32 images, one second per image
    batches = facts.train // 32 + (0 if study.base.train.drop_remainder else 1)
    per_cell = batches * 32 * 3
    assert f"{study_plan._duration(per_cell)} per cell ({batches:,} steps x 3 epochs)" in text
    assert f"training {study_plan._duration(4 * per_cell)} + evaluation 0 s" in text


def test_the_paper_study_parses_with_its_primary_and_select_last():
    study = study_lib.load_study(REPO / "configs" / "compare_cifar10_resnet18_paper.yaml")
    assert [e.name for e in study.methods] == ["adaad_reference", "adaad_batchmean", "dgad"]
    assert study.seeds == (0, 1, 2, 3, 4) and study.protocol.n == 10000
    assert study.primary == {"method": "dgad", "versus": "adaad_batchmean", "attack": "autoattack"}
    cells = study.cells()
    assert {c.cfg.train.select for c in cells} == {"last"}
    # DGAD has no KL scale option: its section holds only its own loss's fields.
    scales = {c.entry.name: getattr(c.cfg.method, "kl_reduction", None) for c in cells}
    assert scales["adaad_reference"] == "class_mean" and scales["adaad_batchmean"] == "batchmean"
    assert {c.cfg.model.student for c in cells} == {"resnet-18"}
    assert study.base.model.teacher == "wrn-34-10"

"""The committed CPU study's numbers recompute from its per-image records, independently.

benchmarks/cifar10_cpu_dgad_vs_adaad/ holds, for every cell and the teacher, which of the same
1,000 test images stayed correct under each attack (`study_correct.npz`, `np.packbits`). Every
accuracy, mean, standard deviation, t interval and McNemar p of its summary is recomputed here
from those bits with NumPy and SciPy, not with dgad_tf's own statistics.
"""

import csv
import json
import pathlib

import numpy as np
import pytest

scipy_stats = pytest.importorskip("scipy.stats")

FOLDER = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "cifar10_cpu_dgad_vs_adaad"
METHODS = ("adaad_reference", "adaad_batchmean", "dgad", "dgad_no_map_els")
SEEDS = (0, 1, 2)
ATTACKS = ("clean", "pgd20", "autoattack")


def correct(path):
    with np.load(path) as data:
        n = int(data["n"])
        bits = {a: np.unpackbits(data[a])[:n].astype(bool) for a in ATTACKS}
        return bits, str(data["images_sha256"])


@pytest.fixture(scope="module")
def records():
    cells = {}
    for method in METHODS:
        for seed in SEEDS:
            cell = FOLDER / "cells" / f"{method}_seed{seed}"
            bits, images = correct(cell / "study_correct.npz")
            evaluation = json.loads((cell / "study_eval.json").read_text())
            cells[method, seed] = {"bits": bits, "images": images, "eval": evaluation}
    summary = json.loads((FOLDER / "summary.json").read_text())
    return cells, summary


def test_every_cell_was_scored_on_the_same_images_as_the_teacher(records):
    cells, summary = records
    _, teacher_images = correct(FOLDER / "teacher_correct.npz")
    assert {c["images"] for c in cells.values()} == {teacher_images}
    assert {c["eval"]["images_sha256"] for c in cells.values()} == {teacher_images}
    assert summary["protocol"]["images_sha256"] == teacher_images
    # Each cell names the model file it scored, and no two cells scored the same file.
    hashes = [c["eval"]["model_sha256"] for c in cells.values()]
    assert len(set(hashes)) == len(hashes)


def test_accuracies_are_the_share_of_images_that_stayed_correct(records):
    cells, _ = records
    rows = {(r["method"], int(r["seed"])): r for r in csv.DictReader(open(FOLDER / "results.csv"))}
    for key, cell in cells.items():
        for attack in ATTACKS:
            share = cell["bits"][attack].mean()
            assert cell["eval"]["attacks"][attack]["robust_accuracy"] == pytest.approx(share)
            assert float(rows[key][f"{attack}_accuracy"]) == pytest.approx(share, abs=5e-5)
        # A point robust under an attack is correct clean (robust accuracy never counts more).
        assert not (cell["bits"]["autoattack"] & ~cell["bits"]["clean"]).any()
        assert not (cell["bits"]["pgd20"] & ~cell["bits"]["clean"]).any()


def test_means_stds_and_the_primary_t_interval_recompute(records):
    cells, summary = records
    for method in METHODS:
        for attack in ATTACKS:
            values = [cells[method, s]["bits"][attack].mean() for s in SEEDS]
            entry = summary["methods"][method]["metrics"][f"{attack}_accuracy"]
            assert entry["mean"] == pytest.approx(np.mean(values), abs=1e-12)
            assert entry["std"] == pytest.approx(np.std(values, ddof=1), abs=1e-12)
    primary = summary["primary"]
    assert (primary["method"], primary["versus"], primary["attack"]) == (
        "dgad",
        "adaad_batchmean",
        "autoattack",
    )
    diffs = [
        cells["dgad", s]["bits"]["autoattack"].mean()
        - cells["adaad_batchmean", s]["bits"]["autoattack"].mean()
        for s in SEEDS
    ]
    half = scipy_stats.t.ppf(0.975, len(diffs) - 1) * np.std(diffs, ddof=1) / np.sqrt(len(diffs))
    assert primary["mean"] == pytest.approx(np.mean(diffs), abs=1e-12)
    assert primary["low"] == pytest.approx(np.mean(diffs) - half, abs=1e-9)
    assert primary["high"] == pytest.approx(np.mean(diffs) + half, abs=1e-9)
    # All three seeds point the same way: the exact sign-flip p is its floor, 2 / 2**3.
    assert all(d < 0 for d in diffs) and primary["sign_flip"]["p_value"] == 0.25


def test_the_primary_mcnemar_counts_and_p_recompute(records):
    cells, summary = records
    for entry in summary["primary"]["per_seed"]:
        a = cells["dgad", entry["seed"]]["bits"]["autoattack"]
        b = cells["adaad_batchmean", entry["seed"]]["bits"]["autoattack"]
        a_only, b_only = int((a & ~b).sum()), int((b & ~a).sum())
        assert (entry["mcnemar"]["a_only"], entry["mcnemar"]["b_only"]) == (a_only, b_only)
        exact = scipy_stats.binomtest(a_only, a_only + b_only, 0.5).pvalue
        assert entry["mcnemar"]["p_value"] == pytest.approx(exact, rel=1e-9)

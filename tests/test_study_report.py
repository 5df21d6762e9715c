"""dgad_tf.study_report from a synthetic study: no training, per-image correctness made up.

Three methods x 3 seeds on 600 images; every number summary.json shows is recomputed here from
the per-image arrays with SciPy or an enumeration, and the markdown is read for what it must say.
"""

import dataclasses
import itertools
import json
import math

import numpy as np
import pytest
import yaml

from dgad_tf import stats, study_report
from dgad_tf import study as study_lib

scipy_stats = pytest.importorskip("scipy.stats")

N = 600
SEEDS = [0, 1, 2]
# (clean rate, pgd20 rate, autoattack rate) and a per-seed shift of each method
RATES = {"adaad": (0.80, 0.50, 0.45), "dgad": (0.82, 0.53, 0.47), "dgad_nomap": (0.81, 0.50, 0.44)}


def load(tmp_path, **study):
    values = {
        "data": {"source": "digits"},
        "model": {"student": "small-cnn"},
        "output": {"dir": str(tmp_path / "out")},
        "study": {
            "methods": [
                "adaad",
                "dgad",
                {"name": "dgad_nomap", "method": "dgad", "set": ["method.beta=0"]},
            ],
            "seeds": SEEDS,
            "reference": "adaad",
            "attacks": ["clean", "pgd20", "autoattack"],
            "n": N,
            **study,
        },
    }
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(values, sort_keys=False))
    return study_lib.load_study(path)


def synthetic_rows(select="best_val", nan_cell=None):
    """Rows as run_study makes them; images share a difficulty, so the methods mostly agree."""
    difficulty = np.random.default_rng(0).random(N)
    rows = []
    for seed in SEEDS:
        noise = np.random.default_rng(100 + seed).random((len(RATES), N))
        for k, (method, rates) in enumerate(RATES.items()):
            shift = 0.01 * ((seed * 7 + k * 3) % 5 - 2)
            correct = {}
            for attack, rate in zip(("clean", "pgd20", "autoattack"), rates):
                correct[attack] = (difficulty + 0.15 * noise[k]) < rate + shift + 0.07
            # robust images are clean-correct ones
            correct["pgd20"] &= correct["clean"]
            correct["autoattack"] &= correct["pgd20"]
            evaluation = {
                "clean_accuracy": float(correct["clean"].mean()),
                "attacks": {a: {"robust_accuracy": float(c.mean())} for a, c in correct.items()},
                "images_sha256": "ab" * 32,
            }
            if (method, seed) == nan_cell:
                evaluation["attacks"]["pgd20"]["robust_accuracy"] = float("nan")
            rows.append(
                {
                    "method": method,
                    "seed": seed,
                    "evaluation": evaluation,
                    "epochs": 2,
                    "seconds": 10.0,
                    "run_dir": f"cells/{method}_seed{seed}",
                    "checkpoint": "student_last.keras",
                    "select": select,
                    "selected_epoch": 2,
                    "history": [
                        {"epoch": e, "val_robust_accuracy": rates[1] - 0.1 / e} for e in (1, 2)
                    ],
                    "correct": correct,
                }
            )
    return rows


def correct_of(rows, method, attack):
    return np.stack([r["correct"][attack] for r in rows if r["method"] == method])


@pytest.fixture
def summary(tmp_path):
    study = load(tmp_path, primary={"method": "dgad", "attack": "autoattack"})
    rows = synthetic_rows()
    return study, rows, study_report.summarize(study, rows, None)


def test_each_seed_pair_gets_mcnemar_and_an_image_bootstrap_from_its_per_image_correctness(
    summary,
):
    _, rows, result = summary
    paired = result["methods"]["dgad_nomap"]["vs_reference"]["pgd20_accuracy"]
    a, b = correct_of(rows, "dgad_nomap", "pgd20"), correct_of(rows, "adaad", "pgd20")
    for k, seed in enumerate(paired["per_seed"]):
        a_only, b_only = int(np.sum(a[k] & ~b[k])), int(np.sum(~a[k] & b[k]))
        assert (seed["mcnemar"]["a_only"], seed["mcnemar"]["b_only"]) == (a_only, b_only)
        expected = scipy_stats.binomtest(a_only, a_only + b_only, 0.5).pvalue
        assert seed["mcnemar"]["p_value"] == pytest.approx(expected, rel=1e-9)
        assert seed["image_bootstrap"]["mean"] == pytest.approx(a[k].mean() - b[k].mean())
    assert paired["seeds_x_images"]["mean"] == pytest.approx(a.mean() - b.mean())
    assert paired["seeds_x_images"]["low"] < paired["mean"] < paired["seeds_x_images"]["high"]


def test_sign_flip_p_enumerates_the_seed_differences(summary):
    _, rows, result = summary
    paired = result["methods"]["dgad_nomap"]["vs_reference"]["clean_accuracy"]
    d = correct_of(rows, "dgad_nomap", "clean").mean(1) - correct_of(rows, "adaad", "clean").mean(1)
    flips = [
        abs(np.dot(s, d)) >= abs(d.sum()) - 1e-12 for s in itertools.product((1, -1), repeat=3)
    ]
    assert paired["sign_flip"]["p_value"] == pytest.approx(np.mean(flips))
    assert paired["sign_flip"]["smallest_p"] == 0.25


def test_the_primary_comparison_is_left_out_of_the_holm_family(summary):
    _, _, result = summary
    primary = result["primary"]
    assert (primary["method"], primary["versus"], primary["metric"]) == (
        "dgad",
        "adaad",
        "autoattack_accuracy",
    )
    assert "p_holm" not in result["methods"]["dgad"]["vs_reference"]["autoattack_accuracy"]
    family = [
        (name, metric, entry["sign_flip"]["p_value"], entry["p_holm"])
        for name in ("dgad", "dgad_nomap")
        for metric, entry in result["methods"][name]["vs_reference"].items()
        if "p_holm" in entry
    ]
    assert len(family) == result["holm_family"] == 5  # 2 methods x 3 metrics, less the primary
    raw = [p for *_, p, _ in family]
    m = len(raw)
    for i, (*_, p_holm) in enumerate(family):
        closed = max(
            min(1.0, len(subset) * min(raw[j] for j in subset))
            for size in range(1, m + 1)
            for subset in itertools.combinations(range(m), size)
            if i in subset
        )
        assert p_holm == pytest.approx(closed)


def test_a_primary_against_another_method_is_computed_on_that_pair(tmp_path):
    study = load(
        tmp_path, primary={"method": "dgad", "versus": "dgad_nomap", "attack": "autoattack"}
    )
    rows = synthetic_rows()
    result = study_report.summarize(study, rows, None)
    d = correct_of(rows, "dgad", "autoattack").mean(1) - correct_of(
        rows, "dgad_nomap", "autoattack"
    ).mean(1)
    assert result["primary"]["mean"] == pytest.approx(d.mean())
    assert result["holm_family"] == 6  # the primary is not among the shown comparisons
    text = study_report.summary_markdown(
        result, study_report.metric_names(study.protocol), "autoattack_accuracy"
    )
    assert "dgad − dgad_nomap, autoattack_accuracy" in text
    assert "with 3 seeds no p below 0.25 is possible" in text


@pytest.mark.parametrize(
    "primary, message",
    [
        ({"method": "nope", "attack": "autoattack"}, "study.primary.method"),
        ({"method": "dgad", "attack": "pgd7"}, "study.primary.attack"),
        ({"method": "adaad", "attack": "clean"}, "with itself"),
        ("dgad", "must be a mapping"),
    ],
)
def test_a_bad_primary_is_refused_naming_the_key(tmp_path, primary, message):
    from dgad_tf.config import ConfigError

    with pytest.raises(ConfigError, match=message):
        load(tmp_path, primary=primary)


def test_no_spread_is_marked_in_the_table(tmp_path):
    study = load(tmp_path)
    rows = synthetic_rows()
    # dgad is exactly 2 points above adaad on clean at every seed
    for row in rows:
        if row["method"] == "dgad":
            ref = next(r for r in rows if r["method"] == "adaad" and r["seed"] == row["seed"])
            row["evaluation"]["clean_accuracy"] = ref["evaluation"]["clean_accuracy"] + 0.02
    result = study_report.summarize(study, rows, None)
    assert result["methods"]["dgad"]["vs_reference"]["clean_accuracy"]["no_spread"]
    text = study_report.summary_markdown(
        result, study_report.metric_names(study.protocol), "autoattack_accuracy"
    )
    line = next(t for t in text.splitlines() if t.startswith("| dgad | clean_accuracy"))
    assert line.rstrip(" |").endswith("no spread")
    other = next(t for t in text.splitlines() if t.startswith("| dgad | pgd20_accuracy"))
    assert "no spread" not in other
    assert "No primary comparison was declared" in text


def test_without_a_primary_every_p_is_said_to_be_one_of_a_family(tmp_path):
    study = load(tmp_path)
    result = study_report.summarize(study, synthetic_rows(), None)
    assert result["primary"] is None
    lines = study_report.summary_markdown(
        result, study_report.metric_names(study.protocol), "autoattack_accuracy"
    ).split("\n")
    note = next(i for i, line in enumerate(lines) if line.startswith("Differences in"))
    sentences = [line for line in lines[note + 4 :] if line]
    assert lines[note + 1 :] == [
        "",
        "No primary comparison was declared (`study.primary`): every p above is one of a "
        "family and only its Holm p should be read as a test.",
        "",
        *sentences,
        "",
    ]
    # one sentence per method other than the reference, on the headline and clean accuracy
    assert len(sentences) == 4
    assert all(s.startswith(("- dgad − adaad, ", "- dgad_nomap − adaad, ")) for s in sentences)


def test_a_primary_comparison_with_no_spread_carries_both_notes(tmp_path):
    study = load(tmp_path, primary={"method": "dgad", "attack": "clean"})
    rows = synthetic_rows()
    for row in rows:
        if row["method"] == "dgad":
            ref = next(r for r in rows if r["method"] == "adaad" and r["seed"] == row["seed"])
            row["evaluation"]["clean_accuracy"] = ref["evaluation"]["clean_accuracy"] + 0.02
    result = study_report.summarize(study, rows, None)
    text = study_report.summary_markdown(
        result, study_report.metric_names(study.protocol), "autoattack_accuracy"
    )
    line = next(t for t in text.splitlines() if t.startswith("| dgad | clean_accuracy"))
    assert line.endswith("| 3 | no spread, primary |")


def test_a_non_finite_accuracy_is_refused_naming_the_cell(tmp_path):
    study = load(tmp_path)
    with pytest.raises(ValueError, match=r"cell dgad seed 1 .*pgd20_accuracy.*non-finite"):
        study_report.summarize(study, synthetic_rows(nan_cell=("dgad", 1)), None)


def test_a_leaky_selection_rule_is_said_at_the_top(tmp_path):
    study = load(tmp_path)
    result = study_report.summarize(study, synthetic_rows(select="best_test"), None)
    text = study_report.summary_markdown(result, ["clean_accuracy"], "clean_accuracy")
    assert text.splitlines()[2].startswith("**Leaky selection")
    assert "adaad seed 0 (train.select=best_test)" in text
    clean = study_report.summary_markdown(
        study_report.summarize(study, synthetic_rows(), None), ["clean_accuracy"], "x"
    )
    assert "Leaky" not in clean


def test_the_seeds_needed_line_solves_the_t_interval(summary):
    study, _, result = summary
    primary = result["primary"]
    for width, needed in primary["seeds_needed"].items():
        half = float(width) / 100

        def t_half(s):
            return scipy_stats.t.ppf(0.975, s - 1) * primary["std"] / math.sqrt(s)

        assert t_half(needed) <= half < t_half(needed - 1) or needed == 2
    text = study_report.summary_markdown(
        result, study_report.metric_names(study.protocol), "autoattack_accuracy"
    )
    assert f"±1 points: {primary['seeds_needed']['1']}" in text


def test_summary_json_is_json(summary):
    json.dumps(summary[2])
    assert stats.SPREAD_TOLERANCE > 0


def test_results_csv_holds_every_cell_with_its_selection_rule_and_epoch(tmp_path):
    study = load(tmp_path)
    rows = synthetic_rows()
    rows[0]["select"], rows[0]["selected_epoch"] = "best_val", 7
    del rows[1]["select"], rows[1]["selected_epoch"]  # a row from before the columns existed
    text = study_report.results_csv(rows, study.protocol)
    assert "\r" not in text and text.endswith("\n")
    header, *lines = text.splitlines()
    assert header == (
        "method,seed,clean_accuracy,pgd20_accuracy,autoattack_accuracy,"
        "epochs,select,selected_epoch,seconds,run_dir"
    )
    assert len(lines) == len(rows)
    for line, row in zip(lines, rows):
        attacks = row["evaluation"]["attacks"]
        assert line.split(",") == [
            row["method"],
            str(row["seed"]),
            "%.4f" % row["evaluation"]["clean_accuracy"],
            "%.4f" % attacks["pgd20"]["robust_accuracy"],
            "%.4f" % attacks["autoattack"]["robust_accuracy"],
            "2",
            str(row.get("select", "")),
            str(row.get("selected_epoch", "")),
            "10",
            row["run_dir"],
        ]


def points(value):
    return f"{100 * value:+.2f}"


def bracket(entry):
    return f"[{points(entry['low'])}, {points(entry['high'])}]"


def primary_section(study, result):
    text = study_report.summary_markdown(
        result, study_report.metric_names(study.protocol), "autoattack_accuracy"
    )
    lines = text.splitlines()
    return lines[lines.index("## Primary comparison (declared in `study.primary`)") :]


def test_the_primary_section_states_every_statistic_of_the_declared_pair(summary):
    study, rows, result = summary
    a, b = correct_of(rows, "dgad", "autoattack"), correct_of(rows, "adaad", "autoattack")
    d = a.mean(1) - b.mean(1)
    std = float(np.std(d, ddof=1))
    half = scipy_stats.t.ppf(0.975, 2) * std / math.sqrt(3)
    flips = [
        abs(np.dot(s, d)) >= abs(d.sum()) - 1e-12 for s in itertools.product((1, -1), repeat=3)
    ]

    def needed(width):
        return next(
            s
            for s in range(2, 1001)
            if scipy_stats.t.ppf(0.975, s - 1) * std / math.sqrt(s) <= width
        )

    primary = result["primary"]
    expected = [
        "## Primary comparison (declared in `study.primary`)",
        "",
        f"dgad − adaad, autoattack_accuracy: {points(d.mean())} points over seeds [0, 1, 2]",
        "",
        f"- 95% t interval over seeds: [{points(d.mean() - half)}, {points(d.mean() + half)}]",
        f"- 95% seeds × images bootstrap interval: {bracket(primary['seeds_x_images'])}",
        f"- exact sign-flip test over seeds: p = {np.mean(flips):.3g} (with 3 seeds no p below "
        "0.25 is possible)",
    ]
    for k, seed in enumerate(SEEDS):
        a_only, b_only = int(np.sum(a[k] & ~b[k])), int(np.sum(~a[k] & b[k]))
        p = scipy_stats.binomtest(a_only, a_only + b_only, 0.5).pvalue
        expected.append(
            f"- seed {seed}: McNemar exact p = {p:.3g} ({a_only} images only dgad gets right, "
            f"{b_only} only adaad); 95% image bootstrap "
            f"{bracket(primary['per_seed'][k]['image_bootstrap'])}"
        )
    expected += [
        "",
        "Seeds needed for a 95% t interval of half-width ±X points at this spread (sd of the "
        f"per-seed differences {100 * std:.2f} points): ±1 points: {needed(0.01)}, "
        f"±2 points: {needed(0.02)}.",
        "",
    ]
    assert primary_section(study, result)[: len(expected)] == expected


def set_autoattack(rows, method, values):
    for row in rows:
        if row["method"] == method:
            row["evaluation"]["attacks"]["autoattack"]["robust_accuracy"] = values[row["seed"]]


@pytest.mark.parametrize(
    "dgad, first_line_ends, seeds_line",
    [
        # dgad 2 points above adaad at every seed
        (
            None,
            "points over seeds [0, 1, 2] (no spread: every seed pair differs by the same amount)",
            "Seeds needed: these seeds show no spread, so it cannot be estimated from them "
            "(add seeds first).",
        ),
        # a spread so wide that no study up to 1000 seeds reaches +-2 points
        (
            [0.9, 0.1, 0.8],
            "points over seeds [0, 1, 2]",
            "±1 points: more than 1000, ±2 points: more than 1000.",
        ),
    ],
)
def test_the_primary_section_says_when_the_spread_cannot_size_a_study(
    tmp_path, dgad, first_line_ends, seeds_line
):
    study = load(tmp_path, primary={"method": "dgad", "attack": "autoattack"})
    rows = synthetic_rows()
    adaad = {r["seed"]: r for r in rows if r["method"] == "adaad"}
    reference = {
        s: r["evaluation"]["attacks"]["autoattack"]["robust_accuracy"] for s, r in adaad.items()
    }
    set_autoattack(
        rows, "dgad", {s: v + 0.02 for s, v in reference.items()} if dgad is None else dgad
    )
    lines = primary_section(study, study_report.summarize(study, rows, None))
    assert lines[2].startswith("dgad − adaad, autoattack_accuracy: ")
    assert lines[2].endswith(first_line_ends)
    seeds = next(line for line in lines if line.startswith("Seeds needed"))
    assert seeds.endswith(seeds_line)


def test_the_primary_section_with_one_seed_pair_or_none(tmp_path):
    study = load(tmp_path, primary={"method": "dgad", "attack": "autoattack"})
    rows = synthetic_rows()
    one = [r for r in rows if r["seed"] == 1]
    lines = primary_section(study, study_report.summarize(study, one, None))
    assert lines[4] == "- 95% t interval over seeds: –"
    assert lines[5] == "- 95% seeds × images bootstrap interval: " + bracket(
        stats.hierarchical_bootstrap(
            correct_of(one, "dgad", "autoattack"), correct_of(one, "adaad", "autoattack")
        ).to_dict()
    )
    assert lines[6].endswith("(with 1 seeds no p below 1 is possible)")
    assert lines[7].startswith("- seed 1: McNemar exact p = ")
    assert lines[8:11] == ["", "One seed pair: no spread to size a study from.", ""]
    only_reference = [r for r in rows if r["method"] == "adaad"]
    lines = primary_section(study, study_report.summarize(study, only_reference, None))
    assert lines[:4] == [
        "## Primary comparison (declared in `study.primary`)",
        "",
        "dgad − adaad, autoattack_accuracy: no seed has both cells yet.",
        "",
    ]


def test_the_method_table_and_teacher_line_hold_each_mean_and_sample_std(tmp_path):
    study = load(tmp_path)
    rows = synthetic_rows()
    teacher = {
        "path": "teacher.keras",
        "clean_accuracy": 0.8512,
        "attacks": {"pgd20": {"robust_accuracy": 0.5}, "autoattack": {"robust_accuracy": 0.4}},
    }
    result = study_report.summarize(study, rows, teacher)
    metrics = study_report.metric_names(study.protocol)
    lines = study_report.summary_markdown(result, metrics, "autoattack_accuracy").splitlines()
    assert (
        "Teacher (teacher.keras): clean_accuracy 85.12, pgd20_accuracy 50.00, "
        "autoattack_accuracy 40.00"
    ) in lines
    header = lines.index(
        "| method | seeds | clean_accuracy | pgd20_accuracy | autoattack_accuracy |"
    )
    for k, method in enumerate(RATES):
        cells = []
        for attack in ("clean", "pgd20", "autoattack"):
            accuracy = correct_of(rows, method, attack).mean(axis=1)
            cells.append(f"{100 * accuracy.mean():.2f} ± {100 * np.std(accuracy, ddof=1):.2f}")
        assert lines[header + 2 + k] == f"| {method} | 3 | " + " | ".join(cells) + " |"
    # one seed: a mean and no spread
    one = study_report.summarize(study, [r for r in rows if r["seed"] == 2], None)
    lines = study_report.summary_markdown(one, metrics, "autoattack_accuracy").splitlines()
    clean = correct_of([r for r in rows if r["seed"] == 2], "dgad", "clean").mean()
    assert any(line.startswith(f"| dgad | 1 | {100 * clean:.2f} | ") for line in lines)


def test_a_primary_without_per_image_correctness_shows_the_t_interval_only(tmp_path):
    study = load(tmp_path, primary={"method": "dgad", "attack": "autoattack"})
    rows = synthetic_rows()
    for row in rows:
        del row["correct"]  # a study from before per-image correctness was kept
    result = study_report.summarize(study, rows, None)
    lines = primary_section(study, result)
    assert lines[5] == "- 95% seeds × images bootstrap interval: –"
    assert lines[6].startswith("- exact sign-flip test over seeds: p = ")
    assert lines[7] == ""  # no per-seed McNemar lines
    assert lines[8].startswith("Seeds needed for a 95% t interval")


def test_the_paired_table_holds_every_statistic_of_every_comparison(summary):
    study, rows, result = summary
    metrics = study_report.metric_names(study.protocol)
    lines = study_report.summary_markdown(result, metrics, "autoattack_accuracy").splitlines()
    assert lines[:2] == [f"# Study {study.folder}", ""]
    start = lines.index("## Paired differences to adaad (same seeds)")
    assert lines[start + 2 : start + 4] == [
        "| method − adaad | metric | mean | 95% t interval | 95% seeds × images | sign-flip p | "
        "Holm p | McNemar p per seed | seeds | note |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    table = lines[start + 4 : start + 10]
    k = 0
    for name in ("dgad", "dgad_nomap"):
        for attack in ("clean", "pgd20", "autoattack"):
            metric = f"{attack}_accuracy"
            a, b = correct_of(rows, name, attack), correct_of(rows, "adaad", attack)
            d = a.mean(1) - b.mean(1)
            half = scipy_stats.t.ppf(0.975, 2) * np.std(d, ddof=1) / math.sqrt(3)
            signs = itertools.product((1, -1), repeat=3)
            flip = np.mean([abs(np.dot(s, d)) >= abs(d.sum()) - 1e-12 for s in signs])
            mcnemar = ", ".join(
                format(
                    scipy_stats.binomtest(int(np.sum(x & ~y)), int(np.sum(x != y)), 0.5).pvalue,
                    ".3g",
                )
                for x, y in zip(a, b)
            )
            paired = result["methods"][name]["vs_reference"][metric]
            primary = (name, metric) == ("dgad", "autoattack_accuracy")
            holm = "–" if primary else format(paired["p_holm"], ".3g")
            assert table[k] == (
                f"| {name} | {metric} | {points(d.mean())} | "
                f"[{points(d.mean() - half)}, {points(d.mean() + half)}] | "
                f"{bracket(paired['seeds_x_images'])} | {flip:.3g} | {holm} | {mcnemar} | 3 | "
                f"{'primary' if primary else ''} |"
            )
            k += 1


def test_a_method_without_cells_and_a_leaky_cell_are_shown_as_such(tmp_path):
    study = load(tmp_path)
    rows = [r for r in synthetic_rows() if r["method"] != "dgad_nomap"]
    rows[0]["select"] = "best_test"
    rows[4]["select"] = "rslad_pgd20"
    result = study_report.summarize(study, rows, None)
    lines = study_report.summary_markdown(
        result, study_report.metric_names(study.protocol), "autoattack_accuracy"
    ).splitlines()
    assert lines[:4] == [
        f"# Study {study.folder}",
        "",
        "**Leaky selection: these cells chose their checkpoint on the same test images they "
        "are scored on, so their accuracies are optimistic and not a held-out result: "
        f"{rows[0]['method']} seed {rows[0]['seed']} (train.select=best_test); "
        f"{rows[4]['method']} seed {rows[4]['seed']} (train.select=rslad_pgd20).**",
        "",
    ]
    assert "| dgad_nomap | 0 | – | – | – |" in lines


def test_the_command_and_protocol_lines_say_how_the_numbers_were_made(tmp_path):
    study = load(tmp_path)
    rows = synthetic_rows()
    command = "python -m dgad_tf.compare study.yaml"
    metrics = study_report.metric_names(study.protocol)
    for given, first in ((command, f"Command: `{command}`"), ("", "")):
        result = study_report.summarize(study, rows[:7], None, command=given)
        lines = study_report.summary_markdown(result, metrics, "autoattack_accuracy").splitlines()
        assert lines[1:6] == [
            "",
            first,
            "",
            f"Protocol: clean, pgd20, autoattack at eps {8 / 255:.6g} on the first 600 test "
            f"images (the same images for every cell: sha256 {'ab' * 32}), attack seed 0. "
            "Cells done: 7 of 9. Accuracies in %.",
            "",
        ]


def test_write_outputs_writes_the_tables_of_the_command_teacher_and_headline(tmp_path):
    """results.csv, summary.json (indented) and summary.md of the rows given; no figures asked."""
    study = load(tmp_path)
    rows = synthetic_rows()
    teacher = {
        "path": "teacher.keras",
        "clean_accuracy": 0.8512,
        "attacks": {"pgd20": {"robust_accuracy": 0.5}, "autoattack": {"robust_accuracy": 0.4}},
    }
    out = tmp_path / "out"
    study_report.write_outputs(study, rows, teacher, command="compare s.yaml", figures=False)
    assert sorted(p.name for p in out.iterdir()) == ["results.csv", "summary.json", "summary.md"]
    lines = (out / study_report.RESULTS_FILE).read_text().splitlines()
    assert len(lines) == 1 + len(rows) and lines[0].startswith("method,seed,clean_accuracy,")
    text = (out / study_report.SUMMARY_JSON).read_text()
    assert text.startswith('{\n  "command": "compare s.yaml",\n  "folder": ')
    summary = json.loads(text)
    assert summary["teacher"] == {
        "path": "teacher.keras",
        "clean_accuracy": 0.8512,
        "pgd20_accuracy": 0.5,
        "autoattack_accuracy": 0.4,
    }
    md = (out / study_report.SUMMARY_MD).read_text().splitlines()
    assert "Command: `compare s.yaml`" in md
    assert (
        "Teacher (teacher.keras): clean_accuracy 85.12, pgd20_accuracy 50.00, "
        "autoattack_accuracy 40.00"
    ) in md
    # one sentence per comparison on the headline (AutoAttack, the strongest attack) and clean
    sentences = [line for line in md if line.startswith("- dgad")]
    assert [s.split(":")[0] for s in sentences] == [
        f"- {name} − adaad, {metric}"
        for name in ("dgad", "dgad_nomap")
        for metric in ("clean_accuracy", "autoattack_accuracy")
    ]
    # without a command there is no command line
    study_report.write_outputs(study, rows, None, figures=False)
    md = (out / study_report.SUMMARY_MD).read_text()
    assert "Command:" not in md and "Teacher (" not in md


def test_the_note_under_the_paired_table_says_how_each_column_is_computed(summary):
    study, _, result = summary
    lines = study_report.summary_markdown(
        result, study_report.metric_names(study.protocol), "autoattack_accuracy"
    ).splitlines()
    note = next(line for line in lines if line.startswith("Differences in percentage points."))
    # 3 seeds: 2 of the 2**3 sign patterns always count; 2 methods x 3 metrics less the primary
    assert note == (
        "Differences in percentage points. t interval: mean ± t(0.975, n−1) · sd / √n over the "
        "per-seed differences. Seeds × images: percentile bootstrap drawing seeds and test "
        "images independently (10,000 resamples); with few seeds its seed part is too narrow "
        "(a bootstrap of S values keeps (S−1)/S of their variance, with no t correction), so "
        "read it beside the t interval. Sign-flip: exact randomization test over seeds; with 3 "
        "seeds no p below 0.25 is possible, so fewer than 6 seeds cannot reach p < 0.05. Holm "
        "p: adjusted over the 5 comparisons other than the primary one. McNemar: exact, per "
        'seed pair, on the same test images. "no spread": every seed pair differs by the same '
        "amount, so the t interval has width 0 — no seed-to-seed variation on these seeds, not "
        "a certain difference."
    )


def test_per_image_statistics_need_both_methods_correctness(tmp_path):
    """A reference scored before per-image correctness was kept: the t interval only, no crash."""
    study = load(tmp_path)
    rows = synthetic_rows()
    for row in rows:
        if row["method"] == "adaad":
            del row["correct"]
    paired = study_report.summarize(study, rows, None)["methods"]["dgad"]["vs_reference"]
    d = correct_of(rows, "dgad", "pgd20").mean(1) - np.array(
        [r["evaluation"]["attacks"]["pgd20"]["robust_accuracy"] for r in rows[::3]]
    )
    assert paired["pgd20_accuracy"]["mean"] == pytest.approx(d.mean())
    assert "per_seed" not in paired["pgd20_accuracy"]
    assert "seeds_x_images" not in paired["pgd20_accuracy"]


@pytest.mark.parametrize(
    "data, label",
    [
        ({"source": "digits"}, "digits"),
        ({"source": "npz", "path": "../shared/data/cifar10"}, "cifar10 (npz)"),
        ({"source": "npz", "path": "data/svhn_train.npz"}, "svhn_train (npz)"),
        ({"source": "folder", "path": "images/flowers/"}, "flowers (folder)"),
        ({"source": "tfds", "name": "cifar100"}, "cifar100 (tfds)"),
        # A file named after its format says nothing more than the format.
        ({"source": "npz", "path": "data/npz.npz"}, "npz"),
    ],
)
def test_the_summary_names_the_dataset_not_only_its_file_format(tmp_path, data, label):
    # The figures' setting line reads summary["data"]: "npz" alone would not say which dataset.
    from dgad_tf import study_figures
    from dgad_tf.config import DataConfig

    study = load(tmp_path)
    base = dataclasses.replace(study.base, data=DataConfig(**data))
    study = dataclasses.replace(study, base=base)
    result = study_report.summarize(study, synthetic_rows(), None)
    assert result["data"] == label
    assert study_figures.setting_line(result).startswith(label + "; ")

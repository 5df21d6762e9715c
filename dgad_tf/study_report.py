"""What a study writes from its cells: results.csv, summary.md, summary.json and the figures.

    results.csv      one row per method x seed: method, seed, clean_accuracy, one
                     <attack>_accuracy per attack of the protocol, epochs, the selection rule
                     (`train.select`) and the epoch of the checkpoint it selected, seconds,
                     run_dir
    summary.json     per method: mean and std over seeds of every accuracy; the paired
                     difference to the reference method over the same seeds, with its 95% t
                     interval, `no_spread`, the exact sign-flip p over seeds (and the smallest
                     p the seed count allows), its Holm-adjusted p, and, from the per-image
                     correctness, McNemar's exact test and an image bootstrap per seed pair and
                     the seeds x images bootstrap interval; the seeds needed for a +-1 and +-2
                     point interval at the observed spread; `study.primary` (the one declared
                     comparison, not Holm-adjusted); the teacher under the same protocol; the
                     cells whose checkpoint was selected on the test images (leaky)
    summary.md       the same numbers as tables, and one plain sentence per comparison
                     (rendered by `dgad_tf.study_markdown`)
    *.png, *.pdf     the figures, each as PNG and as vector PDF: see `dgad_tf.study_figures`

The figures need matplotlib (`pip install "dgad_tf[plot]"`); without it the tables are written
and the log says why the figures are missing. Every file is rewritten atomically after each
cell, so a study in progress shows the cells done so far.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import pathlib

from dgad_tf import rundir, stats, study_figures
from dgad_tf.selection import is_leaky
from dgad_tf.study_markdown import summary_markdown

log = logging.getLogger(__name__)

RESULTS_FILE = "results.csv"
SUMMARY_MD = "summary.md"
SUMMARY_JSON = "summary.json"
SCATTER_FIGURE = study_figures.SCATTER_FIGURE
CURVE_FIGURE = study_figures.CURVE_FIGURE
PLOT_EXTRA_HINT = 'pip install "dgad_tf[plot]"'
# The "seeds needed for +-X points" line: X in accuracy units.
HALF_WIDTHS = (0.01, 0.02)


def metric_names(protocol) -> list[str]:
    """The accuracy columns of the protocol: clean_accuracy, then one per attack."""
    return ["clean_accuracy"] + [f"{a}_accuracy" for a in protocol.robust_attacks]


def strongest_metric(protocol) -> str:
    """The accuracy the figure and the headline sentence use: AutoAttack when measured."""
    for name in ("autoattack", "autoattack_custom"):
        if name in protocol.robust_attacks:
            return f"{name}_accuracy"
    return metric_names(protocol)[-1]


def row_metrics(evaluation: dict, protocol) -> dict:
    values = {"clean_accuracy": float(evaluation["clean_accuracy"])}
    for name in protocol.robust_attacks:
        values[f"{name}_accuracy"] = float(evaluation["attacks"][name]["robust_accuracy"])
    return values


def results_csv(rows: list, protocol) -> str:
    columns = [
        "method",
        "seed",
        *metric_names(protocol),
        "epochs",
        "select",
        "selected_epoch",
        "seconds",
        "run_dir",
    ]
    out = io.StringIO()
    writer = csv.DictWriter(out, columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        metrics = row_metrics(row["evaluation"], protocol)
        writer.writerow(
            {
                "method": row["method"],
                "seed": row["seed"],
                **{k: f"{v:.4f}" for k, v in metrics.items()},
                "epochs": row["epochs"],
                "select": row.get("select", ""),
                "selected_epoch": row.get("selected_epoch", ""),
                "seconds": f"{row['seconds']:.0f}",
                "run_dir": row["run_dir"],
            }
        )
    return out.getvalue()


def _checked_metrics(row: dict, protocol) -> dict:
    values = row_metrics(row["evaluation"], protocol)
    for metric, value in values.items():
        stats.check_finite(
            [value], f"cell {row['method']} seed {row['seed']} ({row['run_dir']}): {metric}"
        )
    return values


def compare_pair(a_rows: dict, b_rows: dict, metric: str) -> dict:
    """Every statistic of method a - method b on `metric` over the seeds both have.

    Args:
        a_rows: {seed: row} of method a (rows as `run_study` makes them).
        b_rows: {seed: row} of method b.
        metric: an accuracy column, such as "autoattack_accuracy".
    """
    seeds = sorted(set(a_rows) & set(b_rows))
    a = [a_rows[s]["metrics"][metric] for s in seeds]
    b = [b_rows[s]["metrics"][metric] for s in seeds]
    result = {**stats.paired_difference(a, b).to_dict(), "seeds": seeds}
    result["sign_flip"] = stats.sign_flip_test([x - y for x, y in zip(a, b)]).to_dict()
    result["seeds_needed"] = {
        f"{100 * w:g}": (
            stats.seeds_needed(result["std"], w)
            if result["std"] is not None and not result["no_spread"]
            else None
        )
        for w in HALF_WIDTHS
    }
    attack = metric.removesuffix("_accuracy")
    if all((a_rows[s].get("correct") or {}).get(attack) is not None for s in seeds) and all(
        (b_rows[s].get("correct") or {}).get(attack) is not None for s in seeds
    ):
        a_correct = [a_rows[s]["correct"][attack] for s in seeds]
        b_correct = [b_rows[s]["correct"][attack] for s in seeds]
        result["per_seed"] = [
            {
                "seed": s,
                "mcnemar": stats.mcnemar_exact(x, y).to_dict(),
                "image_bootstrap": stats.bootstrap_images(x, y).to_dict(),
            }
            for s, x, y in zip(seeds, a_correct, b_correct)
        ]
        result["seeds_x_images"] = stats.hierarchical_bootstrap(a_correct, b_correct).to_dict()
    return result


def dataset_label(data) -> str:
    """The data a figure names: the dataset, then its source when that is a file format.

    A TFDS dataset is its `name` (`cifar10 (tfds)`); an `npz` file or image folder is its path's
    last part without extension (`../shared/data/cifar10` -> `cifar10 (npz)`); a built-in source
    is its name (`digits`).
    """
    if data.name:
        return f"{data.name} ({data.source})"
    if data.path:
        stem = pathlib.PurePath(str(data.path)).stem
        if stem and stem != data.source:
            return f"{stem} ({data.source})"
    return data.source


def summarize(study, rows: list, teacher: dict | None, *, command: str = "") -> dict:
    """The numbers of summary.json: per method spreads, paired differences to the reference.

    Raises:
        ValueError: a cell's accuracy is not finite (the error names the cell).
    """
    protocol = study.protocol
    metrics = metric_names(protocol)
    by_method = {e.name: {} for e in study.methods}
    cells = {e.name: {} for e in study.methods}
    for row in rows:
        by_method[row["method"]][row["seed"]] = _checked_metrics(row, protocol)
        cells[row["method"]][row["seed"]] = {
            "metrics": by_method[row["method"]][row["seed"]],
            "correct": row.get("correct"),
        }
    reference = by_method[study.reference]
    methods = {}
    for entry in study.methods:
        seeds = sorted(by_method[entry.name])
        values = by_method[entry.name]
        summary = {
            "method": entry.method,
            "overrides": list(entry.overrides),
            "seeds": seeds,
            "metrics": {},
        }
        for metric in metrics:
            if seeds:
                summary["metrics"][metric] = {
                    **stats.spread([values[s][metric] for s in seeds]).to_dict(),
                    "values": [values[s][metric] for s in seeds],
                }
        if entry.name != study.reference and any(s in reference for s in seeds):
            summary["vs_reference"] = {
                metric: compare_pair(cells[entry.name], cells[study.reference], metric)
                for metric in metrics
            }
        methods[entry.name] = summary
    declared = getattr(study, "primary", None)
    primary = None
    if declared:
        metric = f"{declared['attack']}_accuracy"
        primary = {**declared, "metric": metric}
        if set(cells[declared["method"]]) & set(cells[declared["versus"]]):
            primary.update(
                compare_pair(cells[declared["method"]], cells[declared["versus"]], metric)
            )
    # Holm over every shown comparison but the declared one.
    family = [
        (name, metric)
        for name, entry in methods.items()
        for metric in entry.get("vs_reference", {})
        if not (
            declared
            and declared["versus"] == study.reference
            and (name, metric) == (declared["method"], f"{declared['attack']}_accuracy")
        )
    ]
    adjusted = stats.holm(
        [methods[name]["vs_reference"][metric]["sign_flip"]["p_value"] for name, metric in family]
    )
    for (name, metric), p_holm in zip(family, adjusted):
        methods[name]["vs_reference"][metric]["p_holm"] = p_holm
    images = sorted({row["evaluation"].get("images_sha256") for row in rows} - {None})
    leaky = [
        f"{row['method']} seed {row['seed']} (train.select={row['select']})"
        for row in rows
        if is_leaky(row.get("select"))
    ]
    train = study.base.train
    return {
        "command": command,
        "folder": str(study.folder),
        "data": dataset_label(study.base.data),
        # The validation metric of the curves, as the distiller's test_step computes it.
        "validation": {
            "steps": train.val_robust_steps,
            "n": train.val_robust_n,
            "eps": study.base.attack.eps,
        },
        "reference": study.reference,
        "seeds": list(study.seeds),
        "protocol": {
            "attacks": list(protocol.attacks),
            "n": protocol.n,
            "eps": protocol.eps,
            "seed": protocol.seed,
            "images_sha256": images[0] if len(images) == 1 else images,
        },
        "cells_done": len(rows),
        "cells_total": len(study.methods) * len(study.seeds),
        "teacher": None
        if teacher is None
        else {"path": teacher.get("path"), **row_metrics(teacher, protocol)},
        "methods": methods,
        "primary": primary,
        "holm_family": len(family),
        "leaky_selection": leaky,
    }


def write_outputs(
    study, rows: list, teacher: dict | None, *, command: str = "", figures: bool = True
) -> None:
    """Write results.csv, summary.json, summary.md and (with matplotlib) the figures.

    Drawing the figures takes most of the time of a write (seconds, against milliseconds for
    the tables), so a caller that only needs the numbers (a notebook re-summarising a study's
    rows, a test of the statistics) can leave them out; figure files already in the folder
    are then left as they were.

    Args:
        study: the loaded study (`dgad_tf.study.load_study`); its folder receives the files.
        rows: one dict per finished cell, as `dgad_tf.study.run_study` keeps them.
        teacher: the teacher's evaluation under the study's protocol, or None.
        command: the command line that made the numbers, quoted in summary.md. Defaults to "".
        figures: draw the figures as well (needs matplotlib). Defaults to True.
    """
    folder = pathlib.Path(study.folder)
    metrics = metric_names(study.protocol)
    headline = strongest_metric(study.protocol)
    summary = summarize(study, rows, teacher, command=command)
    rundir.atomic_write_text(folder / RESULTS_FILE, results_csv(rows, study.protocol))
    rundir.atomic_write_text(folder / SUMMARY_JSON, json.dumps(summary, indent=2))
    rundir.atomic_write_text(folder / SUMMARY_MD, summary_markdown(summary, metrics, headline))
    if figures:
        write_figures(folder, summary, rows, headline)


def write_figures(folder: pathlib.Path, summary: dict, rows: list, headline: str) -> list:
    """Draw the figures (PNG and PDF); returns the files written ([] without matplotlib)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        log.warning(
            "matplotlib is not installed, so the study's figures are not drawn (the tables "
            "are written); %s adds it",
            PLOT_EXTRA_HINT,
        )
        return []
    return study_figures.draw(pathlib.Path(folder), summary, rows, headline)

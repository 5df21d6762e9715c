"""What a study writes from its cells: results.csv, summary.md, summary.json and the figures.

    results.csv      one row per method x seed: method, seed, clean_accuracy, one
                     <attack>_accuracy per attack of the protocol, epochs, seconds, run_dir
    summary.json     per method: mean and std over seeds of every accuracy; the paired
                     difference to the reference method over the same seeds, with its 95% t
                     interval; the teacher under the same protocol
    summary.md       the same numbers as tables, and one plain sentence per comparison
    clean_vs_robust.png        clean vs the strongest attack's accuracy per method: every seed
                               a point, the mean with +-1 std error bars
    val_robust_accuracy.png    validation robust accuracy per epoch, per method (mean over seeds,
                               every seed a thin line)

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

from dgad_tf import rundir, stats

log = logging.getLogger(__name__)

RESULTS_FILE = "results.csv"
SUMMARY_MD = "summary.md"
SUMMARY_JSON = "summary.json"
SCATTER_FIGURE = "clean_vs_robust.png"
CURVE_FIGURE = "val_robust_accuracy.png"
PLOT_EXTRA_HINT = 'pip install "dgad_tf[plot]"'


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
    columns = ["method", "seed", *metric_names(protocol), "epochs", "seconds", "run_dir"]
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
                "seconds": f"{row['seconds']:.0f}",
                "run_dir": row["run_dir"],
            }
        )
    return out.getvalue()


def summarize(study, rows: list, teacher: dict | None, *, command: str = "") -> dict:
    """The numbers of summary.json: per method spreads, paired differences to the reference."""
    protocol = study.protocol
    metrics = metric_names(protocol)
    by_method = {e.name: {} for e in study.methods}
    for row in rows:
        by_method[row["method"]][row["seed"]] = row_metrics(row["evaluation"], protocol)
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
        if entry.name != study.reference:
            paired = [s for s in seeds if s in reference]
            summary["vs_reference"] = {
                metric: {
                    **stats.paired_difference(
                        [values[s][metric] for s in paired],
                        [reference[s][metric] for s in paired],
                    ).to_dict(),
                    "seeds": paired,
                }
                for metric in metrics
                if paired
            }
        methods[entry.name] = summary
    images = sorted({row["evaluation"].get("images_sha256") for row in rows} - {None})
    return {
        "command": command,
        "folder": str(study.folder),
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
    }


def _pct(value: float) -> str:
    return f"{100 * value:.2f}"


def _mean_std(entry) -> str:
    if entry is None:
        return "–"
    if entry["std"] is None:
        return f"{_pct(entry['mean'])}"
    return f"{_pct(entry['mean'])} ± {_pct(entry['std'])}"


def _signed_points(value: float) -> str:
    return f"{100 * value:+.2f}"


def comparison_sentence(name: str, reference: str, metric: str, paired: dict) -> str:
    """One plain sentence on a paired difference, whichever way its interval falls."""
    seeds = paired["n"]
    if paired["low"] is None:
        return (
            f"{name} − {reference}, {metric}: {_signed_points(paired['mean'])} points on "
            f"{seeds} seed; one pair gives no interval, so nothing can be said about a "
            "difference."
        )
    interval = f"[{_signed_points(paired['low'])}, {_signed_points(paired['high'])}]"
    if paired["no_spread"]:
        return (
            f"{name} − {reference}, {metric}: {_signed_points(paired['mean'])} points on each "
            f"of the {seeds} seeds; with no spread between them the 95% interval {interval} "
            "has width 0, which shows no seed-to-seed variation, not a certain difference: "
            "more seeds are needed to say more."
        )
    if paired["includes_zero"]:
        return (
            f"{name} − {reference}, {metric}: {_signed_points(paired['mean'])} points, 95% "
            f"interval {interval} includes 0: these {seeds} seeds do not show a difference."
        )
    direction = "higher" if paired["mean"] > 0 else "lower"
    return (
        f"{name} − {reference}, {metric}: {_signed_points(paired['mean'])} points, 95% "
        f"interval {interval} excludes 0: over these {seeds} seeds {name} is {direction} "
        f"than {reference}."
    )


def summary_markdown(summary: dict, metrics: list[str], headline: str) -> str:
    protocol = summary["protocol"]
    lines = [
        f"# Study {summary['folder']}",
        "",
        f"Command: `{summary['command']}`" if summary["command"] else "",
        "",
        f"Protocol: {', '.join(protocol['attacks'])} at eps {protocol['eps']:.6g} on the first "
        f"{protocol['n']} test images (the same images for every cell: sha256 "
        f"{protocol['images_sha256'] if isinstance(protocol['images_sha256'], str) else '?'}"
        f"), attack seed {protocol['seed']}. Cells done: {summary['cells_done']} of "
        f"{summary['cells_total']}. Accuracies in %.",
        "",
    ]
    if summary["teacher"] is not None:
        teacher = summary["teacher"]
        lines += [
            f"Teacher ({teacher['path']}): "
            + ", ".join(f"{m} {_pct(teacher[m])}" for m in metrics),
            "",
        ]
    lines += [
        "| method | seeds | " + " | ".join(metrics) + " |",
        "|---|---|" + "---|" * len(metrics),
    ]
    for name, entry in summary["methods"].items():
        lines.append(
            f"| {name} | {len(entry['seeds'])} | "
            + " | ".join(_mean_std(entry["metrics"].get(m)) for m in metrics)
            + " |"
        )
    lines += [
        "",
        "mean ± sample standard deviation over seeds.",
        "",
        f"## Paired differences to {summary['reference']} (same seeds)",
        "",
        "| method − " + summary["reference"] + " | metric | mean | 95% interval | seeds |",
        "|---|---|---|---|---|",
    ]
    sentences = []
    for name, entry in summary["methods"].items():
        for metric, paired in entry.get("vs_reference", {}).items():
            interval = (
                "–"
                if paired["low"] is None
                else f"[{_signed_points(paired['low'])}, {_signed_points(paired['high'])}]"
            )
            lines.append(
                f"| {name} | {metric} | {_signed_points(paired['mean'])} | {interval} | "
                f"{paired['n']} |"
            )
            if metric in (headline, "clean_accuracy"):
                sentences.append(comparison_sentence(name, summary["reference"], metric, paired))
    lines += [
        "",
        "Differences in percentage points; the interval is mean ± t(0.975, n−1) · sd / √n "
        "over the per-seed differences.",
        "",
        *[f"- {s}" for s in sentences],
        "",
    ]
    return "\n".join(lines)


def write_outputs(study, rows: list, teacher: dict | None, *, command: str = "") -> None:
    """Write results.csv, summary.json, summary.md and (with matplotlib) the figures."""
    folder = pathlib.Path(study.folder)
    metrics = metric_names(study.protocol)
    headline = strongest_metric(study.protocol)
    summary = summarize(study, rows, teacher, command=command)
    rundir.atomic_write_text(folder / RESULTS_FILE, results_csv(rows, study.protocol))
    rundir.atomic_write_text(folder / SUMMARY_JSON, json.dumps(summary, indent=2))
    rundir.atomic_write_text(folder / SUMMARY_MD, summary_markdown(summary, metrics, headline))
    write_figures(folder, summary, rows, headline)


def write_figures(folder: pathlib.Path, summary: dict, rows: list, headline: str) -> list:
    """Draw the two figures; returns the files written ([] without matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import MaxNLocator
    except ImportError:
        log.warning(
            "matplotlib is not installed, so the study's figures are not drawn (the tables "
            "are written); %s adds it",
            PLOT_EXTRA_HINT,
        )
        return []
    written = []
    figure, axes = plt.subplots(figsize=(6, 4.5))
    for index, (name, entry) in enumerate(summary["methods"].items()):
        metrics = entry["metrics"]
        if "clean_accuracy" not in metrics or headline not in metrics:
            continue
        color = f"C{index % 10}"
        clean, robust = metrics["clean_accuracy"], metrics[headline]
        axes.scatter(
            [100 * v for v in clean["values"]],
            [100 * v for v in robust["values"]],
            color=color,
            alpha=0.5,
            s=18,
        )
        axes.errorbar(
            100 * clean["mean"],
            100 * robust["mean"],
            xerr=None if clean["std"] is None else 100 * clean["std"],
            yerr=None if robust["std"] is None else 100 * robust["std"],
            color=color,
            marker="o",
            capsize=3,
            label=name,
        )
    teacher = summary.get("teacher")
    if teacher is not None and headline in teacher:
        axes.scatter(
            [100 * teacher["clean_accuracy"]],
            [100 * teacher[headline]],
            marker="*",
            s=120,
            color="black",
            label="teacher",
        )
    axes.set_xlabel("clean accuracy (%)")
    axes.set_ylabel(f"{headline.removesuffix('_accuracy')} accuracy (%)")
    axes.set_title(
        f"per seed (points) and mean ± std; first {summary['protocol']['n']} test images"
    )
    axes.legend(fontsize=8)
    axes.grid(alpha=0.3)
    figure.tight_layout()
    written.append(_save(figure, folder / SCATTER_FIGURE))
    plt.close(figure)

    figure, axes = plt.subplots(figsize=(6, 4.5))
    names = list(summary["methods"])
    for row in rows:
        color = f"C{names.index(row['method']) % 10}"
        points = [
            (h["epoch"], h["val_robust_accuracy"])
            for h in row.get("history", [])
            if h.get("val_robust_accuracy") is not None
        ]
        if points:
            axes.plot(
                [e for e, _ in points], [100 * v for _, v in points], color=color, alpha=0.3, lw=1
            )
    for index, name in enumerate(names):
        curves = [
            {
                h["epoch"]: h["val_robust_accuracy"]
                for h in row.get("history", [])
                if h.get("val_robust_accuracy") is not None
            }
            for row in rows
            if row["method"] == name
        ]
        epochs = sorted(set().union(*curves)) if curves else []
        means = [sum(c[e] for c in curves if e in c) / sum(e in c for c in curves) for e in epochs]
        if epochs:
            axes.plot(
                epochs,
                [100 * m for m in means],
                color=f"C{index % 10}",
                lw=2,
                marker="o",
                label=name,
            )
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_xlabel("epoch")
    axes.set_ylabel("validation robust accuracy (%)")
    axes.set_title("mean over seeds (thick), each seed (thin)")
    axes.legend(fontsize=8)
    axes.grid(alpha=0.3)
    figure.tight_layout()
    written.append(_save(figure, folder / CURVE_FIGURE))
    plt.close(figure)
    return written


def _save(figure, path: pathlib.Path) -> pathlib.Path:
    rundir.atomic_write(path, lambda tmp: figure.savefig(tmp, dpi=110))
    return path

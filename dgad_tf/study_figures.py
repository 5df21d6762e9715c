"""The study's figures, drawn for a paper: vector (PDF) beside PNG, every setting on the figure.

    accuracy_per_seed.{png,pdf}     one panel per protocol accuracy (clean, then each attack):
                                    every seed a point, the mean and its 95% t interval over
                                    seeds per method
    clean_vs_robust.{png,pdf}       clean vs the strongest attack's accuracy: every seed a
                                    point, the mean with 95% t intervals on both axes
    pgd_vs_autoattack.{png,pdf}     each cell's PGD accuracy against its AutoAttack accuracy,
                                    with the diagonal (drawn when both are in the protocol):
                                    how much of the PGD robustness AutoAttack removes
    val_robust_accuracy.{png,pdf}   the validation metric per epoch (mean over seeds thick,
                                    each seed thin), named as `fit` computes it: PGD-K on the
                                    cross-entropy, step eps/4, uniform start, on the first
                                    `train.val_robust_n` validation images

Every figure's title names the attack, eps (in 1/255 when it is a whole number of grey levels),
the n test images and the seeds. Needs matplotlib (`pip install "dgad_tf[plot]"`).
"""

from __future__ import annotations

import pathlib

from dgad_tf import rundir, stats

PER_SEED_FIGURE = "accuracy_per_seed.png"
SCATTER_FIGURE = "clean_vs_robust.png"
ATTACKS_FIGURE = "pgd_vs_autoattack.png"
CURVE_FIGURE = "val_robust_accuracy.png"
VECTOR_SUFFIX = ".pdf"
DPI = 200


def eps_text(eps: float) -> str:
    """eps as a paper writes it: "8/255" when a whole number of grey levels, else "0.1"."""
    levels = eps * 255
    if abs(levels - round(levels)) < 1e-6 and round(levels) > 0:
        return f"{round(levels)}/255"
    return f"{eps:.4g}"


def attack_label(metric: str) -> str:
    """ "pgd20_accuracy" -> "PGD-20", "autoattack_accuracy" -> "AutoAttack", "clean"."""
    name = metric.removesuffix("_accuracy")
    if name.startswith("pgd") and name[3:].isdigit():
        return f"PGD-{name[3:]}"
    return {
        "autoattack": "AutoAttack",
        "autoattack_custom": "AutoAttack (APGD-CE, APGD-T)",
        "fgsm": "FGSM",
        "cw_inf": "CW-inf",
        "cw_l2": "CW-L2",
    }.get(name, name)


def setting_line(summary: dict) -> str:
    """The settings every figure names: data, eps, n test images, seeds."""
    protocol = summary["protocol"]
    data = summary.get("data")
    return (
        (f"{data}; " if data else "")
        + f"L∞ ε = {eps_text(protocol['eps'])}, n = {protocol['n']:,} test images, "
        f"{len(summary['seeds'])} seeds"
    )


def _interval(values):
    """(mean, half-width of the 95% t interval) over seeds; half-width None for one seed."""
    paired = stats.paired_difference(values, [0.0] * len(values))
    if paired.low is None:
        return paired.mean, None
    return paired.mean, paired.high - paired.mean


def _save(figure, path: pathlib.Path) -> list[pathlib.Path]:
    vector = path.with_suffix(VECTOR_SUFFIX)
    rundir.atomic_write(path, lambda tmp: figure.savefig(tmp, dpi=DPI))
    rundir.atomic_write(vector, lambda tmp: figure.savefig(tmp, format="pdf"))
    return [path, vector]


def _per_seed(plt, summary, metrics):
    names = list(summary["methods"])
    figure, panels = plt.subplots(
        1, len(metrics), figsize=(3.2 * len(metrics) + 0.6, 3.8), squeeze=False
    )
    for panel, metric in zip(panels[0], metrics):
        for index, name in enumerate(names):
            entry = summary["methods"][name]["metrics"].get(metric)
            if entry is None:
                continue
            values = [100 * v for v in entry["values"]]
            offsets = [
                0.12 * (k - (len(values) - 1) / 2) / max(len(values), 1) for k in range(len(values))
            ]
            panel.scatter(
                [index + 0.18 + o for o in offsets],
                values,
                s=14,
                color=f"C{index % 10}",
                alpha=0.7,
                label="seeds" if index == 0 else None,
            )
            mean, half = _interval(values)
            panel.errorbar(
                index - 0.1,
                mean,
                yerr=half,
                fmt="o",
                color=f"C{index % 10}",
                capsize=4,
                label="mean, 95% t interval" if index == 0 else None,
            )
        panel.set_xticks(range(len(names)), names, rotation=30, ha="right")
        panel.set_xlim(-0.6, len(names) - 0.4)
        panel.set_title(attack_label(metric))
        panel.set_ylabel(f"{attack_label(metric)} accuracy (%)")
        panel.grid(axis="y", alpha=0.3)
    panels[0][0].legend(fontsize=7, loc="best")
    figure.suptitle(f"Test accuracy per seed; {setting_line(summary)}", fontsize=9)
    figure.tight_layout()
    return figure


def _clean_vs_robust(plt, summary, headline):
    figure, axes = plt.subplots(figsize=(5.6, 4.6))
    for index, (name, entry) in enumerate(summary["methods"].items()):
        metrics = entry["metrics"]
        if "clean_accuracy" not in metrics or headline not in metrics:
            continue
        color = f"C{index % 10}"
        clean = [100 * v for v in metrics["clean_accuracy"]["values"]]
        robust = [100 * v for v in metrics[headline]["values"]]
        axes.scatter(clean, robust, color=color, alpha=0.5, s=16)
        (cx, chalf), (ry, rhalf) = _interval(clean), _interval(robust)
        axes.errorbar(
            cx, ry, xerr=chalf, yerr=rhalf, color=color, marker="o", capsize=3, label=name
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
    axes.set_ylabel(f"{attack_label(headline)} accuracy (%)")
    axes.set_title(
        f"Clean vs {attack_label(headline)}: seeds (points), mean ± 95% t interval\n"
        f"{setting_line(summary)}",
        fontsize=9,
    )
    axes.legend(fontsize=7)
    axes.grid(alpha=0.3)
    figure.tight_layout()
    return figure


def _pgd_vs_autoattack(plt, summary, pgd, autoattack):
    figure, axes = plt.subplots(figsize=(5.6, 4.6))
    low, high = 100.0, 0.0
    for index, (name, entry) in enumerate(summary["methods"].items()):
        metrics = entry["metrics"]
        if pgd not in metrics or autoattack not in metrics:
            continue
        x = [100 * v for v in metrics[pgd]["values"]]
        y = [100 * v for v in metrics[autoattack]["values"]]
        ratio = sum(y) / sum(x) if sum(x) else float("nan")
        axes.scatter(
            x, y, color=f"C{index % 10}", s=22, label=f"{name} (AutoAttack / PGD: {ratio:.2f})"
        )
        low, high = min(low, *x, *y), max(high, *x, *y)
    if high >= low:
        pad = max(2.0, 0.05 * (high - low))
        line = [max(0.0, low - pad), min(100.0, high + pad)]
        axes.plot(line, line, color="grey", lw=1, ls="--", label="AutoAttack = PGD")
    axes.set_xlabel(f"{attack_label(pgd)} accuracy (%)")
    axes.set_ylabel(f"{attack_label(autoattack)} accuracy (%)")
    axes.set_title(
        f"{attack_label(pgd)} vs {attack_label(autoattack)}, every seed a point\n"
        f"{setting_line(summary)}",
        fontsize=9,
    )
    axes.legend(fontsize=7)
    axes.grid(alpha=0.3)
    figure.tight_layout()
    return figure


def _validation_curve(plt, summary, rows):
    from matplotlib.ticker import MaxNLocator

    figure, axes = plt.subplots(figsize=(5.6, 4.6))
    names = list(summary["methods"])
    for row in rows:
        points = [
            (h["epoch"], h["val_robust_accuracy"])
            for h in row.get("history", [])
            if h.get("val_robust_accuracy") is not None
        ]
        if points:
            axes.plot(
                [e for e, _ in points],
                [100 * v for _, v in points],
                color=f"C{names.index(row['method']) % 10}",
                alpha=0.3,
                lw=1,
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
    validation = summary.get("validation") or {}
    metric = (
        f"PGD-{validation['steps']} on {validation['n']:,} validation images\n"
        f"(cross-entropy, step ε/4, uniform start, ε = {eps_text(validation['eps'])})"
        if validation
        else "the validation robust accuracy"
    )
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_xlabel("epoch")
    axes.set_ylabel("validation robust accuracy (%)")
    axes.set_title(
        f"Validation metric: {metric}\nmean over {len(summary['seeds'])} seeds (thick), "
        "each seed (thin)",
        fontsize=8,
    )
    axes.legend(fontsize=7)
    axes.grid(alpha=0.3)
    figure.tight_layout()
    return figure


def draw(folder: pathlib.Path, summary: dict, rows: list, headline: str) -> list[pathlib.Path]:
    """Draw every figure into `folder`; returns the files written. Needs matplotlib."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = ["clean_accuracy"] + [
        f"{a}_accuracy" for a in summary["protocol"]["attacks"] if a != "clean"
    ]
    written = []
    drawings = [
        (PER_SEED_FIGURE, lambda: _per_seed(plt, summary, metrics)),
        (SCATTER_FIGURE, lambda: _clean_vs_robust(plt, summary, headline)),
        (CURVE_FIGURE, lambda: _validation_curve(plt, summary, rows)),
    ]
    pgd = [m for m in metrics if m.startswith("pgd")]
    autoattack = [m for m in metrics if m.startswith("autoattack")]
    if pgd and autoattack:
        drawings.append(
            (ATTACKS_FIGURE, lambda: _pgd_vs_autoattack(plt, summary, pgd[-1], autoattack[0]))
        )
    for name, draw_one in drawings:
        figure = draw_one()
        written += _save(figure, folder / name)
        plt.close(figure)
    return written

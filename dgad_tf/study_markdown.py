"""summary.md: a study's summary (`dgad_tf.study_report.summarize`) as tables and sentences.

`summary_markdown` renders the summary dict that summary.json holds, and nothing else: the
per-method table (mean ± sample standard deviation over seeds), the paired differences to the
reference method with every interval and p-value and what each means, the section of the one
declared comparison (`primary_markdown`), and one plain sentence per comparison of the headline
and clean accuracies (`comparison_sentence`) that says what its interval says. Accuracies are
printed in %, differences in percentage points.
"""

from __future__ import annotations


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


def _interval(entry) -> str:
    if entry is None or entry.get("low") is None:
        return "–"
    return f"[{_signed_points(entry['low'])}, {_signed_points(entry['high'])}]"


def _p(value) -> str:
    return "–" if value is None else f"{value:.3g}"


def _seeds_needed_line(paired: dict) -> str:
    if paired["std"] is None:
        return "One seed pair: no spread to size a study from."
    if paired["no_spread"]:
        return (
            "Seeds needed: these seeds show no spread, so it cannot be estimated from them "
            "(add seeds first)."
        )
    needed = ", ".join(
        f"±{width} points: {'more than 1000' if k is None else k}"
        for width, k in paired["seeds_needed"].items()
    )
    return (
        f"Seeds needed for a 95% t interval of half-width ±X points at this spread (sd of the "
        f"per-seed differences {100 * paired['std']:.2f} points): {needed}."
    )


def primary_markdown(primary: dict) -> list[str]:
    """The section of the one declared comparison: every statistic, unadjusted."""
    name = f"{primary['method']} − {primary['versus']}, {primary['metric']}"
    lines = ["## Primary comparison (declared in `study.primary`)", ""]
    if "mean" not in primary:
        return lines + [f"{name}: no seed has both cells yet.", ""]
    flip = primary["sign_flip"]
    lines += [
        f"{name}: {_signed_points(primary['mean'])} points over seeds {primary['seeds']}"
        + (
            " (no spread: every seed pair differs by the same amount)"
            if primary["no_spread"]
            else ""
        ),
        "",
        f"- 95% t interval over seeds: {_interval(primary)}",
        f"- 95% seeds × images bootstrap interval: {_interval(primary.get('seeds_x_images'))}",
        f"- exact sign-flip test over seeds: p = {_p(flip['p_value'])} (with {flip['n']} seeds "
        f"no p below {_p(flip['smallest_p'])} is possible)",
    ]
    for seed in primary.get("per_seed", []):
        m = seed["mcnemar"]
        lines.append(
            f"- seed {seed['seed']}: McNemar exact p = {_p(m['p_value'])} ({m['a_only']} images "
            f"only {primary['method']} gets right, {m['b_only']} only {primary['versus']}); "
            f"95% image bootstrap {_interval(seed['image_bootstrap'])}"
        )
    return lines + ["", _seeds_needed_line(primary), ""]


def summary_markdown(summary: dict, metrics: list[str], headline: str) -> str:
    """The text of summary.md.

    Args:
        summary: the dict of `dgad_tf.study_report.summarize` (what summary.json holds).
        metrics: the accuracy columns, in order (`study_report.metric_names`).
        headline: the accuracy the sentences are written for besides the clean one
            (`study_report.strongest_metric`).
    """
    protocol = summary["protocol"]
    lines = [f"# Study {summary['folder']}", ""]
    if summary.get("leaky_selection"):
        lines += [
            "**Leaky selection: these cells chose their checkpoint on the same test images they "
            "are scored on, so their accuracies are optimistic and not a held-out result: "
            + "; ".join(summary["leaky_selection"])
            + ".**",
            "",
        ]
    lines += [
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
        "| method − " + summary["reference"] + " | metric | mean | 95% t interval | "
        "95% seeds × images | sign-flip p | Holm p | McNemar p per seed | seeds | note |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    sentences = []
    for name, entry in summary["methods"].items():
        for metric, paired in entry.get("vs_reference", {}).items():
            notes = ["no spread"] if paired["no_spread"] else []
            if "p_holm" not in paired:
                notes.append("primary")
            mcnemar = ", ".join(_p(s["mcnemar"]["p_value"]) for s in paired.get("per_seed", []))
            lines.append(
                f"| {name} | {metric} | {_signed_points(paired['mean'])} | {_interval(paired)} | "
                f"{_interval(paired.get('seeds_x_images'))} | "
                f"{_p(paired['sign_flip']['p_value'])} | {_p(paired.get('p_holm'))} | "
                f"{mcnemar or '–'} | {paired['n']} | {', '.join(notes)} |"
            )
            if metric in (headline, "clean_accuracy"):
                sentences.append(comparison_sentence(name, summary["reference"], metric, paired))
    seeds = len(summary["seeds"])
    lines += [
        "",
        "Differences in percentage points. t interval: mean ± t(0.975, n−1) · sd / √n over the "
        "per-seed differences. Seeds × images: percentile bootstrap drawing seeds and test "
        "images independently (10,000 resamples); with few seeds its seed part is too narrow "
        "(a bootstrap of S values keeps (S−1)/S of their variance, with no t correction), so "
        "read it beside the t interval. Sign-flip: exact randomization test over "
        f"seeds; with {seeds} seeds no p below {_p(2.0 / 2**seeds)} is possible, so fewer than "
        "6 seeds cannot reach p < 0.05. Holm p: adjusted over the "
        f"{summary.get('holm_family', 0)} comparisons other than the primary one. McNemar: "
        'exact, per seed pair, on the same test images. "no spread": every seed pair differs '
        "by the same amount, so the t interval has width 0 — no seed-to-seed variation on "
        "these seeds, not a certain difference.",
        "",
    ]
    if summary.get("primary"):
        lines += primary_markdown(summary["primary"])
    else:
        lines += [
            "No primary comparison was declared (`study.primary`): every p above is one of a "
            "family and only its Holm p should be read as a test.",
            "",
        ]
    lines += [*[f"- {s}" for s in sentences], ""]
    return "\n".join(lines)

"""Print the n = 1,000 table of benchmarks/cifar10_cpu_study/n1000/ (run from the repo root)."""

import json
import pathlib

from dgad_tf import stats

folder = pathlib.Path("benchmarks/cifar10_cpu_study/n1000")
acc = {
    (m, s): json.loads((folder / f"{m}_seed{s}.json").read_text())["attacks"]
    for m in ("dgad", "adaad")
    for s in (0, 1)
}
print("| student | clean | PGD-20 | AutoAttack |\n|---|---|---|---|")
for (m, s), a in acc.items():
    row = " | ".join(
        f"{100 * a[k]['robust_accuracy']:.1f}" for k in ("clean", "pgd20", "autoattack")
    )
    print(f"| {m} seed {s} | {row} |")
for k in ("clean", "pgd20", "autoattack"):
    d = stats.paired_difference(
        [acc["dgad", s][k]["robust_accuracy"] for s in (0, 1)],
        [acc["adaad", s][k]["robust_accuracy"] for s in (0, 1)],
    )
    print(f"dgad - adaad {k}: {100 * d.mean:+.2f} [{100 * d.low:+.2f}, {100 * d.high:+.2f}]")

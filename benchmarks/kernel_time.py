"""How much of each framework's DGAD step is spent inside oneDNN, and what that bounds.

On x86 CPUs both TensorFlow and PyTorch hand their convolutions to oneDNN (TensorFlow's own
build, PyTorch's own). This script runs `vs_pytorch.py`'s two DGAD steps (same converted
weights, same batch, same PGD settings, same thread counts) and reports, per step and per side:

* the wall time, from paired rounds in this process (`torch_compare.timing.time_config`, no
  logging);
* the time inside oneDNN primitives, from a child process run with `ONEDNN_VERBOSE=profile_exec`
  (oneDNN then prints every primitive it executes with its own execution time in ms; the child
  prints a marker line before and after each timed step, and the lines in between are summed).

From these it prints the **ceiling** on ours/PyTorch speed for equal work on this machine:
PyTorch's wall time divided by our oneDNN time, i.e. the ratio we would reach if everything of
our step outside oneDNN took no time at all and the kernels stayed the ones TensorFlow picks.
The ceiling and the shares come from the child alone, whose steps alternate between the sides,
so a change of the machine's speed between the paired rounds and the child cannot enter them;
the logging adds to the child's wall times (printed beside the times without logging).
The kernel columns, grouped by primitive kind and implementation, say where the two oneDNN builds
differ (e.g. which side reorders more).


Example:

    python benchmarks/kernel_time.py --configs resnet-18:resnet-18
"""

from __future__ import annotations

import argparse
import collections
import os
import statistics
import subprocess
import sys
import time

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, _HERE)
sys.path.insert(0, os.path.dirname(_HERE))

# Before TensorFlow, so that it loads with oneDNN as dgad_tf sets it (dgad_tf.cpu).
from dgad_tf import cpu  # noqa: E402

# isort: split
from torch_compare.timing import (  # noqa: E402
    PRECISIONS,
    build_steps,
    finish_args,
    random_batch,
    set_threads,
    time_config,
    torch_batch,
)

MARK = "@@kernel_time"


def parse_verbose(lines):
    """Sum oneDNN `profile_exec` lines between this script's markers.

    Args:
        lines: the child's stdout lines: `@@kernel_time begin <side>` / `@@kernel_time end
            <side> <wall seconds>` markers around each timed step, and oneDNN v3 lines
            `onednn_verbose,v1,<start ms>,primitive,exec,cpu,<kind>,<impl>,<prop>,...,<ms>`
            (the start time is there with ONEDNN_VERBOSE_TIMESTAMP=1).

    Returns:
        {side: [step]}, one step per marked pair: {"wall": s, "onednn": summed primitive s,
        "busy": s during which at least one primitive ran (the union of the [start, start +
        duration] intervals: primitives of independent ops overlap under an inter-op pool),
        "kinds": {"kind impl prop": summed s}}.
    """
    steps = collections.defaultdict(list)
    side, kinds, spans = None, None, None
    for line in lines:
        line = line.strip()
        if line.startswith(MARK):
            fields = line.split()
            if fields[1] == "begin":
                side, kinds, spans = fields[2], collections.Counter(), []
            elif fields[1] == "end" and side == fields[2]:
                steps[side].append(
                    dict(
                        wall=float(fields[3]),
                        onednn=sum(kinds.values()),
                        busy=_union_length(spans),
                        kinds=dict(kinds),
                    )
                )
                side = None
            continue
        if side is None or not line.startswith("onednn_verbose,"):
            continue
        parts = line.split(",")
        if "exec" not in parts[:6]:
            continue
        at = parts.index("exec")
        try:
            seconds = float(parts[-1]) / 1000.0
            start = float(parts[2]) / 1000.0 if at == 4 else None
        except ValueError:
            continue
        kinds[" ".join(p or "-" for p in parts[at + 2 : at + 5])] += seconds
        spans.append((start, seconds))
    return dict(steps)


def _union_length(spans):
    """Total length covered by (start, duration) intervals; their sum if a start is missing."""
    if any(start is None for start, _ in spans):
        return sum(duration for _, duration in spans)
    covered, reach = 0.0, float("-inf")
    for start, duration in sorted(spans):
        end = start + duration
        if end > reach:
            covered += end - max(start, reach)
            reach = end
    return covered


def child(args):
    """Run in the verbose child: one warm-up, then `--iters` marked steps per side."""
    set_threads(args.threads)
    import tensorflow as tf

    distiller, step = build_steps(
        *args.configs[0], args.steps, args.seed, "cpu", args.precision, args.torch_channels_last
    )
    x, y = random_batch(args.batch_size, args.seed)
    x_tf, y_tf = tf.constant(x), tf.constant(y)
    x_t, y_t = torch_batch(x, y, "cpu")
    sides = {
        "ours": lambda: distiller.train_on_batch(x_tf, y_tf),
        "pytorch": lambda: step(x_t, y_t),
    }
    for run in sides.values():
        run()
    for i in range(args.iters):
        for name in sorted(sides, reverse=i % 2 == 1):
            _say(f"{MARK} begin {name}")
            start = time.perf_counter()
            sides[name]()
            _say(f"{MARK} end {name} {time.perf_counter() - start:.6f}")
    return 0


def _say(text):
    """Write a marker line straight to fd 1, between oneDNN's own (flushed) lines."""
    sys.stdout.flush()
    os.write(1, (text + "\n").encode())


def kernel_times(args, pair):
    """Run the verbose child for `pair`; return parse_verbose's result."""
    command = [sys.executable, os.path.abspath(__file__), "--child"]
    command += ["--configs", ":".join(pair), "--batch-size", str(args.batch_size)]
    command += ["--steps", str(args.steps), "--iters", str(args.iters)]
    command += ["--threads", str(args.threads), "--seed", str(args.seed)]
    command += ["--precision", args.precision]
    command += ["--torch-channels-last"] if args.torch_channels_last else []
    env = dict(
        os.environ,
        ONEDNN_VERBOSE="profile_exec",
        ONEDNN_VERBOSE_TIMESTAMP="1",
        TF_CPP_MIN_LOG_LEVEL="2",
    )
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"the verbose child failed ({done.returncode}):\n{done.stderr[-3000:]}")
    steps = parse_verbose(done.stdout.splitlines())
    for side in ("ours", "pytorch"):
        convolutions = [
            kind
            for s in steps.get(side, [])
            for kind in s["kinds"]
            if kind.startswith("convolution")
        ]
        if not convolutions:
            # A matmul alone (TensorFlow's `gemm_api`) is no bound on a convolutional step.
            hint = (
                f" TF_ENABLE_ONEDNN_OPTS={os.environ.get(cpu.VARIABLE, '(unset)')} in the child;"
                " dgad_tf switches TensorFlow's oneDNN kernels on by default on x86 CPUs, so "
                "unset the variable or set TF_ENABLE_ONEDNN_OPTS=1 to measure them."
                if side == "ours"
                else ""
            )
            raise RuntimeError(
                f"no oneDNN convolution was logged during the {side} steps: this build of "
                f"{'TensorFlow' if side == 'ours' else 'PyTorch'} does not run its convolutions "
                f"through oneDNN here (or ignores ONEDNN_VERBOSE), so there is nothing to "
                f"bound.{hint}"
            )
    return steps


def summarize(steps, top=6):
    """Median wall, busy and summed oneDNN seconds per step, and the `top` groups by seconds."""
    wall = statistics.median(s["wall"] for s in steps)
    busy = statistics.median(s["busy"] for s in steps)
    summed = statistics.median(s["onednn"] for s in steps)
    groups = {k for s in steps for k in s["kinds"]}
    by_group = {g: statistics.median(s["kinds"].get(g, 0.0) for s in steps) for g in groups}
    ranked = sorted(by_group.items(), key=lambda item: -item[1])[:top]
    return wall, busy, summed, ranked


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--configs", default="resnet-18:resnet-18", help="comma-separated student:teacher pairs"
    )
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=10, help="PGD steps")
    parser.add_argument("--rounds", type=int, default=3, help="paired wall-time rounds")
    parser.add_argument("--iters", type=int, default=2, help="steps per side per round / child")
    parser.add_argument("--threads", type=int, default=None, help="default: usable CPUs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--precision", choices=sorted(PRECISIONS), default="float32")
    parser.add_argument(
        "--torch-channels-last", action="store_true", help="PyTorch in channels_last format"
    )
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    return finish_args(parser, parser.parse_args(argv))


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.child:
        return child(args)
    set_threads(args.threads)
    print(
        f"batch {args.batch_size}, {args.steps} PGD steps, {args.precision}"
        f"{', PyTorch channels_last' if args.torch_channels_last else ''}, {args.threads} "
        f"intra-op and inter-op threads each; load average {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    print(cpu.summary(cpu.describe()), flush=True)
    results = {}
    for pair in args.configs:
        name = f"{pair[0]} <- {pair[1]}"
        print(f"\n{name}: paired wall-time rounds (no logging)", flush=True)
        timing = time_config(*pair, args, "cpu")
        wall = {
            "ours": statistics.median(r["ours_seconds"] for r in timing["rounds"]),
            "pytorch": statistics.median(r["torch_seconds"] for r in timing["rounds"]),
        }
        print(f"  {name}: oneDNN time per step (ONEDNN_VERBOSE=profile_exec child)", flush=True)
        steps = kernel_times(args, pair)
        logged, busy, summed = {}, {}, {}
        for side in ("ours", "pytorch"):
            logged[side], busy[side], summed[side], ranked = summarize(steps[side])
            print(
                f"  {side:<8} wall {logged[side]:.3f} s/step ({wall[side]:.3f} without logging);"
                f" oneDNN running {busy[side]:.3f} s ({100 * busy[side] / logged[side]:.0f}% of"
                f" wall), primitives summed {summed[side]:.3f} s:"
            )
            for group, seconds in ranked:
                print(f"      {seconds:8.3f} s  {group}")
        # From the child alone: its steps of both sides were interleaved, so a change of the
        # machine's speed between the paired rounds and the child does not enter the ratio.
        ceiling = logged["pytorch"] / busy["ours"]
        print(
            f"  ours/pytorch speed: without logging {wall['pytorch'] / wall['ours']:.3f} "
            f"(median of paired rounds {timing['median_of_paired_ratios']:.3f}), in the logging "
            f"child {logged['pytorch'] / logged['ours']:.3f}; summed oneDNN time pytorch/ours "
            f"{summed['pytorch'] / summed['ours']:.3f}; ceiling if nothing of ours ran outside "
            f"oneDNN: {ceiling:.3f}",
            flush=True,
        )
        results[name] = dict(wall=wall, logged=logged, busy=busy, ceiling=ceiling)
    print(f"\nload average after {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Train-step throughput of `AdversarialDistiller`, per method, with and without XLA.

Times the compiled Keras train step (attack -> student forward -> teacher forward -> loss ->
update) on one repeated random batch through `train_on_batch`, which returns Python numbers and
so waits for the step to finish. Warm-up calls (the first one traces and, under XLA, compiles)
are excluded from the timings and reported apart.

Because the machine is shared, methods are interleaved: each repeat times every (method, XLA)
configuration once, `--iters` steps each, in an order rotated by one place per repeat, and the
median over repeats is reported. The DGAD/PGD-AT and DGAD/AdaAD cost ratios are given both as
the ratio of the medians and as the median of the per-repeat ratios (back-to-back measurements).
DGAD is also timed once with `run_eagerly=True`, between two compiled DGAD measurements.

Example:

    python benchmarks/step_throughput.py --iters 2 --repeats 3 --out results.json
    python benchmarks/step_throughput.py --student small-cnn --xla off
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import sys
import time

import numpy as np

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(_HERE))

# Before TensorFlow, so that it loads with oneDNN as dgad_tf sets it (dgad_tf.cpu).
from dgad_tf import cpu  # noqa: E402

# isort: split
import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

from dgad_tf import losses  # noqa: E402
from dgad_tf.attacks import PGD  # noqa: E402
from dgad_tf.distiller import AdversarialDistiller  # noqa: E402
from dgad_tf.models import build_model  # noqa: E402
from dgad_tf.optim import TorchSGD  # noqa: E402

DEFAULT_METHODS = ("pgd_at", "trades", "ard", "rslad", "adaad", "dgad")
INPUT_SHAPE = (32, 32, 3)
NUM_CLASSES = 10
ADAAD_TARGET = 1.05


def parse_args(argv=None) -> argparse.Namespace:
    """Command-line options; see the module docstring.

    Args:
        argv: argument list; None reads `sys.argv`. Default None.
    """
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--student", default="mobilenetv2")
    parser.add_argument("--teacher", default="resnet-18")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=10, help="PGD steps of the training attack")
    parser.add_argument("--methods", default=",".join(DEFAULT_METHODS))
    parser.add_argument(
        "--warmup",
        type=int,
        default=2,
        help="untimed calls per configuration, >= 1 (the first traces/compiles)",
    )
    parser.add_argument(
        "--iters", type=int, default=5, help="timed steps per configuration per repeat"
    )
    parser.add_argument("--repeats", type=int, default=3, help="round-robin repeats")
    parser.add_argument("--xla", choices=("both", "on", "off"), default="both")
    parser.add_argument(
        "--eager-iters",
        type=int,
        default=None,
        help="timed eager DGAD steps (default: --iters); 0 skips eager",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    for method in args.methods:
        if method not in losses.METHOD_LOSSES:
            parser.error(
                f"`--methods` entries must be in {', '.join(losses.METHOD_LOSSES)}; "
                f"received {method!r}"
            )
    for name in ("batch_size", "iters", "repeats", "warmup"):
        if getattr(args, name) < 1:
            parser.error(
                f"`--{name.replace('_', '-')}` must be >= 1; received {getattr(args, name)}"
            )
    if args.steps < 0:
        parser.error(f"`--steps` must be >= 0; received {args.steps}")
    if args.eager_iters is None:
        args.eager_iters = args.iters
    return args


def make_distiller(
    method: str, teacher: keras.Model, args, *, jit_compile: bool, run_eagerly: bool = False
) -> AdversarialDistiller:
    """A compiled distiller with a freshly initialised student (same seed for every method).

    Args:
        method: training method (its loss with default options).
        teacher: the shared frozen teacher (used by the methods that distil).
        args: parsed options (student name, steps, seed).
        jit_compile: compile the train step with XLA.
        run_eagerly: run the train step eagerly. Default False.
    """
    keras.utils.set_random_seed(args.seed + 1)
    student = build_model(args.student, NUM_CLASSES, INPUT_SHAPE, name_prefix="student_")
    loss = losses.get(method)()
    distiller = AdversarialDistiller(
        teacher=teacher if loss.needs_teacher else None,
        student=student,
        loss=loss,
        attack=PGD(steps=args.steps),
    )
    distiller.compile(
        optimizer=TorchSGD(learning_rate=0.01), jit_compile=jit_compile, run_eagerly=run_eagerly
    )
    return distiller


def seconds_per_step(distiller: AdversarialDistiller, x, y, calls: int) -> float:
    """Wall-clock seconds per `train_on_batch` call, averaged over `calls` calls."""
    start = time.perf_counter()
    for _ in range(calls):
        distiller.train_on_batch(x, y)
    return (time.perf_counter() - start) / calls


def _short_error(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    lines = [line for line in text.splitlines() if line.strip()]
    return "\n".join(lines[:12])


def _ratio(numerator, denominator):
    return None if numerator is None or denominator is None else numerator / denominator


def run(args) -> dict:
    """Builds, warms up and times every configuration; returns the results dict.

    Args:
        args: parsed options.
    """
    rng = np.random.default_rng(args.seed)
    x = tf.constant(rng.random((args.batch_size,) + INPUT_SHAPE, dtype=np.float32))
    y = tf.constant(rng.integers(0, NUM_CLASSES, size=(args.batch_size,)), tf.int32)
    keras.utils.set_random_seed(args.seed)
    teacher = build_model(args.teacher, NUM_CLASSES, INPUT_SHAPE, name_prefix="teacher_")

    modes = {"both": (False, True), "on": (True,), "off": (False,)}[args.xla]
    configs = [(method, xla) for xla in modes for method in args.methods]
    results = {
        f"{m}|xla={'on' if xla else 'off'}": dict(method=m, xla=xla, step_seconds=[])
        for m, xla in configs
    }
    key = {cfg: f"{cfg[0]}|xla={'on' if cfg[1] else 'off'}" for cfg in configs}

    distillers = {}
    for cfg in configs:
        entry = results[key[cfg]]
        try:
            distiller = make_distiller(cfg[0], teacher, args, jit_compile=cfg[1])
            entry["jit_compile_effective"] = bool(distiller.jit_compile)
            start = time.perf_counter()
            distiller.train_on_batch(x, y)
            entry["first_call_seconds"] = time.perf_counter() - start
            if args.warmup > 1:
                seconds_per_step(distiller, x, y, args.warmup - 1)
            distillers[cfg] = distiller
            print(
                f"warm {key[cfg]:<22} first call {entry['first_call_seconds']:8.2f} s", flush=True
            )
        except Exception as exc:  # noqa: BLE001 -- report, do not hide, an XLA failure
            entry["error"] = _short_error(exc)
            print(f"FAILED {key[cfg]}: {entry['error']}", flush=True)

    eager = None
    live = [cfg for cfg in configs if cfg in distillers]
    for repeat in range(args.repeats):
        shift = repeat % max(len(live), 1)
        for cfg in live[shift:] + live[:shift]:
            seconds = seconds_per_step(distillers[cfg], x, y, args.iters)
            results[key[cfg]]["step_seconds"].append(seconds)
            print(f"repeat {repeat} {key[cfg]:<22} {seconds:8.3f} s/step", flush=True)
            if repeat == 0 and cfg == ("dgad", False) and args.eager_iters > 0:
                eager = _time_eager(teacher, x, y, args)
                # A second compiled measurement after the eager one brackets it in time; it is
                # kept out of the medians so every configuration has the same number of samples.
                after = seconds_per_step(distillers[cfg], x, y, args.iters)
                eager["compiled_before_after_step_seconds"] = [seconds, after]

    for entry in results.values():
        times = entry["step_seconds"]
        if times:
            entry["median_step_seconds"] = statistics.median(times)
            entry["min_step_seconds"] = min(times)
            entry["max_step_seconds"] = max(times)
            entry["images_per_second"] = args.batch_size / entry["median_step_seconds"]

    compiled_dgad = results.get("dgad|xla=off", {})
    if eager is not None and "error" not in eager:
        bracket = eager.get("compiled_before_after_step_seconds", [])
        eager["compiled_bracket_mean_step_seconds"] = statistics.fmean(bracket) if bracket else None
        eager["compiled_over_eager_speed_bracket"] = _ratio(
            eager["step_seconds"], eager["compiled_bracket_mean_step_seconds"]
        )
        eager["compiled_over_eager_speed_median"] = _ratio(
            eager["step_seconds"], compiled_dgad.get("median_step_seconds")
        )

    ratios = {}
    for xla in modes:
        tag = "on" if xla else "off"
        dgad = results.get(f"dgad|xla={tag}", {})
        for other in ("pgd_at", "adaad"):
            base = results.get(f"{other}|xla={tag}", {})
            paired = [
                d / b for d, b in zip(dgad.get("step_seconds", []), base.get("step_seconds", []))
            ]
            ratios[f"dgad/{other}|xla={tag}"] = dict(
                ratio_of_medians=_ratio(
                    dgad.get("median_step_seconds"), base.get("median_step_seconds")
                ),
                median_of_paired_ratios=statistics.median(paired) if paired else None,
                paired_ratios=paired,
            )

    return dict(
        config=dict(
            student=args.student,
            teacher=args.teacher,
            batch_size=args.batch_size,
            pgd_steps=args.steps,
            methods=args.methods,
            warmup=args.warmup,
            iters=args.iters,
            repeats=args.repeats,
            xla=args.xla,
            seed=args.seed,
            input_shape=list(INPUT_SHAPE),
            command=" ".join(sys.argv),
        ),
        machine=dict(
            tensorflow=tf.__version__,
            keras=keras.__version__,
            python=platform.python_version(),
            cpu_count=os.cpu_count(),
            gpus=len(tf.config.list_physical_devices("GPU")),
            platform=platform.platform(),
            **cpu.describe(),
        ),
        results=results,
        ratios=ratios,
        eager=eager,
    )


def _time_eager(teacher, x, y, args) -> dict:
    """Eager DGAD seconds per step (`--eager-iters` steps after one untimed call)."""
    try:
        distiller = make_distiller("dgad", teacher, args, jit_compile=False, run_eagerly=True)
        distiller.train_on_batch(x, y)
        seconds = seconds_per_step(distiller, x, y, args.eager_iters)
    except Exception as exc:  # noqa: BLE001
        return dict(error=_short_error(exc))
    print(f"eager  dgad                   {seconds:8.3f} s/step", flush=True)
    return dict(
        step_seconds=seconds, images_per_second=args.batch_size / seconds, iters=args.eager_iters
    )


def _fmt(value, spec):
    return "-" if value is None else format(value, spec)


def print_report(report: dict) -> None:
    """Prints the per-method table, the cost ratios and the two target checks."""
    cfg = report["config"]
    print(
        f"\n{cfg['student']} student, {cfg['teacher']} teacher, batch {cfg['batch_size']}, "
        f"{cfg['pgd_steps']} PGD steps, {cfg['iters']} steps x {cfg['repeats']} repeats "
        f"(median), TF {report['machine']['tensorflow']}, "
        f"{report['machine']['cpu_count']} CPUs, {report['machine']['gpus']} GPUs"
    )
    print(cpu.summary(report["machine"]))
    print(
        f"{'method':<10}{'xla':<5}{'images/s':>10}{'s/step':>9}{'min':>9}{'max':>9}"
        f"{'1st call s':>12}"
    )
    for entry in report["results"].values():
        tag = "on" if entry["xla"] else "off"
        if "error" in entry:
            print(f"{entry['method']:<10}{tag:<5} ERROR: {entry['error'].splitlines()[0]}")
            continue
        print(
            f"{entry['method']:<10}{tag:<5}{_fmt(entry.get('images_per_second'), '10.3f')}"
            f"{_fmt(entry.get('median_step_seconds'), '9.3f')}"
            f"{_fmt(entry.get('min_step_seconds'), '9.3f')}"
            f"{_fmt(entry.get('max_step_seconds'), '9.3f')}"
            f"{_fmt(entry.get('first_call_seconds'), '12.2f')}"
        )
    print("\ncost ratio (step time)     of medians  median of paired")
    for name, ratio in report["ratios"].items():
        print(
            f"{name:<27}{_fmt(ratio['ratio_of_medians'], '10.4f')}"
            f"{_fmt(ratio['median_of_paired_ratios'], '18.4f')}"
        )
    for name, ratio in report["ratios"].items():
        if name.startswith("dgad/adaad") and ratio["ratio_of_medians"] is not None:
            verdict = "PASS" if ratio["ratio_of_medians"] <= ADAAD_TARGET else "FAIL"
            print(f"target DGAD <= {ADAAD_TARGET}x AdaAD ({name}, ratio of medians): {verdict}")
    eager = report["eager"]
    if eager is not None:
        if "error" in eager:
            print(f"eager DGAD ERROR: {eager['error']}")
        else:
            print(
                f"eager DGAD {eager['images_per_second']:.3f} images/s "
                f"({eager['step_seconds']:.3f} s/step, {eager['iters']} steps, once)"
            )
            bracket = eager.get("compiled_before_after_step_seconds", [])
            print(
                f"compiled DGAD (xla off) just before/after eager: "
                f"{', '.join(f'{t:.3f}' for t in bracket)} s/step"
            )
            for name in ("bracket", "median"):
                speed = eager.get(f"compiled_over_eager_speed_{name}")
                if speed is not None:
                    verdict = "PASS" if speed >= 1.0 else "FAIL"
                    print(
                        f"target compiled >= eager speed (compiled {name}): {speed:.4f}x: {verdict}"
                    )


def main(argv=None) -> int:
    """Runs the benchmark, prints the table and optionally writes the JSON."""
    logging.basicConfig(level=logging.WARNING)
    args = parse_args(argv)
    load_before = os.getloadavg()
    started = time.time()
    report = run(args)
    report["machine"]["loadavg_1_5_15_before"] = list(load_before)
    report["machine"]["loadavg_1_5_15_after"] = list(os.getloadavg())
    report["wall_seconds"] = time.time() - started
    print_report(report)
    print(
        f"load average before {load_before[0]:.2f}, after {os.getloadavg()[0]:.2f} "
        f"(1-min); wall time {report['wall_seconds']:.0f} s"
    )
    if args.out:
        with open(args.out, "w") as handle:
            json.dump(report, handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())

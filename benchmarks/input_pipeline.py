"""What the training input pipeline costs the compiled DGAD step.

Feeds `AdversarialDistiller.fit` (the compiled DGAD step) `--steps-per-round` batches from
`dgad_tf.data.make_train_dataset` over real CIFAR-10 images (npz source, random crop and flip
on, vectorised per batch in tf.data, prefetched) and, alternately, the same number of steps from
one cached in-memory batch (`Dataset.from_tensors(batch).repeat()`), in rounds whose order flips
every round. The pipeline's cost is the median over rounds of (pipeline time / cached time) - 1.
On a shared machine that ratio swings by tens of percent, so the pipeline is also timed alone
(batches per second, nothing consuming them) in every round: its time per batch over the cached
step time bounds its cost even if prefetching overlapped nothing.

The default step (small CNN student and teacher, batch 128, 10 PGD steps) is a fast DGAD step,
so the pipeline's share is larger than with the paper's networks: a strict test.

Example:

    python benchmarks/input_pipeline.py --rounds 6 --steps-per-round 8
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(_HERE))

# Before TensorFlow, so that it loads with oneDNN as dgad_tf sets it (dgad_tf.cpu).
import dgad_tf  # noqa: E402, F401

# isort: split
import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

from dgad_tf import data  # noqa: E402
from dgad_tf.attacks import PGD  # noqa: E402
from dgad_tf.distiller import AdversarialDistiller  # noqa: E402
from dgad_tf.losses import DGAD  # noqa: E402
from dgad_tf.models import build_model  # noqa: E402
from dgad_tf.optim import TorchSGD  # noqa: E402

DATA = os.path.join(
    os.path.dirname(os.path.dirname(_HERE)), "shared", "data", "cifar10", "train_20k.npz"
)
TARGET = 0.02


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=DATA, help="npz with x uint8 [N,32,32,3], y [N]")
    parser.add_argument("--student", default="small-cnn")
    parser.add_argument("--teacher", default="small-cnn")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=10, help="PGD steps")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--steps-per-round", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    raw = np.load(args.data)
    arrays = data.Arrays(x=raw["x"], y=raw["y"].astype(np.int64))
    pipeline = data.make_train_dataset(arrays, args.batch_size, augment=True, seed=args.seed)
    cached = tf.data.Dataset.from_tensors(next(iter(pipeline))).repeat()

    keras.utils.set_random_seed(args.seed)
    teacher = build_model(args.teacher, 10, (32, 32, 3), name_prefix="teacher_")
    student = build_model(args.student, 10, (32, 32, 3), name_prefix="student_")
    distiller = AdversarialDistiller(
        teacher=teacher, student=student, loss=DGAD(), attack=PGD(steps=args.steps)
    )
    distiller.compile(optimizer=TorchSGD(0.1), jit_compile=False)

    def run(dataset):
        start = time.perf_counter()
        distiller.fit(dataset, steps_per_epoch=args.steps_per_round, epochs=1, verbose=0)
        return time.perf_counter() - start

    def pipeline_alone():
        start = time.perf_counter()
        for _ in pipeline.take(args.steps_per_round * 4):
            pass
        return (time.perf_counter() - start) / (args.steps_per_round * 4)

    run(pipeline)  # traces the step
    run(cached)
    pipeline_alone()
    rounds = []
    for r in range(args.rounds):
        if r % 2 == 0:
            t_pipe, t_cached = run(pipeline), run(cached)
        else:
            t_cached, t_pipe = run(cached), run(pipeline)
        alone = pipeline_alone()
        rounds.append((t_pipe, t_cached, alone))
        print(
            f"round {r}: pipeline {args.steps_per_round / t_pipe:.3f} steps/s, cached batch "
            f"{args.steps_per_round / t_cached:.3f} steps/s, ratio {t_pipe / t_cached:.4f}; "
            f"pipeline alone {1 / alone:.1f} batches/s",
            flush=True,
        )
    ratio = statistics.median(p / c for p, c, _ in rounds)
    print(
        f"\n{args.student} <- {args.teacher}, batch {args.batch_size}, {args.steps} PGD steps, "
        f"{args.rounds} rounds x {args.steps_per_round} steps per side (fit, verbose 0)"
    )
    print(
        f"steps/s: pipeline {statistics.median(args.steps_per_round / p for p, _, _ in rounds):.3f}"
        f", cached batch {statistics.median(args.steps_per_round / c for _, c, _ in rounds):.3f}"
        f" (medians)"
    )
    print(
        f"pipeline alone: {statistics.median(1 / a for _, _, a in rounds):.1f} batches/s "
        f"(median), i.e. {statistics.median(a for _, _, a in rounds) * 1e3:.2f} ms per batch"
    )
    bound = statistics.median(a * args.steps_per_round / c for _, c, a in rounds)
    print(
        f"pipeline cost, median over rounds of time ratio - 1: {100 * (ratio - 1):+.2f}% "
        f"(target <= {100 * TARGET:.0f}%: {'PASS' if ratio - 1 <= TARGET else 'FAIL'}); "
        f"spread of the per-round ratios {min(p / c for p, c, _ in rounds):.3f}.."
        f"{max(p / c for p, c, _ in rounds):.3f}"
    )
    print(
        f"upper bound without any overlap (pipeline alone per batch / cached step, median of "
        f"rounds): {100 * bound:.2f}%"
    )
    print(f"load average {os.getloadavg()[0]:.2f} (1-min) at the end")


if __name__ == "__main__":
    main()

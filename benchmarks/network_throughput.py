"""Forward+backward throughput of zoo networks: what sizes a CPU study (one PGD step each).

Times the gradient of the cross-entropy with respect to the input (one PGD step's work) for each
network on one repeated random batch, compiled with `tf.function` (XLA off: slower on CPU, see
benchmarks/README.md). Networks are interleaved: every round times each network once, in an order
rotated by one place per round, and the median over rounds is reported, with every network's
cost relative to the first one's measured in the same rounds.

Example:

    python benchmarks/network_throughput.py \\
        --networks wrn-10-1,wrn-10-2,small-cnn,wrn-16-2 --rounds 5
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(_HERE))

# Before TensorFlow, so that it loads with oneDNN as dgad_tf sets it (dgad_tf.cpu).
from dgad_tf import cpu  # noqa: E402

# isort: split
import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

from dgad_tf.models import build_model  # noqa: E402


def input_gradient_step(model, y):
    @tf.function
    def step(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_mean(
                keras.losses.sparse_categorical_crossentropy(
                    y, model(x, training=False), from_logits=True
                )
            )
        return tape.gradient(loss, x)

    return step


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--networks", default="wrn-10-1,wrn-10-2,small-cnn,wrn-16-2")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--iters", type=int, default=5, help="timed steps per network per round")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.networks.split(",") if n.strip()]
    if not names or args.iters < 1 or args.rounds < 1:
        parser.error("need at least one network, --iters >= 1 and --rounds >= 1")

    keras.utils.set_random_seed(0)
    shape = (args.image_size, args.image_size, 3)
    x = tf.random.uniform((args.batch_size, *shape))
    y = tf.random.uniform((args.batch_size,), 0, 10, tf.int32)
    steps, params = {}, {}
    for name in names:
        model = build_model(name, num_classes=10, input_shape=shape)
        params[name] = model.count_params()
        steps[name] = input_gradient_step(model, y)
        steps[name](x).numpy()  # trace
    seconds = {name: [] for name in names}
    for round_index in range(args.rounds):
        order = names[round_index % len(names) :] + names[: round_index % len(names)]
        for name in order:
            start = time.perf_counter()
            for _ in range(args.iters):
                steps[name](x).numpy()
            seconds[name].append((time.perf_counter() - start) / args.iters)
    first = names[0]
    print(
        f"input-gradient step (forward + backward), batch {args.batch_size}, {shape}, "
        f"{args.iters} steps x {args.rounds} rounds (median), TF {tf.__version__}, "
        f"{os.cpu_count()} CPUs; {cpu.summary(cpu.describe())}"
    )
    print(f"{'network':12s} {'params':>9s} {'images/s':>9s} {'cost vs ' + first:>14s}")
    for name in names:
        ratios = [a / b for a, b in zip(seconds[name], seconds[first])]
        print(
            f"{name:12s} {params[name]:9d} "
            f"{args.batch_size / statistics.median(seconds[name]):9.0f} "
            f"{statistics.median(ratios):14.2f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

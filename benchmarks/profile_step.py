"""Where the time of one compiled DGAD training step goes, by timing its parts.

Each part is a `tf.function` (XLA off, as the train step) built from the same models and the
distiller's own methods, run on the same batch:

* `full step`: `AdversarialDistiller.train_on_batch` (trace excluded);
* `train_function`: the compiled step without `train_on_batch`'s Python wrapper and its
  conversion of the logs to NumPy (the per-step host round trip);
* `attack`: `distiller.adversarial_examples` (PGD, both nets in inference mode);
* `attack step, student` / `attack step, teacher`: one forward + input gradient of one network
  in inference mode (what each network costs per PGD iteration);
* `attack step, both`: one KL-objective forward + input gradient through both networks;
* `teacher forwards`: t(x), t(x') in inference mode (two calls), and `teacher forwards,
  one call` on the concatenated batch (equal outputs in inference mode);
* `student train fwd+bwd`: the two training-mode student forwards, the DGAD loss and the
  gradient of the student's variables (no update);
* `update`: `optimizer.apply` of fixed gradients;
* `metrics`: the distiller's `_update_train_metrics` on fixed forwards.

Parts are timed in rounds (the order rotates every round) and reported as the median seconds
and as the median fraction of the full step measured in the same round, so the figures are
ratios within one run on a shared machine. Two candidate fixes are timed beside the parts they
would replace: the attack with a `GradientTape(watch_accessed_variables=False)` ("attack, tape
on input only") and the teacher run once on the concatenated batch.

Example:

    python benchmarks/profile_step.py --student mobilenetv2 --teacher resnet-18 --rounds 5
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

from dgad_tf import attacks, losses  # noqa: E402
from dgad_tf.attacks import PGD  # noqa: E402
from dgad_tf.distiller import AdversarialDistiller  # noqa: E402
from dgad_tf.models import build_model  # noqa: E402
from dgad_tf.optim import TorchSGD  # noqa: E402

INPUT_SHAPE = (32, 32, 3)
NUM_CLASSES = 10


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--student", default="mobilenetv2")
    parser.add_argument("--teacher", default="resnet-18")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def _pgd_untracked(x, objective, eps, step_size, steps, init_std):
    """`attacks.pgd` with the tape watching the input only (candidate fix, measured here)."""
    x = tf.stop_gradient(x)

    def step(i, x_adv):
        with tf.GradientTape(watch_accessed_variables=False) as tape:
            tape.watch(x_adv)
            loss = tf.reduce_sum(objective(x_adv))
        grad = tape.gradient(loss, x_adv)
        x_adv = x_adv + step_size * tf.sign(grad)
        return i + 1, tf.clip_by_value(tf.clip_by_value(x_adv, x - eps, x + eps), 0.0, 1.0)

    start = tf.clip_by_value(x + init_std * tf.random.normal(tf.shape(x)), 0.0, 1.0)
    _, x_adv = tf.while_loop(
        lambda i, _: i < steps, step, (tf.constant(0), start), parallel_iterations=1
    )
    return x_adv


def build_parts(args):
    keras.utils.set_random_seed(args.seed)
    teacher = build_model(args.teacher, NUM_CLASSES, INPUT_SHAPE, name_prefix="teacher_")
    student = build_model(args.student, NUM_CLASSES, INPUT_SHAPE, name_prefix="student_")
    distiller = AdversarialDistiller(
        teacher=teacher, student=student, loss=losses.DGAD(), attack=PGD(steps=args.steps)
    )
    distiller.compile(optimizer=TorchSGD(0.1), jit_compile=False)
    rng = np.random.default_rng(args.seed)
    x = tf.constant(rng.random((args.batch_size,) + INPUT_SHAPE, dtype=np.float32))
    y = tf.constant(rng.integers(0, NUM_CLASSES, size=args.batch_size), tf.int32)
    distiller.train_on_batch(x, y)  # builds the optimiser and traces the step
    x_adv = tf.clip_by_value(x + 8 / 255 * tf.sign(tf.random.normal(tf.shape(x))), 0.0, 1.0)

    def input_grad(fn):
        @tf.function
        def part():
            with tf.GradientTape() as tape:
                tape.watch(x_adv)
                loss = tf.reduce_sum(fn(x_adv))
            return tape.gradient(loss, x_adv)

        return part

    def softmax_of(model):
        return lambda z: tf.nn.log_softmax(model(z, training=False))[:, 0]

    kl = attacks.kl_objective(distiller._teacher_fn, distiller._student_fn)

    @tf.function
    def attack():
        return distiller.adversarial_examples(x, y)

    @tf.function
    def attack_untracked():
        return _pgd_untracked(x, kl, 8 / 255, 2 / 255, args.steps, 0.001)

    @tf.function
    def teacher_two_calls():
        return teacher(x, training=False), teacher(x_adv, training=False)

    @tf.function
    def teacher_one_call():
        both = teacher(tf.concat([x, x_adv], 0), training=False)
        return tf.split(both, 2)

    t_clean, t_adv = teacher_two_calls()

    @tf.function
    def student_train():
        with tf.GradientTape() as tape:
            s_clean = student(x, training=True)
            s_adv = student(x_adv, training=True)
            loss = losses.dgad_loss(s_clean, s_adv, t_clean, t_adv, y)["total"]
        return tape.gradient(loss, student.trainable_variables)

    grads = student_train()

    @tf.function
    def update():
        distiller.optimizer.apply(grads, student.trainable_variables)

    s_fixed = student(x, training=False)
    terms = losses.dgad_loss(s_fixed, s_fixed, t_clean, t_adv, y)
    forwards = dict(y=y, s_clean=s_fixed, s_adv=s_fixed, t_clean=t_clean, t_adv=t_adv)

    @tf.function
    def metrics():
        distiller._update_train_metrics(terms, forwards, x, y, tf.shape(y)[0], 1)

    train_function = distiller.train_function
    data = (x, y)

    def call_train_function():
        # The compiled step on an iterator of one batch, without NumPy conversion of the logs.
        logs = train_function(iter([data]))
        return logs

    parts = {
        "full step": lambda: distiller.train_on_batch(x, y),
        "train_function": call_train_function,
        "attack": attack,
        "attack, tape on input only": attack_untracked,
        "attack step, student": input_grad(softmax_of(student)),
        "attack step, teacher": input_grad(softmax_of(teacher)),
        "attack step, both": input_grad(kl),
        "teacher forwards": teacher_two_calls,
        "teacher forwards, one call": teacher_one_call,
        "student train fwd+bwd": student_train,
        "update": update,
        "metrics": metrics,
    }
    return parts


def _run(fn):
    out = fn()
    # Wait for the result: read one element of every output tensor.
    for value in tf.nest.flatten(out):
        if isinstance(value, tf.Tensor):
            np.asarray(tf.reshape(value, [-1])[:1])
    return out


def main(argv=None):
    args = parse_args(argv)
    parts = build_parts(args)
    for fn in parts.values():  # trace and warm every part
        _run(fn)
        _run(fn)
    names = list(parts)
    seconds = {n: [] for n in names}
    fractions = {n: [] for n in names}
    load_before = os.getloadavg()
    for r in range(args.rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        this_round = {}
        for name in order:
            start = time.perf_counter()
            _run(parts[name])
            this_round[name] = time.perf_counter() - start
        for name in names:
            seconds[name].append(this_round[name])
            fractions[name].append(this_round[name] / this_round["full step"])
        print(f"round {r}: full step {this_round['full step']:.3f} s", flush=True)
    print(
        f"\n{args.student} <- {args.teacher}, batch {args.batch_size}, {args.steps} PGD steps, "
        f"{args.rounds} rounds; TF {tf.__version__}, intra-op threads "
        f"{tf.config.threading.get_intra_op_parallelism_threads() or os.cpu_count()}"
    )
    print(f"{'part':<30}{'median s':>10}{'x full step (median)':>24}")
    for name in names:
        print(
            f"{name:<30}{statistics.median(seconds[name]):10.4f}"
            f"{statistics.median(fractions[name]):24.4f}"
        )
    print(f"load average before {load_before[0]:.2f}, after {os.getloadavg()[0]:.2f} (1-min)")


if __name__ == "__main__":
    main()

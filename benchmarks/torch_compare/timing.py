"""The timed steps and their alternating rounds, equal thread counts, the shared arguments."""

import os
import statistics
import time

import numpy as np
import torch

from .bridge import keras_from_torch, make_distiller
from .dgad import TorchDGADStep
from .nets import TORCH_NETS, build_torch_net
from .settings import INPUT_SHAPE, NUM_CLASSES


def set_threads(threads):
    """The same intra-op and inter-op thread counts for both frameworks."""
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)
    torch.set_num_threads(threads)
    torch.set_num_interop_threads(threads)


def _sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


# The precisions `--precision` offers: ours as a Keras policy, PyTorch's autocast dtype.
PRECISIONS = {"float32": None, "mixed_bfloat16": torch.bfloat16}


def build_steps(
    student_arch, teacher_arch, steps, seed, device, precision="float32", channels_last=False
):
    """(our distiller, the PyTorch step) from the same converted weights, attack start on.

    `precision`: a key of `PRECISIONS`: our networks under that Keras policy
    (`dgad_tf.precision.with_policy`), PyTorch's under `torch.autocast` to the same dtype.
    `channels_last`: PyTorch's networks and batches in `torch.channels_last` memory format
    (NHWC, the layout ours uses), after the weights were converted.
    """
    from dgad_tf.precision import with_policy

    torch_student = build_torch_net(student_arch, seed + 1, device)
    torch_teacher = build_torch_net(teacher_arch, seed, device)
    student = with_policy(keras_from_torch(torch_student, student_arch, "student_"), precision)
    teacher = with_policy(keras_from_torch(torch_teacher, teacher_arch, "teacher_"), precision)
    distiller = make_distiller(student, teacher, steps, attack_init="gaussian")
    if channels_last:
        torch_student = torch_student.to(memory_format=torch.channels_last)
        torch_teacher = torch_teacher.to(memory_format=torch.channels_last)
    step = TorchDGADStep(
        torch_student, torch_teacher, steps, PRECISIONS[precision], channels_last=channels_last
    )
    return distiller, step


def random_batch(batch_size, seed):
    """The timed batch: uniform images (N, H, W, C) float32 and int64 labels."""
    rng = np.random.default_rng(seed + 7)
    x = rng.random((batch_size,) + INPUT_SHAPE, dtype=np.float32)
    return x, rng.integers(0, NUM_CLASSES, size=batch_size).astype(np.int64)


def torch_batch(x, y, device):
    """`random_batch`'s arrays as PyTorch NCHW tensors on `device`."""
    return (
        torch.from_numpy(x.transpose(0, 3, 1, 2).copy()).to(device),
        torch.from_numpy(y).to(device),
    )


def time_config(student_arch, teacher_arch, args, device):
    """Alternating rounds of our step and the PyTorch step; returns the per-round timings."""
    import tensorflow as tf

    distiller, step = build_steps(
        student_arch,
        teacher_arch,
        args.steps,
        args.seed,
        device,
        args.precision,
        args.torch_channels_last,
    )
    x, y = random_batch(args.batch_size, args.seed)
    x_tf, y_tf = tf.constant(x), tf.constant(y)
    x_t, y_t = torch_batch(x, y, device)

    def ours():
        start = time.perf_counter()
        for _ in range(args.iters):
            distiller.train_on_batch(x_tf, y_tf)
        return (time.perf_counter() - start) / args.iters

    def theirs():
        _sync(device)
        start = time.perf_counter()
        for _ in range(args.iters):
            step(x_t, y_t)
        _sync(device)
        return (time.perf_counter() - start) / args.iters

    started = time.perf_counter()
    distiller.train_on_batch(x_tf, y_tf)  # traces
    first_call = time.perf_counter() - started
    step(x_t, y_t)
    rounds = []
    for r in range(args.rounds):
        if r % 2 == 0:
            a, b = ours(), theirs()
        else:
            b, a = theirs(), ours()
        rounds.append(dict(ours_seconds=a, torch_seconds=b, speed_ratio=b / a))
        print(
            f"  round {r}: ours {args.batch_size / a:8.2f} img/s, pytorch "
            f"{args.batch_size / b:8.2f} img/s, ours/pytorch {b / a:.3f}",
            flush=True,
        )
    ours_ips = statistics.median(args.batch_size / r["ours_seconds"] for r in rounds)
    torch_ips = statistics.median(args.batch_size / r["torch_seconds"] for r in rounds)
    return dict(
        rounds=rounds,
        first_call_seconds=first_call,
        ours_images_per_second=ours_ips,
        torch_images_per_second=torch_ips,
        ratio_of_medians=ours_ips / torch_ips,
        median_of_paired_ratios=statistics.median(r["speed_ratio"] for r in rounds),
    )


def finish_args(parser, args):
    """Split `--configs` into (student, teacher) pairs, check the counts, default `--threads`.

    Shared by `vs_pytorch.py` and `kernel_time.py`, whose arguments carry the same names.
    """
    args.configs = [tuple(c.split(":")) for c in args.configs.split(",") if c]
    for pair in args.configs:
        if len(pair) != 2 or any(a not in TORCH_NETS for a in pair):
            parser.error(
                f"`--configs` entries must be student:teacher from "
                f"{', '.join(TORCH_NETS)}; received {':'.join(pair)!r}"
            )
    if min(args.rounds, args.iters, args.batch_size) < 1 or args.steps < 0:
        parser.error("`--rounds`, `--iters`, `--batch-size` must be >= 1, `--steps` >= 0")
    if args.threads is None:
        args.threads = (
            len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        )
    return args

"""The DGAD training step in Keras/TensorFlow against the same step written in PyTorch.

Both sides do the same work from the same weights:

* networks: kuangliu's CIFAR ResNet-18 / MobileNetV2 and TRADES' WRN-34-10 written here in
  PyTorch (default PyTorch initialisation, batch-norm statistics calibrated on random images so
  that inference mode is not degenerate), converted into `dgad_tf.models` networks with
  `dgad_tf.teachers.conversion.convert_state_dict`; parameter counts are checked equal;
* attack: PGD on sum_i KL(t(x'_i) || s(x'_i)) from x + 0.001 N(0, I) (clipped), `--steps` steps
  of 2/255 in the 8/255 ball, both networks in inference mode, gradients to x' only;
* forwards: student in training mode on x, then on x' (two calls), teacher in inference mode
  without gradient;
* loss: DGAD section 6 (MAP, ELS, PCR with beta 1), normalised by the batch;
* update: SGD lr 0.1, momentum 0.9, weight decay 5e-4 added to the gradient (torch.optim.SGD;
  `dgad_tf.optim.TorchSGD` on our side).

Ours is `AdversarialDistiller.train_on_batch` (the compiled Keras train step, XLA as
`train.jit_compile: auto` sets it: off on CPU, where XLA is slower, see docs/training.md; on with a
GPU). PyTorch's side is NCHW float32 by default; `--precision mixed_bfloat16` runs both sides in
bfloat16 (Keras policy / `torch.autocast`), `--torch-channels-last` gives PyTorch the
channels_last memory format (NHWC, as ours), the two settings a tuned PyTorch loop adds. Before
timing, `check_one_step` (torch_compare/parity.py) compares the two sides from
identical weights with the attack's random start switched off (the only random op of the step):
the first PGD step pixel by pixel, the objective the full attack reaches, and one training step
(forwards, loss, gradient, update) from the same x' -- the loss to `LOSS_TOLERANCE`, every
variable's update to `WEIGHT_RTOL` (relative RMS), the batch-norm statistics reported. If a check
fails, no ratio is printed for that configuration.

Timing: rounds alternate the two sides (the order flips every round, ABBA), `--iters` steps per
side per round, so load swings on the shared machine hit both; the speed ratio ours/PyTorch is
reported as the median of the per-round ratios and as the ratio of the median images/s.
PyTorch's intra-op threads are set to TensorFlow's (`--threads`, default: the CPUs this
process may use), and both inter-op pools to the same count.

This file is the command line; the two sides live in benchmarks/torch_compare/, one concept a
module: settings.py (the step's settings above), nets.py (the PyTorch networks), dgad.py (the
PyTorch step, `TorchDGADStep`), bridge.py (our networks from PyTorch's weights, our compiled
step), parity.py (the check), gradients.py (`--gradient-check`), timing.py (threads, the timed
steps and batch, the alternating rounds).

Example:

    python benchmarks/vs_pytorch.py --quick
    python benchmarks/vs_pytorch.py --configs resnet-18:resnet-18 --rounds 7
    python benchmarks/vs_pytorch.py --quick --torch-channels-last
    python benchmarks/vs_pytorch.py --paper --precision mixed_bfloat16 --torch-channels-last
    python benchmarks/vs_pytorch.py --gradient-check resnet-18 [--smooth]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, _HERE)
sys.path.insert(0, os.path.dirname(_HERE))

# Before TensorFlow, so that it loads with oneDNN as dgad_tf sets it (dgad_tf.cpu).
from dgad_tf import cpu  # noqa: E402

# isort: split
import torch  # noqa: E402
from torch_compare.gradients import gradient_agreement  # noqa: E402
from torch_compare.parity import (  # noqa: E402
    ATTACK_STEP_TOLERANCE,
    LOSS_TOLERANCE,
    WEIGHT_RTOL,
    check_one_step,
)
from torch_compare.timing import PRECISIONS, finish_args, set_threads, time_config  # noqa: E402

CPU_CONFIGS = ("mobilenetv2:resnet-18", "resnet-18:resnet-18")
PAPER_CONFIG = "resnet-18:wrn-34-10"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--configs", default=",".join(CPU_CONFIGS), help="comma-separated student:teacher pairs"
    )
    parser.add_argument(
        "--paper", action="store_true", help=f"{PAPER_CONFIG} at batch 128 (needs a GPU)"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="3 rounds of 1 step per side (under 10 minutes on 2 CPUs)",
    )
    parser.add_argument("--batch-size", type=int, default=None, help="default 32 (128 --paper)")
    parser.add_argument("--steps", type=int, default=10, help="PGD steps")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--iters", type=int, default=2, help="steps per side per round")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="intra-op threads of both frameworks (default: usable CPUs)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--precision",
        choices=sorted(PRECISIONS),
        default="float32",
        help="precision of the timed steps: ours under the Keras policy, PyTorch under "
        "torch.autocast to the same dtype (the equality check always runs in float32)",
    )
    parser.add_argument(
        "--torch-channels-last",
        action="store_true",
        help="time PyTorch with its networks and batches in channels_last memory format "
        "(NHWC; the equality check runs in the default NCHW)",
    )
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    parser.add_argument(
        "--gradient-check",
        default=None,
        metavar="ARCH",
        help="only compare one training-mode forward's weight gradients under a "
        "linear loss for ARCH (see gradient_agreement), then exit",
    )
    parser.add_argument(
        "--smooth",
        action="store_true",
        help="with --gradient-check: softplus in place of every ReLU, on all sides",
    )
    args = parser.parse_args(argv)
    if args.paper:
        args.configs = PAPER_CONFIG
        args.batch_size = args.batch_size or 128
    if args.quick:
        args.rounds, args.iters = 3, 1
    args.batch_size = args.batch_size or 32
    return finish_args(parser, args)


def main(argv=None) -> int:
    args = parse_args(argv)
    set_threads(args.threads)
    import keras
    import tensorflow as tf

    if args.gradient_check:
        gap, gaps = gradient_agreement(
            args.gradient_check, args.batch_size, args.seed, smooth=args.smooth
        )
        print(
            f"{args.gradient_check}{' with softplus for ReLU' if args.smooth else ''}, batch "
            f"{args.batch_size}, linear loss on one training-mode "
            f"forward: max |logit gap| ours-torch {gap:.2e}; weight gradients, "
            f"max|diff| / max|float64 gradient| per variable:"
        )
        for column, label in (
            (1, "ours vs torch (float32)"),
            (2, "ours vs float64"),
            (3, "torch vs float64"),
        ):
            worst = max(gaps, key=lambda item: item[column])
            print(
                f"  {label:<24} median {statistics.median(g[column] for g in gaps):.2e}, "
                f"worst {worst[column]:.2e} ({worst[0]})"
            )
        return 0
    gpus = tf.config.list_physical_devices("GPU")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.paper and not (gpus and device == "cuda"):
        print("--paper needs a GPU visible to both TensorFlow and PyTorch; none found.")
        return 2
    load_before = os.getloadavg()
    started = time.time()
    print(
        f"TF {tf.__version__} (intra-op {tf.config.threading.get_intra_op_parallelism_threads()}"
        f", inter-op {tf.config.threading.get_inter_op_parallelism_threads()}), Keras "
        f"{keras.__version__}; torch {torch.__version__} (threads {torch.get_num_threads()}, "
        f"interop {torch.get_num_interop_threads()}); device {device}; "
        f"batch {args.batch_size}, {args.steps} PGD steps, timed in {args.precision}"
        f"{', PyTorch channels_last' if args.torch_channels_last else ''}, "
        f"{args.rounds} rounds x "
        f"{args.iters} steps per side",
        flush=True,
    )
    machine = cpu.describe()
    print(cpu.summary(machine), flush=True)
    report = dict(
        command=" ".join(["python", "benchmarks/vs_pytorch.py"] + sys.argv[1:]),
        machine=dict(
            tensorflow=tf.__version__,
            torch=torch.__version__,
            threads=args.threads,
            precision=args.precision,
            torch_channels_last=args.torch_channels_last,
            cpu_count=os.cpu_count(),
            device=device,
            platform=platform.platform(),
            **machine,
        ),
        configs={},
    )
    status = 0
    for student_arch, teacher_arch in args.configs:
        name = f"{student_arch} <- {teacher_arch}"
        print(
            f"\n{name}: checking the attack and one step (attack start off on both sides)",
            flush=True,
        )
        check = check_one_step(
            student_arch, teacher_arch, args.batch_size, args.steps, args.seed, device
        )
        print(
            f"  parameters: student ours {check['params_ours']:,} / torch "
            f"{check['params_torch']:,}; teacher ours {check['teacher_params_ours']:,} / "
            f"torch {check['teacher_params_torch']:,}"
        )
        print(
            f"  attack from x, first step: {100 * check['one_step_fraction_differing']:.4f}% "
            f"of pixels differ (tolerance {100 * ATTACK_STEP_TOLERANCE:g}%); after "
            f"{args.steps} steps {100 * check['x_adv_fraction_differing']:.2f}% differ, "
            f"objective sum KL ours {check['attack_objective_ours']:.5f}, torch "
            f"{check['attack_objective_torch']:.5f}"
        )
        print(
            f"  training step from the same x': loss ours {check['loss_ours']:.7f}, torch "
            f"{check['loss_torch']:.7f}, |diff| {check['loss_abs_diff']:.2e} (tolerance "
            f"{LOSS_TOLERANCE:g})"
        )
        print(
            f"  weight updates: worst relative RMS difference {check['update_max_rel_diff']:.2e}"
            f" ({check['update_worst_variable']}; tolerance {WEIGHT_RTOL:g}: "
            f"{'ok' if check['weights_ok'] else 'EXCEEDED'}); updated weights max |diff| "
            f"trainable {check['max_abs_diff']['trainable']:.2e}, moving mean "
            f"{check['max_abs_diff']['moving_mean']:.2e}, moving variance "
            f"{check['max_abs_diff']['moving_variance']:.2e} (max relative "
            f"{check['moving_variance_max_rel_diff']:.2e})"
        )
        entry = dict(check=check)
        report["configs"][name] = entry
        if not check["passed"] or check["params_ours"] != check["params_torch"]:
            print(f"  CHECK FAILED: the two steps do not do the same work; no ratio for {name}.")
            status = 1
            continue
        print(
            "  check passed; timing (ours first in even rounds, PyTorch first in odd) ...",
            flush=True,
        )
        timing = time_config(student_arch, teacher_arch, args, device)
        entry["timing"] = timing
        print(
            f"  {name}, batch {args.batch_size}: ours {timing['ours_images_per_second']:.2f} "
            f"img/s, pytorch {timing['torch_images_per_second']:.2f} img/s (medians); "
            f"ours/pytorch speed: median of paired rounds {timing['median_of_paired_ratios']:.3f},"
            f" ratio of medians {timing['ratio_of_medians']:.3f}; our first call "
            f"{timing['first_call_seconds']:.1f} s",
            flush=True,
        )
    report["loadavg_before"] = list(load_before)
    report["loadavg_after"] = list(os.getloadavg())
    report["wall_seconds"] = time.time() - started
    print(
        f"\nload average before {load_before[0]:.2f}, after {os.getloadavg()[0]:.2f} (1-min); "
        f"wall time {report['wall_seconds']:.0f} s"
    )
    if args.out:
        with open(args.out, "w") as handle:
            json.dump(report, handle, indent=2)
    return status


if __name__ == "__main__":
    sys.exit(main())

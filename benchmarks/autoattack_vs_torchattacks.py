"""Our AutoAttack against torchattacks' AutoAttack: time and per-image agreement, one model.

The model is the benchmark's PyTorch small CNN (`torch_compare.nets.SmallCNN`, 66k parameters),
adversarially trained here for a short while so that it is not trivially broken (FGSM with a
uniform random start and step 1.25 eps, "fast adversarial training" of Wong et al. 2020, on the
first `--train-images` real CIFAR-10 training images), then converted to our Keras model with
`dgad_tf.teachers.convert`. Both evaluations attack the same `--n` CIFAR-10 test images with the
standard version (APGD-CE, APGD-T, FAB-T, Square 5000 queries), L-inf, eps 8/255, on the CPU:
`dgad_tf.autoattack.run_autoattack` and `torchattacks.AutoAttack(version="standard")`.

Both sides are first run once on 8 images (our first call traces the attack loops); then
`--rounds` rounds alternate the two (ours first in even rounds), and the time ratio is the
median of the per-round ratios. The robust masks of the last round are compared image by image.
Both frameworks get the same intra-op and inter-op thread counts.

Needs `pip install --no-deps torchattacks` (it must not replace the installed torch).

Example:

    python benchmarks/autoattack_vs_torchattacks.py --n 200 --rounds 2
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, _HERE)
sys.path.insert(0, os.path.dirname(_HERE))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch_compare import bridge, nets, timing  # noqa: E402

EPS = 8 / 255
DATA = os.path.join(os.path.dirname(os.path.dirname(_HERE)), "shared", "data", "cifar10")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=DATA, help="folder with train_20k.npz and test.npz")
    parser.add_argument("--n", type=int, default=200, help="test images attacked")
    parser.add_argument("--train-images", type=int, default=10000)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.threads is None:
        args.threads = len(os.sched_getaffinity(0))
    return args


def _nchw(x_uint8):
    return torch.from_numpy(
        np.ascontiguousarray(x_uint8.astype(np.float32).transpose(0, 3, 1, 2) / np.float32(255.0))
    )


def fast_adversarial_training(net, x, y, epochs, seed, batch_size=128):
    """FGSM training from a uniform start (Wong et al. 2020), lr one-cycle 0 -> 0.2 -> 0."""
    torch.manual_seed(seed)
    opt = torch.optim.SGD(net.parameters(), lr=0.0, momentum=0.9, weight_decay=5e-4)
    n = x.shape[0]
    total = epochs * (n // batch_size)
    step = 0
    for _ in range(epochs):
        order = torch.randperm(n)
        for start in range(0, n - batch_size + 1, batch_size):
            idx = order[start : start + batch_size]
            xb, yb = x[idx], y[idx]
            if torch.rand(()) < 0.5:
                xb = xb.flip(3)
            for group in opt.param_groups:
                group["lr"] = 0.2 * (1 - abs(2 * step / total - 1))
            delta = (torch.rand_like(xb) * 2 - 1) * EPS
            delta.requires_grad_(True)
            net.train()
            loss = F.cross_entropy(net((xb + delta).clamp(0, 1)), yb)
            (grad,) = torch.autograd.grad(loss, [delta])
            delta = (delta + 1.25 * EPS * grad.sign()).clamp(-EPS, EPS).detach()
            loss = F.cross_entropy(net((xb + delta).clamp(0, 1)), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
    net.eval()
    return net


def main(argv=None):
    args = parse_args(argv)
    timing.set_threads(args.threads)
    import tensorflow as tf
    import torchattacks

    from dgad_tf.autoattack import run_autoattack

    train = np.load(os.path.join(args.data, "train_20k.npz"))
    test = np.load(os.path.join(args.data, "test.npz"))
    x_train = _nchw(train["x"][: args.train_images])
    y_train = torch.from_numpy(train["y"][: args.train_images].astype(np.int64))
    x_test_u8, y_test = test["x"][: args.n], test["y"][: args.n].astype(np.int64)

    started = time.perf_counter()
    torch.manual_seed(args.seed)
    net = nets.SmallCNN()
    fast_adversarial_training(net, x_train, y_train, args.epochs, args.seed)
    print(
        f"model: small-cnn, FGSM-RS adversarial training on {args.train_images} CIFAR-10 "
        f"images x {args.epochs} epochs ({time.perf_counter() - started:.0f} s)",
        flush=True,
    )

    keras_model = bridge.keras_from_torch(net, "small-cnn", "")
    x_np = x_test_u8.astype(np.float32) / 255.0
    x_t = _nchw(x_test_u8)
    y_t = torch.from_numpy(y_test)
    with torch.no_grad():
        torch_logits = net(x_t).numpy()
    ours_logits = keras_model(x_np, training=False).numpy()
    print(
        f"converted model: max |logit diff| {np.max(np.abs(torch_logits - ours_logits)):.2e}; "
        f"clean accuracy torch {np.mean(torch_logits.argmax(1) == y_test):.3f}, ours "
        f"{np.mean(ours_logits.argmax(1) == y_test):.3f}",
        flush=True,
    )

    model_fn = tf.function(lambda z: keras_model(z, training=False))
    attack = torchattacks.AutoAttack(
        net, norm="Linf", eps=EPS, version="standard", n_classes=10, seed=args.seed
    )

    def ours(x, y):
        return run_autoattack(
            model_fn, x, y, eps=EPS, version="standard", batch_size=500, seed=args.seed
        )["robust_mask"]

    def theirs(x, y):
        adv = attack(x, y)
        with torch.no_grad():
            return (net(adv).argmax(1) == y).numpy()

    ours(x_np[:8], y_test[:8])
    theirs(x_t[:8], y_t[:8])
    rounds = []
    for r in range(args.rounds):
        timed = {}
        for side in ("ours", "torchattacks") if r % 2 == 0 else ("torchattacks", "ours"):
            start = time.perf_counter()
            mask = ours(x_np, y_test) if side == "ours" else theirs(x_t, y_t)
            timed[side] = (time.perf_counter() - start, mask)
        ratio = timed["torchattacks"][0] / timed["ours"][0]
        rounds.append((timed, ratio))
        print(
            f"round {r}: ours {timed['ours'][0]:.1f} s (robust "
            f"{timed['ours'][1].mean():.3f}), torchattacks {timed['torchattacks'][0]:.1f} s "
            f"(robust {timed['torchattacks'][1].mean():.3f}); torchattacks/ours time "
            f"{ratio:.3f}",
            flush=True,
        )
    ours_mask, theirs_mask = rounds[-1][0]["ours"][1], rounds[-1][0]["torchattacks"][1]
    agree = ours_mask == theirs_mask
    print(f"\n{args.n} test images, eps 8/255, standard AutoAttack, threads {args.threads}:")
    print(f"robust accuracy ours {ours_mask.mean():.3f}, torchattacks {theirs_mask.mean():.3f}")
    print(
        f"per-image agreement of the robust masks {agree.mean():.3f} "
        f"({int((~agree).sum())} images differ: robust only for ours "
        f"{int((ours_mask & ~theirs_mask).sum())}, only for torchattacks "
        f"{int((theirs_mask & ~ours_mask).sum())})"
    )
    print(
        f"time torchattacks/ours, median of {args.rounds} paired rounds: "
        f"{statistics.median(r[1] for r in rounds):.3f} (> 1: ours faster)"
    )
    print(f"load average {os.getloadavg()[0]:.2f} (1-min) at the end")


if __name__ == "__main__":
    main()

"""The DGAD training step in Keras/TensorFlow against the same step written in PyTorch.

Both sides do the same work from the same weights:

* networks: kuangliu's CIFAR ResNet-18 / MobileNetV2 and TRADES' WRN-34-10 written here in
  PyTorch (default PyTorch initialisation, batch-norm statistics calibrated on random images so
  that inference mode is not degenerate), converted into `dgad_tf.models` networks with
  `dgad_tf.teachers.convert.convert_state_dict`; parameter counts are checked equal;
* attack: PGD on sum_i KL(t(x'_i) || s(x'_i)) from x + 0.001 N(0, I) (clipped), `--steps` steps
  of 2/255 in the 8/255 ball, both networks in inference mode, gradients to x' only;
* forwards: student in training mode on x, then on x' (two calls), teacher in inference mode
  without gradient;
* loss: DGAD section 6 (MAP, ELS, PCR with beta 1), normalised by the batch;
* update: SGD lr 0.1, momentum 0.9, weight decay 5e-4 added to the gradient (torch.optim.SGD;
  `dgad_tf.optim.TorchSGD` on our side).

Ours is `AdversarialDistiller.train_on_batch` (the compiled Keras train step, XLA as
`train.jit_compile: auto` sets it: off on CPU, where XLA is slower, see README.md; on with a
GPU). PyTorch's side is NCHW float32 by default; `--precision mixed_bfloat16` runs both sides in
bfloat16 (Keras policy / `torch.autocast`), `--torch-channels-last` gives PyTorch the
channels_last memory format (NHWC, as ours), the two settings a tuned PyTorch loop adds. Before
timing, `check_one_step` compares the two sides from
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

Example:

    python benchmarks/vs_pytorch.py --quick
    python benchmarks/vs_pytorch.py --configs resnet-18:resnet-18 --rounds 7
    python benchmarks/vs_pytorch.py --quick --torch-channels-last
    python benchmarks/vs_pytorch.py --paper --precision mixed_bfloat16 --torch-channels-last
    python benchmarks/vs_pytorch.py --gradient-check resnet-18 [--smooth]
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import platform
import statistics
import sys
import time

import numpy as np

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(_HERE))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from dgad_tf.teachers.torch_reference import NETWORKS, count_parameters  # noqa: E402

EPS = 8 / 255
STEP_SIZE = 2 / 255
INIT_STD = 0.001
LR, MOMENTUM, WEIGHT_DECAY, BETA = 0.1, 0.9, 5e-4, 1.0
NUM_CLASSES = 10
INPUT_SHAPE = (32, 32, 3)
# One step from equal weights must give the same loss to this (absolute) ...
LOSS_TOLERANCE = 1e-4
# ... and the same update of every trainable variable to this relative RMS error:
# rms(update_ours - update_torch) <= WEIGHT_RTOL * max(rms(update_torch), rms of the whole
# model's update). Not tighter: the logits of the two frameworks agree to ~1e-6 (float32
# summation order); the DGAD gradient with respect to the logits is a difference of nearly
# equal student and teacher probabilities, which turns that into ~0.1-1% relative differences of
# ResNet-18's weight gradients (a linear loss on the same forward: ~1e-6), and the freshly
# initialised MobileNetV2's early-layer gradients differ by ~1-4% even for a linear loss on one
# training-mode forward (measured; see benchmarks/README.md). The floor at the model's
# RMS update covers variables whose true gradient is zero (the offset of a batch norm whose
# output feeds a convolution and a training-mode batch norm, which removes any offset), where
# only rounding and weight decay remain.
WEIGHT_RTOL = 5e-2
# The first PGD step from the same point may differ (by rounding of near-zero gradients) on at
# most this fraction of the pixels.
ATTACK_STEP_TOLERANCE = 1e-3
CPU_CONFIGS = ("mobilenetv2:resnet-18", "resnet-18:resnet-18")
PAPER_CONFIG = "resnet-18:wrn-34-10"


# ----------------------------------------------------------------- PyTorch networks (reference)


class SmallCNN(nn.Module):
    """`dgad_tf.models.small`'s four-conv CNN (for the CI-sized test)."""

    def __init__(self, num_classes=NUM_CLASSES):
        super().__init__()
        widths = (32, 32, 64, 64)
        in_ch = 3
        for i, width in enumerate(widths, start=1):
            setattr(self, f"conv{i}", nn.Conv2d(in_ch, width, 3, 1, 1, bias=False))
            setattr(self, f"bn{i}", nn.BatchNorm2d(width))
            in_ch = width
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x):
        for i in range(1, 5):
            x = F.relu(getattr(self, f"bn{i}")(getattr(self, f"conv{i}")(x)))
            if i in (2, 4):
                x = F.max_pool2d(x, 2)
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


# The zoo's networks in the public PyTorch layouts the converter reads (kuangliu, TRADES).
TORCH_NETS = {
    "small-cnn": SmallCNN,
    **{
        arch: functools.partial(NETWORKS[arch], NUM_CLASSES)
        for arch in ("resnet-18", "mobilenetv2", "wrn-34-10")
    },
}


def build_torch_net(arch: str, seed: int, device="cpu") -> nn.Module:
    """A PyTorch network with default init and batch-norm statistics calibrated on noise.

    The running statistics are the cumulative mean over four training-mode forwards of
    uniform images (so inference mode normalises to about unit scale, as in a trained network).
    """
    torch.manual_seed(seed)
    net = TORCH_NETS[arch]()
    bns = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    for bn in bns:
        bn.momentum = None  # cumulative average
    net.train()
    with torch.no_grad():
        for _ in range(4):
            net(torch.rand(16, 3, 32, 32))
    for bn in bns:
        bn.momentum = 0.1
        bn.num_batches_tracked.zero_()
    return net.eval().to(device)


# ----------------------------------------------------------------- the PyTorch DGAD step


def kl_per_sample(p_logits, q_logits):
    """KL(softmax(p) || softmax(q)) per row."""
    log_p = F.log_softmax(p_logits, dim=1)
    return (log_p.exp() * (log_p - F.log_softmax(q_logits, dim=1))).sum(dim=1)


def _swap(logits, labels, other, mask):
    """Swaps logit[y] and logit[other] in the rows where `mask` holds."""
    true_logit = logits.gather(1, labels[:, None])
    other_logit = logits.gather(1, other[:, None])
    mask = mask[:, None]
    out = logits.clone()
    out.scatter_(1, labels[:, None], torch.where(mask, other_logit, true_logit))
    out.scatter_(1, other[:, None], torch.where(mask, true_logit, other_logit))
    return out


def dgad_loss_torch(s_clean, s_adv, t_clean, t_adv, labels, beta=BETA):
    """DGAD section 6: MAP + ELS on logits + PCR, normalised by the batch (as the method doc)."""
    batch, num_classes = s_clean.shape
    prediction = t_clean.argmax(dim=1)
    misclassified = prediction != labels  # MAP
    t_clean = _swap(t_clean, labels, prediction, misclassified)  # ELS, clean
    others = t_adv.scatter(1, labels[:, None], float("-inf"))
    best_other = others.argmax(dim=1)
    needs_swap = t_adv.gather(1, labels[:, None])[:, 0] < others.max(dim=1).values
    t_adv = _swap(t_adv, labels, best_other, needs_swap)  # ELS, adversarial
    kl = torch.where(misclassified, kl_per_sample(t_clean, s_clean), kl_per_sample(t_adv, s_adv))
    pcr = F.mse_loss(F.softmax(s_adv, dim=1), F.softmax(s_clean, dim=1), reduction="sum")
    return kl.sum() / batch + beta * pcr / (batch * num_classes)


def pgd_kl_torch(student, teacher, x, steps, init_noise=True, autocast=None):
    """The DGAD inner maximisation, both networks in eval mode, gradients to x' only.

    `autocast`: None (float32), or a torch dtype the networks run in under `torch.autocast`
    (the KL and the sign step stay float32, as on our side).
    """
    student.eval()
    x_adv = x.detach()
    if init_noise:
        x_adv = (x_adv + INIT_STD * torch.randn_like(x_adv)).clamp(0.0, 1.0)
    for _ in range(steps):
        x_adv.requires_grad_(True)
        with _autocast(x, autocast):
            s_logits, t_logits = student(x_adv), teacher(x_adv)
        loss = F.kl_div(
            F.log_softmax(s_logits.float(), dim=1),
            F.softmax(t_logits.float(), dim=1),
            reduction="sum",
        )
        (grad,) = torch.autograd.grad(loss, [x_adv])
        x_adv = x_adv.detach() + STEP_SIZE * grad.sign()
        x_adv = torch.min(torch.max(x_adv, x - EPS), x + EPS).clamp(0.0, 1.0)
    student.train()
    return x_adv.detach()


def _autocast(x, dtype):
    """`torch.autocast` to `dtype` on x's device; a no-op context for None (float32)."""
    return torch.autocast(x.device.type, dtype=dtype, enabled=dtype is not None)


class TorchDGADStep:
    """One DGAD training step in idiomatic PyTorch (what a reference training loop does).

    `autocast`: None (float32), or torch.bfloat16 to run the networks under `torch.autocast`
    (PyTorch's mixed precision; losses on float32 logits). `channels_last`: the networks are
    expected in `torch.channels_last` memory format, and each batch is converted to it on entry,
    as a PyTorch training loop tuned for speed does.
    """

    def __init__(self, student, teacher, steps, autocast=None, channels_last=False):
        self.student, self.teacher, self.steps = student, teacher, steps
        self.autocast, self.channels_last = autocast, channels_last
        self.teacher.eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.optimizer = torch.optim.SGD(
            student.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY
        )

    def __call__(self, x, y, init_noise=True, x_adv=None):
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if x_adv is None:
            x_adv = pgd_kl_torch(
                self.student, self.teacher, x, self.steps, init_noise, self.autocast
            )
        self.student.train()
        with _autocast(x, self.autocast):
            s_clean = self.student(x)
            s_adv = self.student(x_adv)
            with torch.no_grad():
                t_clean = self.teacher(x)
                t_adv = self.teacher(x_adv)
        logits = (s_clean, s_adv, t_clean, t_adv)
        loss = dgad_loss_torch(*(z.float() for z in logits), y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return loss.item()


# ----------------------------------------------------------------- our side


def keras_from_torch(net: nn.Module, arch: str, prefix: str):
    """Our model for `arch` with the weights of `net`, converted by `dgad_tf.teachers.convert`."""
    from dgad_tf.models import build_model
    from dgad_tf.teachers.convert import convert_state_dict

    state = {k: v.detach().cpu().numpy() for k, v in net.state_dict().items()}
    converted, _ = convert_state_dict(state, arch, NUM_CLASSES)
    # Student and teacher live in one Keras model: give each its own layer names.
    model = build_model(arch, NUM_CLASSES, INPUT_SHAPE, name_prefix=prefix)
    model.set_weights(converted.get_weights())
    return model


def make_distiller(student, teacher, steps, attack_init):
    """Our compiled DGAD step with the benchmark's settings, XLA as `train.jit_compile: auto`."""
    from dgad_tf.attacks import PGD
    from dgad_tf.distiller import AdversarialDistiller
    from dgad_tf.losses import DGAD
    from dgad_tf.optim import TorchSGD
    from dgad_tf.precision import resolve_jit_compile

    distiller = AdversarialDistiller(
        teacher=teacher,
        student=student,
        loss=DGAD(beta=BETA),
        attack=PGD(
            eps=EPS, step_size=STEP_SIZE, steps=steps, start=attack_init, start_std=INIT_STD
        ),
    )
    distiller.compile(
        optimizer=TorchSGD(LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY),
        jit_compile=resolve_jit_compile("auto"),
    )
    return distiller


def count_params(net: nn.Module) -> int:
    return count_parameters(net)


def _weight_groups(model):
    """(name, array, kind) for every weight of `model`; kind: trainable/moving_mean/moving_var."""
    out = []
    trainable = {id(v) for v in model.trainable_weights}
    for v in model.weights:
        path = v.path
        kind = (
            "trainable"
            if id(v) in trainable
            else "moving_mean"
            if path.endswith("moving_mean")
            else "moving_variance"
            if path.endswith("moving_variance")
            else "other"
        )
        out.append((path, np.asarray(v.numpy()), kind))
    return out


def _kl_sum_torch(student, teacher, x_adv):
    with torch.no_grad():
        student.eval()
        value = F.kl_div(
            F.log_softmax(student(x_adv), dim=1), F.softmax(teacher(x_adv), dim=1), reduction="sum"
        ).item()
        student.train()
    return value


def check_one_step(student_arch, teacher_arch, batch_size, steps, seed=0, device="cpu"):
    """Compares the two sides' attacks and one training step from the same weights.

    The attacks start at x on both sides (init "none": the random start is the step's only
    random op, and the frameworks cannot draw the same noise). Their first PGD step must agree on
    all but `ATTACK_STEP_TOLERANCE` of the pixels; after `steps` steps the trajectories may part
    (the sign of a near-zero gradient component can differ by rounding, and PGD amplifies that),
    so the full attacks are compared by the objective they reach. The training step (forwards,
    loss, gradient, update) then runs on both sides from PyTorch's x' and must give the same loss
    to `LOSS_TOLERANCE` and the same updated weights (see `WEIGHT_RTOL`).

    Returns:
        dict of the measured differences and `passed`.
    """
    import tensorflow as tf

    from dgad_tf import attacks

    torch_student = build_torch_net(student_arch, seed + 1, device)
    torch_teacher = build_torch_net(teacher_arch, seed, device)
    student = keras_from_torch(torch_student, student_arch, "student_")
    teacher = keras_from_torch(torch_teacher, teacher_arch, "teacher_")
    start_weights = {path: w for path, w, _ in _weight_groups(student)}
    rng = np.random.default_rng(seed)
    x = rng.random((batch_size,) + INPUT_SHAPE, dtype=np.float32)
    y = rng.integers(0, NUM_CLASSES, size=batch_size).astype(np.int64)
    x_t = torch.from_numpy(x.transpose(0, 3, 1, 2).copy()).to(device)
    y_t = torch.from_numpy(y).to(device)

    def nhwc(tensor):
        return tensor.cpu().numpy().transpose(0, 2, 3, 1)

    torch_step = TorchDGADStep(torch_student, torch_teacher, steps)  # freezes the teacher
    distiller = make_distiller(student, teacher, steps, attack_init="none")
    objective = attacks.kl_objective(distiller._teacher_fn, distiller._student_fn)

    @tf.function(autograph=False)  # attacks.pgd loops with tf.while_loop itself
    def ours_pgd(x_in, n):
        return attacks.pgd(x_in, objective, eps=EPS, step_size=STEP_SIZE, steps=n, init="none")

    x_tf = tf.constant(x)
    one_step = {
        "ours": ours_pgd(x_tf, tf.constant(1)).numpy(),
        "torch": nhwc(pgd_kl_torch(torch_student, torch_teacher, x_t, 1, False)),
    }
    x_adv_ours = ours_pgd(x_tf, tf.constant(steps)).numpy()
    x_adv_torch_t = pgd_kl_torch(torch_student, torch_teacher, x_t, steps, init_noise=False)
    x_adv_torch = nhwc(x_adv_torch_t)
    objective_ours = float(tf.reduce_sum(objective(tf.constant(x_adv_ours))))
    objective_torch = _kl_sum_torch(torch_student, torch_teacher, x_adv_torch_t)

    # The training step from the same x' on both sides.
    given = tf.constant(x_adv_torch)
    distiller.adversarial_examples = lambda x_in, y_in, seed=None: given
    distiller.reset_metrics()
    loss_ours = float(distiller.train_on_batch(x, y, return_dict=True)["loss"])
    loss_torch = torch_step(x_t, y_t, x_adv=x_adv_torch_t)

    reference = keras_from_torch(torch_student, student_arch, "student_")
    worst = {"trainable": 0.0, "moving_mean": 0.0, "moving_variance": 0.0}
    worst_name = {}
    weights_ok = True
    failures = []
    worst_update = (0.0, None)
    var_rel = 0.0
    updates = [
        theirs - start_weights[path]
        for (path, theirs, kind) in _weight_groups(reference)
        if kind == "trainable"
    ]
    model_update_rms = float(
        np.sqrt(sum(np.sum(np.square(u)) for u in updates) / sum(u.size for u in updates))
    )
    for (path, ours, kind), (_, theirs, _) in zip(
        _weight_groups(student), _weight_groups(reference)
    ):
        if kind not in worst:
            continue
        diff = float(np.max(np.abs(ours - theirs)))
        if kind == "trainable":
            update_rms = float(np.sqrt(np.mean(np.square(theirs - start_weights[path]))))
            relative = float(
                np.sqrt(np.mean(np.square(ours - theirs)))
                / max(update_rms, model_update_rms, 1e-30)
            )
            if relative >= worst_update[0]:
                worst_update = (relative, path)
            if relative > WEIGHT_RTOL:
                weights_ok = False
                failures.append((path, relative))
        if kind == "moving_variance":
            # Both average the unbiased batch variance (dgad_tf's FusedBatchNormalization).
            var_rel = max(var_rel, float(np.max(np.abs(ours - theirs) / np.abs(theirs))))
        if diff >= worst[kind]:
            worst[kind], worst_name[kind] = diff, path
    loss_diff = abs(loss_ours - loss_torch)
    one_step_differing = float(np.mean(np.abs(one_step["ours"] - one_step["torch"]) > 1e-6))
    return dict(
        loss_ours=loss_ours,
        loss_torch=loss_torch,
        loss_abs_diff=loss_diff,
        max_abs_diff=worst,
        worst_variable=worst_name,
        moving_variance_max_rel_diff=var_rel,
        one_step_fraction_differing=one_step_differing,
        x_adv_fraction_differing=float(np.mean(np.abs(x_adv_ours - x_adv_torch) > 1e-6)),
        attack_objective_ours=objective_ours,
        attack_objective_torch=objective_torch,
        params_ours=int(sum(np.prod(v.shape) for v in student.trainable_weights)),
        params_torch=count_params(torch_student),
        teacher_params_ours=int(
            sum(np.prod(v.shape) for v in teacher.weights if "moving" not in v.path)
        ),
        teacher_params_torch=sum(p.numel() for p in torch_teacher.parameters()),
        update_max_rel_diff=worst_update[0],
        update_worst_variable=worst_update[1],
        weights_ok=weights_ok,
        weight_failures=failures,
        passed=bool(
            loss_diff <= LOSS_TOLERANCE
            and weights_ok
            and one_step_differing <= ATTACK_STEP_TOLERANCE
        ),
    )


def gradient_agreement(arch, batch_size, seed=0, smooth=False):
    """Weight gradients of one training-mode forward under a linear loss, against float64.

    Isolates the frameworks' backward passes from the DGAD loss: loss = sum(logits * r) for a
    fixed random r, on both sides in float32 and in PyTorch in float64 (the reference). Returns
    (max |logit gap|, [(variable, gap ours-torch, gap ours-float64, gap torch-float64)]), each
    gap max|g - g_ref| / max|g_float64| over the variable.

    With `smooth`, every ReLU of the three networks is a softplus. A ReLU's derivative jumps at
    0: a unit whose float32 pre-activation lies within rounding of 0 can take the other side
    than in float64 and switch its whole gradient contribution on or off. With a smooth
    activation only rounding remains, so the two runs together show what the gaps come from.
    """
    if smooth:
        with _softplus_for_relu():
            return gradient_agreement(arch, batch_size, seed)
    import tensorflow as tf

    from dgad_tf.teachers.convert import convert_state_dict

    net = build_torch_net(arch, seed + 1)
    model = keras_from_torch(net, arch, "student_")
    rng = np.random.default_rng(seed)
    x = rng.random((batch_size,) + INPUT_SHAPE, dtype=np.float32)
    r = rng.normal(size=(batch_size, NUM_CLASSES)).astype(np.float32)
    net.train()
    logits_torch = net(torch.from_numpy(x.transpose(0, 3, 1, 2).copy()))
    (logits_torch * torch.from_numpy(r)).sum().backward()
    with tf.GradientTape() as tape:
        logits = model(tf.constant(x), training=True)
        loss = tf.reduce_sum(logits * r)
    grads = tape.gradient(loss, model.trainable_variables)
    net64 = build_torch_net(arch, seed + 1).double().train()
    logits64 = net64(torch.from_numpy(x.transpose(0, 3, 1, 2).astype(np.float64)))
    (logits64 * torch.from_numpy(r.astype(np.float64))).sum().backward()

    def in_our_layout(module):
        state = {k: p.grad.float().numpy() for k, p in module.named_parameters()}
        state.update({k: b.float().numpy() for k, b in module.named_buffers()})
        converted, _ = convert_state_dict(state, arch, NUM_CLASSES)
        return [np.asarray(w.numpy(), np.float64) for w in converted.trainable_weights]

    torch_grads, reference = in_our_layout(net), in_our_layout(net64)
    gaps = []
    for v, g, t, ref in zip(model.trainable_variables, grads, torch_grads, reference):
        scale = max(float(np.max(np.abs(ref))), 1e-30)
        g = np.asarray(g.numpy(), np.float64)
        gaps.append(
            (
                v.path,
                float(np.max(np.abs(g - t))) / scale,
                float(np.max(np.abs(g - ref))) / scale,
                float(np.max(np.abs(t - ref))) / scale,
            )
        )
    return float(np.max(np.abs(logits_torch.detach().numpy() - logits.numpy()))), gaps


@contextlib.contextmanager
def _softplus_for_relu():
    """Build our models and run PyTorch's with softplus wherever they would use ReLU."""
    import keras

    from dgad_tf.models import _common

    def softplus(x, name):
        return keras.layers.Activation("softplus", name=name)(x)

    saved = _common.relu, F.relu
    _common.relu, F.relu = softplus, F.softplus
    try:
        yield
    finally:
        _common.relu, F.relu = saved


# ----------------------------------------------------------------- timing


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


# ----------------------------------------------------------------- command line


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


def finish_args(parser, args):
    """Split `--configs` into (student, teacher) pairs, check the counts, default `--threads`.

    Shared with `kernel_time.py`, whose arguments carry the same names.
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


def set_threads(threads):
    """The same intra-op and inter-op thread counts for both frameworks."""
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)
    torch.set_num_threads(threads)
    torch.set_num_interop_threads(threads)


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

"""The equality check of the two DGAD steps from the same weights, run before any timing."""

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dgad_tf.teachers.torch_reference import count_parameters

from .bridge import keras_from_torch, make_distiller
from .dgad import TorchDGADStep, pgd_kl_torch
from .nets import build_torch_net
from .settings import EPS, INPUT_SHAPE, NUM_CLASSES, STEP_SIZE

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

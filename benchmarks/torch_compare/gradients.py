"""The gradient probe (`--gradient-check`): one training-mode forward's weight gradients."""

import contextlib

import numpy as np
import torch
import torch.nn.functional as F

from .bridge import keras_from_torch
from .nets import build_torch_net
from .settings import INPUT_SHAPE, NUM_CLASSES


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

    from dgad_tf.teachers.conversion import convert_state_dict

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

"""SGD with weight decay as PyTorch applies it, and epoch-based learning-rate schedules.

Keras's `weight_decay=` is *decoupled* decay (Loshchilov & Hutter): the variable shrinks by
`lr·wd·w` beside the momentum update. The reference recipe (PyTorch `torch.optim.SGD`) instead adds
`wd·w` to the gradient *before* the momentum buffer, on every parameter, batch-norm scales and
biases included. The two differ as soon as momentum or a changing learning rate is involved, so
`dgad_tf` uses its own optimiser with PyTorch's update:

    g ← g + wd·w
    buf ← momentum·buf + g            (buf starts at 0, so the first buf is g, as in PyTorch)
    w ← w − lr·buf                    (Nesterov: w ← w − lr·(g + momentum·buf))

Keras's SGD keeps `lr` inside its momentum variable; PyTorch's buffer does not, which is what
makes PyTorch's schedules behave as they do. This optimiser keeps PyTorch's form.
"""

from __future__ import annotations

import math

import keras
import numpy as np
from keras import ops


@keras.saving.register_keras_serializable(package="dgad_tf")
class TorchSGD(keras.optimizers.Optimizer):
    """SGD with momentum and L2 weight decay coupled to the gradient, as `torch.optim.SGD`.

    Args:
        learning_rate: float or `LearningRateSchedule`. Defaults to 0.1.
        momentum: momentum factor (dampening 0). Defaults to 0.9.
        weight_decay: coefficient of `wd·w` added to every gradient. Defaults to 5e-4.
        nesterov: Nesterov momentum. Defaults to False.

    Example:
        >>> opt = TorchSGD(learning_rate=0.1, momentum=0.9, weight_decay=5e-4)
    """

    def __init__(
        self,
        learning_rate=0.1,
        momentum=0.9,
        weight_decay=5e-4,
        nesterov=False,
        name="torch_sgd",
        **kwargs,
    ):
        kwargs.pop("weight_decay", None)
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"`momentum` must be in [0, 1); received momentum={momentum}")
        if weight_decay < 0:
            raise ValueError(f"`weight_decay` must be >= 0; received weight_decay={weight_decay}")
        self.momentum = float(momentum)
        # Not `self.weight_decay`: the base class would apply that one decoupled, on top of ours.
        self.coupled_weight_decay = float(weight_decay)
        self.nesterov = bool(nesterov)

    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        self.momentum_buffers = [
            self.add_variable_from_reference(v, "momentum_buffer") for v in variables
        ]

    def update_step(self, gradient, variable, learning_rate):
        learning_rate = ops.cast(learning_rate, variable.dtype)
        gradient = ops.cast(gradient, variable.dtype)
        if self.coupled_weight_decay:
            gradient = ops.add(gradient, ops.multiply(self.coupled_weight_decay, variable))
        if self.momentum == 0.0:
            self.assign_sub(variable, ops.multiply(learning_rate, gradient))
            return
        buf = self.momentum_buffers[self._get_variable_index(variable)]
        self.assign(buf, ops.add(ops.multiply(self.momentum, buf), gradient))
        step = ops.add(gradient, ops.multiply(self.momentum, buf)) if self.nesterov else buf
        self.assign_sub(variable, ops.multiply(learning_rate, step))

    def get_config(self):
        config = super().get_config()
        config.pop("weight_decay", None)
        config.update(
            momentum=self.momentum, weight_decay=self.coupled_weight_decay, nesterov=self.nesterov
        )
        return config


@keras.saving.register_keras_serializable(package="dgad_tf")
class EpochSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """Learning rate that changes per epoch, as PyTorch's `MultiStepLR`/`CosineAnnealingLR`.

    The rate of optimiser step `s` is that of epoch `s // steps_per_epoch`; an optional linear
    warm-up ramps the rate per step over the first `warmup_epochs`.

    Args:
        initial_lr: rate of epoch 0. Defaults to 0.1.
        steps_per_epoch: optimiser steps in one epoch. Defaults to 1.
        epochs: total epochs (the cosine period). Defaults to 1.
        kind: "piecewise", "cosine" or "constant". Defaults to "piecewise".
        milestones: epochs at which a piecewise rate is multiplied by `gamma`. Defaults to ().
        gamma: piecewise factor. Defaults to 0.1.
        warmup_epochs: linear warm-up length. Defaults to 0.

    Example:
        >>> EpochSchedule(0.1, steps_per_epoch=390, epochs=200, milestones=(100, 150))
    """

    def __init__(
        self,
        initial_lr=0.1,
        steps_per_epoch=1,
        epochs=1,
        kind="piecewise",
        milestones=(),
        gamma=0.1,
        warmup_epochs=0,
    ):
        if kind not in ("piecewise", "cosine", "constant"):
            raise ValueError(
                f"`kind` must be piecewise, cosine or constant; received kind={kind!r}"
            )
        if steps_per_epoch < 1:
            raise ValueError(f"`steps_per_epoch` must be >= 1; received {steps_per_epoch}")
        self.initial_lr = float(initial_lr)
        self.steps_per_epoch = int(steps_per_epoch)
        self.epochs = max(int(epochs), 1)
        self.kind = kind
        self.milestones = tuple(int(m) for m in milestones)
        self.gamma = float(gamma)
        self.warmup_epochs = int(warmup_epochs)

    def epoch_rate(self, epoch):
        """The rate of a (possibly fractional-free) epoch index, as a float tensor."""
        epoch = ops.cast(epoch, "float32")
        if self.kind == "piecewise":
            passed = (
                sum(ops.cast(epoch >= m, "float32") for m in self.milestones)
                if self.milestones
                else ops.zeros_like(epoch)
            )
            return self.initial_lr * ops.power(self.gamma, passed)
        if self.kind == "cosine":
            return self.initial_lr * 0.5 * (1.0 + ops.cos(math.pi * epoch / self.epochs))
        return self.initial_lr + ops.zeros_like(epoch)

    def __call__(self, step):
        step = ops.cast(step, "float32")
        epoch = ops.floor(step / self.steps_per_epoch)
        rate = self.epoch_rate(epoch)
        if self.warmup_epochs:
            warmup_steps = float(self.warmup_epochs * self.steps_per_epoch)
            rate = rate * ops.minimum(1.0, (step + 1.0) / warmup_steps)
        return rate

    def get_config(self):
        return dict(
            initial_lr=self.initial_lr,
            steps_per_epoch=self.steps_per_epoch,
            epochs=self.epochs,
            kind=self.kind,
            milestones=list(self.milestones),
            gamma=self.gamma,
            warmup_epochs=self.warmup_epochs,
        )


def epoch_learning_rates(
    lr, *, epochs, schedule="piecewise", milestones=(), gamma=0.1
) -> list[float]:
    """The rate each epoch trains with, as the `EpochSchedule` of `make_optimizer` computes it.

    Entry `e` is the rate of epoch `e` counted from 0 (epoch e + 1 of `log.csv`); a milestone m
    makes epoch m the first at the lower rate. A linear warm-up, applied per step on top of these
    rates, is left out.

    Args:
        lr: rate of epoch 0.
        epochs: number of epochs.
        schedule: "piecewise", "cosine" or "constant". Defaults to "piecewise".
        milestones: piecewise milestones. Defaults to ().
        gamma: piecewise factor. Defaults to 0.1.

    Example:
        >>> epoch_learning_rates(0.1, epochs=4, milestones=(2,))  # 0.1, 0.1, 0.01, 0.01 (float32)
    """
    rate = EpochSchedule(lr, epochs=epochs, kind=schedule, milestones=milestones, gamma=gamma)
    return [float(r) for r in np.asarray(rate.epoch_rate(np.arange(epochs)))]


def make_optimizer(
    lr,
    *,
    momentum,
    weight_decay,
    nesterov,
    steps_per_epoch,
    epochs,
    schedule="piecewise",
    milestones=(),
    gamma=0.1,
    warmup_epochs=0,
) -> TorchSGD:
    """`TorchSGD` driven by an `EpochSchedule`, from the optimiser section of a config."""
    rate = EpochSchedule(
        lr,
        steps_per_epoch=steps_per_epoch,
        epochs=epochs,
        kind=schedule,
        milestones=milestones,
        gamma=gamma,
        warmup_epochs=warmup_epochs,
    )
    return TorchSGD(
        learning_rate=rate, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov
    )

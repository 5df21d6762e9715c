"""A user's own method loss, written outside dgad_tf as a user would: what
`method: {name: user_losses.SmoothedAT, smoothing: 0.2}` names in a config (tests/test_user_loss.py
puts this folder on PYTHONPATH)."""

import dataclasses
import typing

import tensorflow as tf

from dgad_tf.losses import CE_TO_LABELS, MethodLoss


@dataclasses.dataclass(frozen=True, kw_only=True)
class SmoothedAT(MethodLoss):
    """PGD adversarial training with label smoothing: no teacher, the attack ascends CE(s(x'), y).

    Args:
        smoothing: share of each target spread evenly over the classes, in [0, 1).
            Defaults to 0.1.
    """

    smoothing: float = 0.1

    needs_teacher = False
    ascent = CE_TO_LABELS
    default_start = "uniform"
    inputs = ("s_adv", "y")

    def compute_loss(self, forwards, *, global_batch_size=None, epoch=0):
        logits, labels = forwards["s_adv"], forwards["y"]
        classes = logits.shape[-1]
        onehot = tf.one_hot(labels, classes)
        targets = onehot * (1.0 - self.smoothing) + self.smoothing / classes
        size = tf.shape(logits)[0] if global_batch_size is None else global_batch_size
        size = tf.cast(size, tf.float32)
        smoothed = tf.nn.softmax_cross_entropy_with_logits(targets, logits)
        plain = tf.nn.softmax_cross_entropy_with_logits(onehot, logits)
        return {"total": tf.reduce_sum(smoothed) / size, "ce_adv": tf.reduce_sum(plain) / size}


@dataclasses.dataclass(frozen=True, kw_only=True)
class SummedAT(SmoothedAT):
    """SmoothedAT whose batch reduction is an option typed `typing.Literal`, a type a config does
    not coerce: the value reaches the class as written, and the class checks it.

    Args:
        reduction: "mean" over the batch, or "sum". Defaults to "mean".
        scales: a factor for some of the returned terms, e.g. {"total": 0.5} (a mapping, which
            a config reads as one). Defaults to None (every factor 1).
    """

    reduction: typing.Literal["mean", "sum"] = "mean"
    scales: typing.Optional[dict[str, float]] = None

    def __post_init__(self):
        if self.reduction not in ("mean", "sum"):
            raise ValueError(
                f"`reduction` must be mean or sum; received reduction={self.reduction!r}"
            )

    def compute_loss(self, forwards, *, global_batch_size=None, epoch=0):
        losses = super().compute_loss(forwards, global_batch_size=global_batch_size, epoch=epoch)
        losses = {key: value * (self.scales or {}).get(key, 1.0) for key, value in losses.items()}
        if self.reduction == "mean":
            return losses
        size = tf.shape(forwards["s_adv"])[0] if global_batch_size is None else global_batch_size
        return {key: value * tf.cast(size, tf.float32) for key, value in losses.items()}

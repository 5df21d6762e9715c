"""L-infinity and L2 adversarial attacks as pure functions of `(model_fn, x, ...)`.

The same projected-gradient loop serves the training step (DGAD/AdaAD, TRADES, RSLAD, PGD-AT, ARD
inner maximisation) and evaluation (FGSM, PGD, CW-inf, CW-L2). Nothing here holds state: a
`model_fn` is any callable `x -> logits`, and the caller decides the mode, normally
`lambda x: model(x, training=False)` so batch-norm uses (and never updates) its moving statistics.
Loops are `tf.while_loop`s, so a 20-step attack traced inside `tf.function` (also with
`jit_compile=True`) is one loop, not 20 copies of the network.

`PGD` is the training attack's settings as an object, the `attack=` of `AdversarialDistiller`.

Pixels are in [0, 1] and `eps` is in pixel units. Every iterate is clipped first into the eps-ball
around `x` and then into [0, 1], so an attack never leaves either set.
"""

from dgad_tf.attacks.cw_l2 import cw_l2
from dgad_tf.attacks.pgd import (
    ce_objective,
    cw_inf,
    cw_margin_loss,
    cw_margin_objective,
    fgsm,
    kl_objective,
    kl_to_fixed_objective,
    pgd,
    pgd_ce,
)
from dgad_tf.attacks.training import PGD

__all__ = [
    "PGD",
    "pgd",
    "ce_objective",
    "kl_objective",
    "kl_to_fixed_objective",
    "cw_margin_loss",
    "cw_margin_objective",
    "fgsm",
    "pgd_ce",
    "cw_inf",
    "cw_l2",
]

"""Training losses of DGAD and the baselines it is compared with: pure functions on logits, and
one loss object per method (`DGAD`, `AdaAD`, `TRADES`, `ARD`, `RSLAD`, `IAD`, `AdaIAD`, `PGDAT`,
`Clean`: the `loss=` of `AdversarialDistiller`, holding that method's options).

Every method loss returns a dict of scalar tensors that always has a `'total'` entry (the value to
differentiate) plus its separate terms for logging. Per-sample terms are summed and divided by
`global_batch_size` (the batch's own size when it is `None`), so the same function is exact on one
device and under `tf.distribute.MirroredStrategy`: each replica divides by the global batch size and
the per-replica totals add up to the loss of the whole batch.

KL(p || q) is always `sum_c p_c (log p_c - log q_c)` computed from logits with `log_softmax`. The
reference code of ARD, RSLAD and AdaAD (CIFAR-10) computes it with PyTorch's default
`nn.KLDivLoss()` reduction, which averages over batch *and* classes, i.e. divides the KL by the
number of classes C; `kl_reduction="class_mean"` on those losses reproduces that scale, and
`kl_scale` any further constant the reference multiplies in (RSLAD's CIFAR-100 `10 * mean`).
"""

from dgad_tf.losses._common import kl_divergence, largest_other_logit, swap_true_with_max
from dgad_tf.losses.baselines import (
    adaad_loss,
    adaiad_loss,
    ard_loss,
    clean_loss,
    iad_loss,
    pgd_at_loss,
    rslad_loss,
    trades_loss,
)
from dgad_tf.losses.dgad import dgad_loss
from dgad_tf.losses.method_losses import (
    ARD,
    DGAD,
    IAD,
    PGDAT,
    RSLAD,
    TRADES,
    AdaAD,
    AdaIAD,
    Clean,
    MethodLoss,
)

__all__ = [
    "kl_divergence",
    "largest_other_logit",
    "swap_true_with_max",
    "dgad_loss",
    "pgd_at_loss",
    "trades_loss",
    "ard_loss",
    "rslad_loss",
    "adaad_loss",
    "iad_loss",
    "adaiad_loss",
    "clean_loss",
    "MethodLoss",
    "DGAD",
    "AdaAD",
    "TRADES",
    "ARD",
    "RSLAD",
    "IAD",
    "AdaIAD",
    "PGDAT",
    "Clean",
]

"""Training losses of DGAD and the baselines it is compared with: pure functions on logits, and
one loss object per method (`DGAD`, `AdaAD`, `TRADES`, `ARD`, `RSLAD`, `IAD`, `AdaIAD`, `PGDAT`,
`Clean`: the `loss=` of `AdversarialDistiller`, holding that method's options), and `IGDM`,
which adds its term to any of the methods that distil from a teacher.

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

A method is its loss object (`MethodLoss`): the class also says whether it needs a teacher, what
its training attack ascends, its random start and its forwards. `get` resolves a method name
(`"dgad"`) or a dotted path to a user's own subclass (`"mypkg.mymodule.MyLoss"`); `METHOD_LOSSES`
is the registry of names. The loss objects and the registry import no TensorFlow; the loss
functions are imported (with TensorFlow) on first use.
"""

import importlib

from dgad_tf.losses._checks import DGAD_WEIGHTINGS, KL_REDUCTIONS
from dgad_tf.losses.method_loss import (
    ADV,
    CE_TO_LABELS,
    CLEAN,
    KL_STUDENT_CLEAN,
    KL_TEACHER_ADV,
    KL_TEACHER_CLEAN,
    METHOD_LOSSES,
    MIRROR,
    Ascent,
    Forward,
    MethodLoss,
    get,
    name_of,
    option_names,
    register,
)
from dgad_tf.losses.method_losses import (
    ARD,
    DGAD,
    IAD,
    IGDM,
    PGDAT,
    RSLAD,
    TRADES,
    AdaAD,
    AdaIAD,
    Clean,
)

# The loss functions and KL helpers, imported with TensorFlow when first asked for.
_FUNCTIONS = {
    "kl_divergence": "_common",
    "largest_other_logit": "_common",
    "swap_true_with_max": "_common",
    "dgad_loss": "dgad",
    "pgd_at_loss": "baselines",
    "trades_loss": "baselines",
    "ard_loss": "baselines",
    "rslad_loss": "baselines",
    "adaad_loss": "baselines",
    "iad_loss": "baselines",
    "adaiad_loss": "baselines",
    "clean_loss": "baselines",
    "igdm_loss": "igdm",
}


def __getattr__(name):
    if name in _FUNCTIONS:
        return getattr(importlib.import_module(f"dgad_tf.losses.{_FUNCTIONS[name]}"), name)
    raise AttributeError(f"module 'dgad_tf.losses' has no attribute {name!r}")


__all__ = [
    *_FUNCTIONS,
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
    "IGDM",
    "METHOD_LOSSES",
    "get",
    "name_of",
    "option_names",
    "register",
    "Ascent",
    "CE_TO_LABELS",
    "KL_TEACHER_ADV",
    "KL_STUDENT_CLEAN",
    "KL_TEACHER_CLEAN",
    "Forward",
    "CLEAN",
    "ADV",
    "MIRROR",
    "KL_REDUCTIONS",
    "DGAD_WEIGHTINGS",
]

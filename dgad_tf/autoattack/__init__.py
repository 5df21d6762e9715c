"""AutoAttack (Croce & Hein 2020) in TensorFlow, L-inf: APGD-CE, APGD-T, FAB-T and Square.

Every attack is a pure function ``(model_fn, x, labels, *, eps, ...) -> x_adv`` with ``x`` in
``[0, 1]`` and ``eps`` in pixel units; ``AutoAttack(model, eps=..., version="standard")`` (and
``run_autoattack``, the same as one call) chains them on the still-robust points and reports the
per-point worst case, for a Keras model, a SavedModel directory or a callable returning logits.

Example:
    >>> from dgad_tf.autoattack import AutoAttack
    >>> x_adv, report = AutoAttack(model, eps=8 / 255).run_standard_evaluation(x, y)
"""

from dgad_tf.autoattack._common import clear_compiled_cache
from dgad_tf.autoattack.apgd import apgd, apgd_checkpoints, apgd_targeted
from dgad_tf.autoattack.fab import fab_targeted, project_linf_hyperplane_box
from dgad_tf.autoattack.losses import cross_entropy_loss, dlr_loss, dlr_targeted_loss, margin_loss
from dgad_tf.autoattack.runner import STANDARD_ATTACKS, AutoAttack, run_autoattack
from dgad_tf.autoattack.square import square, square_p_selection
from dgad_tf.model_checks import check_model_outputs

__all__ = [
    "STANDARD_ATTACKS",
    "AutoAttack",
    "apgd",
    "apgd_checkpoints",
    "apgd_targeted",
    "check_model_outputs",
    "clear_compiled_cache",
    "cross_entropy_loss",
    "dlr_loss",
    "dlr_targeted_loss",
    "fab_targeted",
    "margin_loss",
    "project_linf_hyperplane_box",
    "run_autoattack",
    "square",
    "square_p_selection",
]

"""Checkpoint-selection rules by name: which checkpoint a run reports (`train.select`).

A `SelectionRule` says which logged metric picks the checkpoint (its best-so-far value, the
first epoch to reach it) and the file `RunCheckpoints` keeps for it, or no metric for the last
epoch; the note the report carries and the line `--print-config` prints; and, for a rule scored
on the TEST split (the references' leaky rules), what it runs there and the callback that logs its
metric. `dgad_tf.config`, `rundir.selected_checkpoint`, `run`, `fit` and the study's report ask
this table, so a new rule is one `register_selection_rule` call. The module never imports
TensorFlow; a rule's callback loads it when it is built.

Example:
    >>> from dgad_tf.selection import SelectionRule, register_selection_rule
    >>> _ = register_selection_rule("best_clean", SelectionRule(
    ...     note="best val_clean_accuracy on the validation split",
    ...     summary="best val_clean_accuracy on the validation split",
    ...     metric="val_clean_accuracy", checkpoint="student_best_clean.keras"))
    >>> # then: python -m dgad_tf.fit ... --set train.select=best_clean (from a script that
    >>> # registered it, e.g. dgad_tf.run.run(load_config(..., ["train.select=best_clean"])))
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Optional

from dgad_tf.registry import Registry

# Checkpoints kept whatever the rule, by the metric they track (higher is better).
_ALWAYS_KEPT = {
    "val_robust_accuracy": "student_best_robust.keras",
    "val_clean_accuracy": "student_best_clean.keras",
}


@dataclasses.dataclass(frozen=True)
class SelectionRule:
    """One way to choose the reported checkpoint (see the module docstring).

    Args:
        note: what the report says of the checkpoint chosen.
        summary: what `--print-config` says of the rule.
        metric: the logged metric whose best value picks the checkpoint. Defaults to None (the
            last epoch).
        checkpoint: the file `RunCheckpoints` keeps for `metric`. Defaults to None.
        test_split: what the rule runs on the TEST split after epochs, for the warning a run
            logs; a rule that sets it is leaky (its test figures are optimistic). Defaults to
            None (the test split is not looked at).
        callback: `callback(cfg, test_arrays) -> keras.callbacks.Callback` logging `metric`
            from the first `train.select_n` test images. Defaults to None.
    """

    note: str
    summary: str
    metric: Optional[str] = None
    checkpoint: Optional[str] = None
    test_split: Optional[str] = None
    callback: Optional[Callable] = None

    @property
    def leaky(self) -> bool:
        """Whether the rule looks at the TEST split."""
        return self.test_split is not None

    @property
    def needs_validation(self) -> bool:
        """Whether the rule's metric is scored on the validation split.

        Keras names the metrics it computes on `validation_data` `val_<name>`, so a run without
        a validation split (`data.val_fraction: 0`) never logs it.
        """
        return self.metric is not None and self.metric.startswith("val_")


def _check_rule(name: str, rule: SelectionRule) -> None:
    if (rule.metric is None) != (rule.checkpoint is None):
        raise ValueError(
            f"selection rule {name!r} needs both `metric` and `checkpoint`, or neither"
        )
    if (rule.test_split is None) != (rule.callback is None):
        raise ValueError(
            f"selection rule {name!r} needs both `test_split` and `callback`, or neither"
        )


SELECTION_RULES = Registry("checkpoint-selection rule", entry_type=SelectionRule, check=_check_rule)


def register_selection_rule(
    name: str, rule: SelectionRule, *, replace: bool = False
) -> SelectionRule:
    """Make `rule` available as `train.select=<name>`.

    `SELECTION_RULES.register`: see `dgad_tf.registry.Registry.register` for the arguments
    (`replace` defaults to False) and the errors.
    """
    return SELECTION_RULES.register(name, rule, replace=replace)


def best_checkpoints() -> dict:
    """The best-so-far checkpoints a run keeps: metric -> file name."""
    kept = dict(_ALWAYS_KEPT)
    for name in SELECTION_RULES.names():
        rule = SELECTION_RULES.get(name)
        if rule.metric is not None:
            kept.setdefault(rule.metric, rule.checkpoint)
    return kept


def rules_without_validation() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(the rules that need no validation split and are not leaky, the leaky ones), by name."""
    names = [n for n in SELECTION_RULES.names() if not SELECTION_RULES.get(n).needs_validation]
    return (
        tuple(n for n in names if not is_leaky(n)),
        tuple(n for n in names if is_leaky(n)),
    )


def is_leaky(name) -> bool:
    """Whether the rule named `name` chooses on the TEST split (False for an unknown name)."""
    return name in SELECTION_RULES and SELECTION_RULES.get(name).leaky


# --------------------------------------------------------------------------- the built-in rules


def _test_set_evaluation(cfg, test_arrays):
    from dgad_tf import distribute
    from dgad_tf.callbacks import TestSetEvaluation
    from dgad_tf.data import make_eval_dataset

    dataset = make_eval_dataset(test_arrays, cfg.train.batch_size)
    return TestSetEvaluation(distribute.distribute_options(dataset))


def _rslad_pgd20(cfg, test_arrays):
    from dgad_tf.callbacks import PeriodicTestPGD
    from dgad_tf.data import make_eval_dataset

    return PeriodicTestPGD.rslad(
        make_eval_dataset(test_arrays, cfg.train.batch_size),
        eps=cfg.attack.eps,
        seed=cfg.train.seed,
    )


register_selection_rule(
    "last",
    SelectionRule(note="the last epoch's checkpoint", summary="the last epoch's checkpoint"),
)
register_selection_rule(
    "best_val",
    SelectionRule(
        note="best val_robust_accuracy on the validation split carved from the training data",
        summary="best val_robust_accuracy on the validation split",
        metric="val_robust_accuracy",
        checkpoint="student_best_robust.keras",
    ),
)
register_selection_rule(
    "best_test",
    SelectionRule(
        note="chosen on the TEST set (best test_robust_accuracy after each epoch), as the "
        "DGAD reference does: leaky, a reproduction mode; the test figures of this "
        "checkpoint are optimistic",
        summary="best test_robust_accuracy on the TEST split (the reference's rule; "
        "leaky, a reproduction mode)",
        metric="test_robust_accuracy",
        checkpoint="student_best_test_robust.keras",
        test_split="test_robust_accuracy after every epoch",
        callback=_test_set_evaluation,
    ),
)
register_selection_rule(
    "rslad_pgd20",
    SelectionRule(
        note="chosen on the TEST set as RSLAD's script does (best PGD-20 accuracy, step "
        "0.003, after every 20th epoch before 215 and every epoch from 215): leaky, a "
        "reproduction mode; the test figures of this checkpoint are optimistic",
        summary="best test_pgd20_accuracy (PGD-20, step 0.003) on the TEST split after every "
        "20th epoch before 215 and every epoch from 215 (RSLAD's rule; leaky, a reproduction "
        "mode)",
        metric="test_pgd20_accuracy",
        checkpoint="student_best_test_pgd20.keras",
        test_split="PGD-20 after every 20th epoch before 215 and every epoch from 215",
        callback=_rslad_pgd20,
    ),
)

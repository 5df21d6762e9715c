"""Evaluation attacks by name: what `evaluate_robustness`, `eval.attacks` and `--attacks` take.

Each name maps to an `EvalAttack`: its one-line description (written into every report), and
either `batch_fn`, which builds `fn(x_batch, y_batch) -> adversarial x_batch` (traced once, run
batch by batch on the clean-correct points), or `run`, which attacks the whole set itself (as
AutoAttack does, with its own still-robust loop). A family (`family=True`, e.g. `pgd`) answers to
`<name><K>` with K >= 1 steps, e.g. `pgd20`.

Adding an attack is one `register_eval_attack` call beside its code; `dgad_tf.config` and
`dgad_tf.robustness` ask this table, so nothing else changes. The module never imports
TensorFlow: the attacks themselves load when an attack is built.

Example:
    >>> import dgad_tf
    >>> from dgad_tf import attacks
    >>> from dgad_tf.eval_attacks import EvalAttack, register_eval_attack
    >>> register_eval_attack("fgsm_half", EvalAttack(
    ...     "FGSM at eps/2",
    ...     batch_fn=lambda model_fn, s: lambda x, y: attacks.fgsm(model_fn, x, y, eps=s.eps / 2)))
    >>> dgad_tf.evaluate_robustness(model, x, y, attacks=["clean", "fgsm_half"])
"""

from __future__ import annotations

import dataclasses
import re
from typing import Callable, Optional

from dgad_tf.registry import Registry


@dataclasses.dataclass(frozen=True)
class AttackSettings:
    """What every evaluation attack is built with.

    Args:
        eps: L-inf radius in [0, 1] pixel units.
        seed: seed of the random starts.
        pgd_restarts: restarts of the PGD attacks. Defaults to 1.
        steps: K of a family name (`pgd20` -> 20). Defaults to None (not a family).
    """

    eps: float
    seed: int
    pgd_restarts: int = 1
    steps: Optional[int] = None


@dataclasses.dataclass(frozen=True)
class EvalAttack:
    """One named evaluation attack (see the module docstring).

    Args:
        description: the one-line description of the report; a family's may use `{k}` (steps)
            and `{r}` (restarts).
        batch_fn: `batch_fn(model_fn, settings) -> fn(x, y) -> x_adv`, where `model_fn` maps
            [0, 1] float images to logits. Defaults to None.
        run: `run(model_fn, x, y, settings, batch_size, num_classes) -> (robust_accuracy,
            robust_mask, per_attack)` for an attack that takes the whole set; `model_fn` is the
            `dgad_tf.logits` function object. Defaults to None.
        family: the name takes a step count, `<name><K>`. Defaults to False.
        gradients: the attack needs the model's gradients. Defaults to True.
    """

    description: str
    batch_fn: Optional[Callable] = None
    run: Optional[Callable] = None
    family: bool = False
    gradients: bool = True

    def describe(self, settings: Optional[AttackSettings] = None) -> str:
        """The description, with a family's steps and restarts filled in."""
        if not self.family:
            return self.description
        settings = settings or AttackSettings(eps=0.0, seed=0)
        return self.description.format(k=settings.steps, r=settings.pgd_restarts)


def _check_attack(name: str, attack: EvalAttack) -> None:
    if (attack.batch_fn is None) == (attack.run is None) and name != "clean":
        raise ValueError(f"evaluation attack {name!r} needs exactly one of batch_fn and run")
    if attack.family and name[-1:].isdigit():
        raise ValueError(f"a family's name must not end in a digit; received name={name!r}")


EVAL_ATTACKS = Registry("evaluation attack", entry_type=EvalAttack, check=_check_attack)


def register_eval_attack(name: str, attack: EvalAttack, *, replace: bool = False) -> EvalAttack:
    """Make `attack` available under `name` everywhere an evaluation attack is named.

    `EVAL_ATTACKS.register`: see `dgad_tf.registry.Registry.register` for the arguments
    (`replace` defaults to False) and the errors; a family's name must not end in a digit.
    """
    return EVAL_ATTACKS.register(name, attack, replace=replace)


def lookup(name: str) -> Optional[tuple[EvalAttack, Optional[int]]]:
    """`(attack, steps)` for a registered name or a family's `<name><K>` (K >= 1); else None."""
    if name in EVAL_ATTACKS and not EVAL_ATTACKS.get(name).family:
        return EVAL_ATTACKS.get(name), None
    match = re.fullmatch(r"(.*?)(\d+)", name)
    if match and match.group(1) in EVAL_ATTACKS and int(match.group(2)) >= 1:
        attack = EVAL_ATTACKS.get(match.group(1))
        if attack.family:
            return attack, int(match.group(2))
    return None


def known_names() -> str:
    """The valid names as a message lists them: the single names, then each family's."""
    single = [n for n in EVAL_ATTACKS.names() if not EVAL_ATTACKS.get(n).family]
    families = [f"{n}<K>" for n in EVAL_ATTACKS.names() if EVAL_ATTACKS.get(n).family]
    text = ", ".join(single)
    return f"{text} and {', '.join(families)} with K >= 1 steps" if families else text


def batched_names() -> str:
    """The attacks `adversarial_images` can run (those with a `batch_fn`), for its message."""
    names = [
        f"{n}<K>" if EVAL_ATTACKS.get(n).family else n
        for n in EVAL_ATTACKS.names()
        if EVAL_ATTACKS.get(n).batch_fn is not None
    ]
    return ", ".join(names[:-1]) + " or " + names[-1] if len(names) > 1 else "".join(names)


# --------------------------------------------------------------------------- the built-in attacks
# Each builder imports `dgad_tf.attacks` (TensorFlow) only when an attack is built.


def _fgsm(model_fn, s):
    from dgad_tf import attacks

    return lambda xb, yb: attacks.fgsm(model_fn, xb, yb, eps=s.eps)


def _pgd(model_fn, s):
    from dgad_tf import attacks

    return lambda xb, yb: attacks.pgd_ce(
        model_fn, xb, yb, eps=s.eps, steps=s.steps, restarts=s.pgd_restarts, seed=s.seed
    )


def _cw_inf(model_fn, s):
    from dgad_tf import attacks

    return lambda xb, yb: attacks.cw_inf(model_fn, xb, yb, eps=s.eps, seed=s.seed)


def _cw_l2(model_fn, s):
    from dgad_tf import attacks

    return lambda xb, yb: attacks.cw_l2(model_fn, xb, yb)


def _autoattack(version):
    def run(model_fn, x, y, s, batch_size, num_classes):
        import numpy as np

        from dgad_tf import autoattack

        if not len(x):
            return 0.0, np.zeros(0, bool), {}
        adversary = autoattack.AutoAttack(model_fn, eps=s.eps, version=version, seed=s.seed)
        result = adversary.run_checked(x, y, batch_size, num_classes)[1]
        return result["robust_accuracy"], result["robust_mask"], result["per_attack"]

    return run


register_eval_attack("clean", EvalAttack("no attack", gradients=False))
register_eval_attack("fgsm", EvalAttack("FGSM, L-inf, no random start", batch_fn=_fgsm))
register_eval_attack(
    "pgd",
    EvalAttack(
        "PGD-{k}, L-inf, cross-entropy, uniform start, step eps/4, {r} restart(s)",
        batch_fn=_pgd,
        family=True,
    ),
)
register_eval_attack(
    "cw_inf",
    EvalAttack(
        "CW-inf: 30-step L-inf PGD on the Carlini-Wagner margin loss, step eps/4", batch_fn=_cw_inf
    ),
)
register_eval_attack(
    "cw_l2",
    EvalAttack(
        "CW-L2 (c=0.1, confidence 0.01, 1000 iterations, lr 0.01; L2, eps not applied)",
        batch_fn=_cw_l2,
    ),
)
register_eval_attack(
    "autoattack",
    EvalAttack(
        "AutoAttack standard: APGD-CE, APGD-T, FAB-T, Square (worst case per point)",
        run=_autoattack("standard"),
    ),
)
register_eval_attack(
    "autoattack_custom",
    EvalAttack(
        "AutoAttack custom: APGD-CE, APGD-T (worst case per point)", run=_autoattack("custom")
    ),
)

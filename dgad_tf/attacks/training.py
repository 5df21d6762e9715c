"""`PGD`: the training attack of `AdversarialDistiller`, as a serialisable settings object.

What the attack ascends is the method's objective (docs/method.md §3.2), which the distiller
picks from its loss; this object holds how: radius, step, iterations and random start.
"""

from __future__ import annotations

import dataclasses
import numbers

import keras

from dgad_tf.attacks.pgd import _check_attack_args, pgd
from dgad_tf.config import ATTACK_INITS


@keras.saving.register_keras_serializable(package="dgad_tf")
@dataclasses.dataclass(frozen=True, kw_only=True)
class PGD:
    """L-infinity PGD on the training batch (`dgad_tf.attacks.pgd`), pixels in [0, 1].

    Args:
        eps: radius in pixel units, in [0, 1]. Defaults to 8/255.
        step_size: step per iteration, >= 0. Defaults to 2/255.
        steps: iterations, an int >= 0. Defaults to 10.
        start: random start: "auto" (the method's own, docs/method.md §3.3: Gaussian for the
            distillation methods and TRADES, uniform for ARD, IAD and clean training, and for
            PGD-AT uniform, or Gaussian with `reference_forwards` as the AdaAD code's SAT),
            "uniform" (x + U(-eps, eps)), "gaussian" (x + start_std·N(0, 1)) or "none".
            Defaults to "auto".
        start_std: standard deviation of the Gaussian start, >= 0. Defaults to 0.001.

    Example:
        >>> attack = PGD(eps=8 / 255, step_size=2 / 255, steps=10)
    """

    eps: float = 8 / 255
    step_size: float = 2 / 255
    steps: int = 10
    start: str = "auto"
    start_std: float = 0.001

    def __post_init__(self):
        _check_attack_args(eps=self.eps, step_size=self.step_size, steps=self.steps)
        if isinstance(self.steps, bool) or not isinstance(self.steps, numbers.Integral):
            raise TypeError(f"`steps` must be an int; received steps={self.steps!r}")
        object.__setattr__(self, "steps", int(self.steps))  # a NumPy integer serialises as int
        if self.start not in ATTACK_INITS:
            raise ValueError(
                f"`start` must be one of {', '.join(ATTACK_INITS)}; received start={self.start!r}"
            )
        if not self.start_std >= 0:
            raise ValueError(f"`start_std` must be >= 0; received start_std={self.start_std}")

    def __call__(self, x, objective, *, start=None, seed=None):
        """Adversarial examples of `x` ascending `objective` (per-sample, `x_adv -> [B]`).

        Args:
            x: `[B, ...]` clean inputs in [0, 1].
            objective: the per-sample loss to maximise.
            start: the random start to use instead of `self.start`; "auto" must be resolved
                by the caller, who knows the method. Defaults to None (`self.start`).
            seed: None, an int or a `[2]` integer tensor (see `dgad_tf.attacks.pgd`).
        """
        start = self.start if start is None else start
        if start == "auto":
            raise ValueError(
                'start="auto" means the method\'s own start; pass start="uniform", "gaussian" '
                'or "none" (AdversarialDistiller resolves it from its loss)'
            )
        return pgd(
            x,
            objective,
            eps=self.eps,
            step_size=self.step_size,
            steps=self.steps,
            init=start,
            init_std=self.start_std,
            seed=seed,
        )

    def get_config(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_config(cls, config: dict):
        return cls(**config)

"""Summary statistics of a study: mean and spread over seeds, paired differences with a t interval.

Seeds are few (2-5), so the interval of a paired difference uses Student's t with n - 1 degrees
of freedom, not the normal approximation: with 2 seeds the 95% half-width is 12.7 standard
errors. No SciPy: the t quantile is found by bisection on the exact closed-form distribution
function for integer degrees of freedom.

Example:
    >>> round(t_quantile(0.975, 2), 4)
    4.3027
    >>> summary = paired_difference([0.52, 0.50, 0.55], [0.50, 0.49, 0.52])
    >>> round(summary.mean, 4), summary.n
    (0.02, 3)
"""

from __future__ import annotations

import dataclasses
import math
from typing import Optional, Sequence

# Accuracies are counts over n images, so equal differences agree to float rounding (~1e-16).
SPREAD_TOLERANCE = 1e-9


@dataclasses.dataclass(frozen=True)
class Spread:
    """Mean and sample standard deviation (n - 1 in the denominator) of n values.

    `std` is None for a single value: one seed says nothing about the spread.
    """

    mean: float
    std: Optional[float]
    n: int

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class PairedDifference:
    """The mean of per-seed differences a_s - b_s and its two-sided t interval.

    `low`/`high` are None with fewer than 2 pairs (no interval can be given). When every pair
    differs by the same amount (`no_spread`) the interval has width 0: that is no seed-to-seed
    variation on these seeds, not a certain difference.
    """

    mean: float
    std: Optional[float]
    n: int
    level: float
    low: Optional[float]
    high: Optional[float]

    @property
    def includes_zero(self) -> Optional[bool]:
        if self.low is None:
            return None
        return self.low <= 0.0 <= self.high

    @property
    def no_spread(self) -> bool:
        """Two or more pairs, all with the same difference (up to float rounding)."""
        return self.std is not None and self.std <= SPREAD_TOLERANCE

    def to_dict(self) -> dict:
        return {
            **dataclasses.asdict(self),
            "includes_zero": self.includes_zero,
            "no_spread": self.no_spread,
        }


def spread(values: Sequence[float]) -> Spread:
    """Mean and sample standard deviation of `values` (at least one)."""
    values = [float(v) for v in values]
    if not values:
        raise ValueError("spread() needs at least one value")
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else None
    return Spread(mean, std, n)


def _t_cdf_two_sided(t: float, dof: int) -> float:
    """P(|T| <= t) for Student's t with integer `dof` >= 1 (closed form: A&S 26.7.3)."""
    theta = math.atan(t / math.sqrt(dof))
    cos2 = math.cos(theta) ** 2
    if dof % 2 == 1:
        total, term = 0.0, 1.0
        if dof > 1:
            # cos + (2/3) cos^3 + (2*4)/(3*5) cos^5 + ... up to cos^(dof-2)
            total = term = math.cos(theta)
            for k in range(3, dof - 1, 2):
                term *= cos2 * (k - 1) / k
                total += term
        return (2 / math.pi) * (theta + math.sin(theta) * total)
    # 1 + (1/2) cos^2 + (1*3)/(2*4) cos^4 + ... up to cos^(dof-2)
    total = term = 1.0
    for k in range(2, dof - 1, 2):
        term *= cos2 * (k - 1) / k
        total += term
    return math.sin(theta) * total


def t_quantile(p: float, dof: int) -> float:
    """The p-quantile (0.5 < p < 1) of Student's t with integer `dof` >= 1 degrees of freedom."""
    if not 0.5 < p < 1:
        raise ValueError(f"t_quantile needs 0.5 < p < 1; received p={p!r}")
    if int(dof) != dof or dof < 1:
        raise ValueError(f"t_quantile needs an integer dof >= 1; received dof={dof!r}")
    target = 2 * p - 1  # P(|T| <= q)
    low, high = 0.0, 1.0
    while _t_cdf_two_sided(high, int(dof)) < target:
        high *= 2
    for _ in range(200):
        mid = (low + high) / 2
        if _t_cdf_two_sided(mid, int(dof)) < target:
            low = mid
        else:
            high = mid
        if high - low < 1e-12 * max(1.0, high):
            break
    return (low + high) / 2


def paired_difference(
    a: Sequence[float], b: Sequence[float], level: float = 0.95
) -> PairedDifference:
    """Mean of a_s - b_s over pairs s and its `level` two-sided t interval.

    Args:
        a: one value per seed.
        b: the reference's values for the same seeds, in the same order.
        level: coverage of the interval. Defaults to 0.95.
    """
    if len(a) != len(b) or not a:
        raise ValueError(
            f"paired_difference needs two non-empty lists of equal length; received {len(a)} "
            f"and {len(b)} values"
        )
    differences = spread([float(x) - float(y) for x, y in zip(a, b)])
    if differences.n < 2:
        return PairedDifference(differences.mean, None, differences.n, level, None, None)
    half = (
        t_quantile(0.5 + level / 2, differences.n - 1) * differences.std / math.sqrt(differences.n)
    )
    return PairedDifference(
        differences.mean,
        differences.std,
        differences.n,
        level,
        differences.mean - half,
        differences.mean + half,
    )

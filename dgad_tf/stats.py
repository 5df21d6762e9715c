"""Summary statistics of a study: spreads over seeds, and paired tests over seeds and images.

Seeds are few (2-5), so the interval of a paired difference uses Student's t with n - 1 degrees
of freedom, not the normal approximation: with 2 seeds the 95% half-width is 12.7 standard
errors. Every cell is scored on the same test images, so two cells can also be compared image by
image, from their per-image correctness (`pack_correct`):

* `mcnemar_exact` — McNemar's exact test for one seed pair (two-sided binomial on the images
  only one of the two gets right).
* `bootstrap_images` — a paired percentile bootstrap over the test images of one seed pair.
* `hierarchical_bootstrap` — seeds and images resampled independently (the design is crossed:
  every seed sees the same images), so the interval covers both sources of variation.
* `sign_flip_test` — the exact randomization test over seeds: with S seeds no p below
  2 / 2**S is possible (`smallest_p`), so fewer than 6 seeds never reach p < 0.05.
* `holm` — Holm's step-down adjustment for the comparisons besides the pre-declared one.
* `seeds_needed` — seeds for a t interval of a given half-width at an observed spread.
* `at_chance_level`, `chance_threshold` — whether one accuracy is no better than guessing
  (what `fit` checks of a teacher and the first batches, and `export` of a student).

No SciPy at run time: the t quantile is found by bisection on the exact closed-form distribution
function, the binomial and sign-flip p-values are exact sums, and the tests check every one of
them against SciPy or an enumeration.

Example:
    >>> round(t_quantile(0.975, 2), 4)
    4.3027
    >>> summary = paired_difference([0.52, 0.50, 0.55], [0.50, 0.49, 0.52])
    >>> round(summary.mean, 4), summary.n
    (0.02, 3)
"""

from __future__ import annotations

import dataclasses
import fractions
import itertools
import math
from typing import Optional, Sequence

import numpy as np

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


def check_finite(values: Sequence[float], what: str) -> None:
    """Refuse NaN and infinity, naming `what` holds them (a NaN must never become "lower").

    Raises:
        ValueError: naming `what` and the first non-finite value.
    """
    for value in values:
        if not math.isfinite(float(value)):
            raise ValueError(
                f"{what} holds a non-finite value ({value!r}); a mean, interval or test of it "
                "would be meaningless: re-evaluate that cell"
            )


def spread(values: Sequence[float]) -> Spread:
    """Mean and sample standard deviation of `values` (at least one, all finite)."""
    values = [float(v) for v in values]
    if not values:
        raise ValueError("spread() needs at least one value")
    check_finite(values, "spread()")
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


def pack_correct(correct) -> np.ndarray:
    """Per-image correctness (bool [n], in test-image order) as `np.packbits` bytes."""
    return np.packbits(np.asarray(correct, dtype=bool))


def unpack_correct(bits, n: int) -> np.ndarray:
    """The bool [n] array `pack_correct` packed (the padding bits of the last byte dropped)."""
    return np.unpackbits(np.asarray(bits, dtype=np.uint8), count=n).astype(bool)


def _paired_masks(a_correct, b_correct) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(a_correct, dtype=bool)
    b = np.asarray(b_correct, dtype=bool)
    if a.shape != b.shape or a.size == 0:
        raise ValueError(
            "a paired comparison needs two non-empty correctness arrays over the same images; "
            f"received shapes {a.shape} and {b.shape}"
        )
    return a, b


@dataclasses.dataclass(frozen=True)
class McNemar:
    """McNemar's exact test: `a_only` images only a gets right, `b_only` only b; two-sided p."""

    a_only: int
    b_only: int
    p_value: float

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def mcnemar_exact(a_correct, b_correct) -> McNemar:
    """McNemar's exact test of two models scored on the same images.

    Under "a and b are equally accurate" each image only one of them gets right is a's with
    probability 1/2, so `a_only` ~ Binomial(a_only + b_only, 1/2); the two-sided p-value is
    twice the smaller tail (at most 1), summed exactly in integers.

    Args:
        a_correct: bool [n], whether model a classifies each image correctly.
        b_correct: bool [n], model b on the same images in the same order.
    """
    a, b = _paired_masks(a_correct, b_correct)
    a_only, b_only = int(np.sum(a & ~b)), int(np.sum(~a & b))
    discordant = a_only + b_only
    tail = sum(math.comb(discordant, k) for k in range(min(a_only, b_only) + 1))
    p_value = min(1.0, float(2 * fractions.Fraction(tail, 2**discordant)))
    return McNemar(a_only, b_only, p_value)


@dataclasses.dataclass(frozen=True)
class Interval:
    """A point estimate and its two-sided bootstrap percentile interval."""

    mean: float
    low: float
    high: float
    level: float
    resamples: int

    @property
    def includes_zero(self) -> bool:
        return self.low <= 0.0 <= self.high

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "includes_zero": self.includes_zero}


def _percentile_interval(mean: float, replicates: np.ndarray, level: float) -> Interval:
    if not 0.0 < level < 1.0:
        raise ValueError(f"`level` must be in (0, 1); received level={level!r}")
    low, high = np.quantile(replicates, [(1 - level) / 2, (1 + level) / 2])
    return Interval(float(mean), float(low), float(high), level, len(replicates))


def bootstrap_images(a_correct, b_correct, *, level=0.95, resamples=10000, seed=0) -> Interval:
    """Paired percentile bootstrap over the test images of accuracy(a) - accuracy(b).

    Each image's difference is -1, 0 or +1, so a resample of the n images is fully described by
    how many of its n draws are +1 and -1 images: the counts are drawn from the multinomial,
    which is the same distribution as drawing n indices, in O(resamples) instead of
    O(resamples x n).

    Args:
        a_correct: bool [n] per-image correctness of model a.
        b_correct: bool [n] of model b on the same images.
        level: coverage of the interval. Defaults to 0.95.
        resamples: bootstrap resamples. Defaults to 10000.
        seed: seed of the resampling. Defaults to 0.
    """
    a, b = _paired_masks(a_correct, b_correct)
    n = a.size
    up, down = int(np.sum(a & ~b)), int(np.sum(~a & b))
    counts = np.random.default_rng(seed).multinomial(
        n, [up / n, down / n, (n - up - down) / n], size=resamples
    )
    replicates = (counts[:, 0] - counts[:, 1]) / n
    return _percentile_interval((up - down) / n, replicates, level)


def hierarchical_bootstrap_replicates(a_correct, b_correct, *, resamples=10000, seed=0):
    """Resampled mean differences over seeds x images (see `hierarchical_bootstrap`).

    Returns:
        float [resamples] array of resampled mean(accuracy(a) - accuracy(b)).
    """
    a = np.asarray(a_correct, dtype=bool)
    b = np.asarray(b_correct, dtype=bool)
    if a.ndim != 2 or a.shape != b.shape or a.size == 0:
        raise ValueError(
            "hierarchical_bootstrap needs two non-empty bool arrays shaped [seeds, images]; "
            f"received shapes {a.shape} and {b.shape}"
        )
    differences = a.astype(np.int8) - b.astype(np.int8)
    seeds, n = differences.shape
    # An image enters only through its column of per-seed differences (each -1, 0 or +1), so
    # drawing n images is drawing n columns from the distinct columns at their frequencies: the
    # same distribution, with at most 3**seeds categories instead of n.
    patterns, frequency = np.unique(differences.T, axis=0, return_counts=True)
    rng = np.random.default_rng(seed)
    replicates = np.empty(resamples)
    chunk = max(1, min(resamples, 4_000_000 // (len(patterns) + seeds)))
    for start in range(0, resamples, chunk):
        size = min(chunk, resamples - start)
        # How often each seed and each image is drawn. One image resample serves every drawn
        # seed: the seeds are scored on the same images, so an image's difficulty is shared.
        seed_counts = rng.multinomial(seeds, np.full(seeds, 1 / seeds), size=size)
        image_counts = rng.multinomial(n, frequency / n, size=size)
        per_seed = image_counts @ patterns / n  # [size, seeds]
        replicates[start : start + size] = np.sum(per_seed * seed_counts, axis=1) / seeds
    return replicates


def hierarchical_bootstrap(
    a_correct, b_correct, *, level=0.95, resamples=10000, seed=0
) -> Interval:
    """Percentile interval of accuracy(a) - accuracy(b) over seeds AND test images.

    Every resample draws S seeds with replacement and, independently, n images with replacement
    (the same images for every drawn seed, since all seeds were scored on the same images), and
    averages a - b over the drawn seed x image cells. Resampling only seeds ignores that the
    test images are a sample too; resampling (seed, image) cells as one pool ignores that the
    cells of one seed share one training run. This interval covers both sources.

    Args:
        a_correct: bool [seeds, n] per-image correctness of method a, one row per seed.
        b_correct: bool [seeds, n] of method b, the same seeds in the same order.
        level: coverage of the interval. Defaults to 0.95.
        resamples: bootstrap resamples. Defaults to 10000.
        seed: seed of the resampling. Defaults to 0.
    """
    replicates = hierarchical_bootstrap_replicates(
        a_correct, b_correct, resamples=resamples, seed=seed
    )
    mean = float(np.mean(np.asarray(a_correct, float) - np.asarray(b_correct, float)))
    return _percentile_interval(mean, replicates, level)


@dataclasses.dataclass(frozen=True)
class SignFlip:
    """The exact sign-flip test over seeds: its two-sided p and the smallest p S seeds allow."""

    mean: float
    n: int
    p_value: float
    smallest_p: float

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


MAX_SIGN_FLIP_SEEDS = 20


def sign_flip_test(differences: Sequence[float]) -> SignFlip:
    """Exact randomization test that the per-seed differences are centred on 0.

    Under the null each seed's difference is as likely positive as negative, so all 2**S sign
    patterns are equally likely; p is the fraction whose |mean| is at least the observed one.
    The observed pattern and its mirror always count, so p >= 2 / 2**S (`smallest_p`).

    Args:
        differences: one finite difference per seed (at most 20: every pattern is enumerated).
    """
    values = np.asarray([float(d) for d in differences])
    check_finite(values, "sign_flip_test()")
    if not 1 <= values.size <= MAX_SIGN_FLIP_SEEDS:
        raise ValueError(
            f"sign_flip_test enumerates every sign pattern: it needs 1 to {MAX_SIGN_FLIP_SEEDS} "
            f"differences; received {values.size}"
        )
    signs = np.array(list(itertools.product((1.0, -1.0), repeat=values.size)))
    means = np.abs(signs @ values) / values.size
    observed = abs(values.mean())
    # Equal sums differ only by float rounding: count them as ties.
    p_value = float(np.mean(means >= observed - 1e-12 * max(1.0, observed)))
    return SignFlip(float(values.mean()), int(values.size), p_value, 2.0 / 2**values.size)


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the order given.

    The i-th smallest p is multiplied by (m - i + 1), made non-decreasing, capped at 1; rejecting
    where the adjusted p is below alpha controls the family-wise error at alpha.
    """
    p = [float(v) for v in p_values]
    check_finite(p, "holm()")
    order = sorted(range(len(p)), key=lambda i: p[i])
    adjusted, running = [0.0] * len(p), 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (len(p) - rank) * p[index]))
        adjusted[index] = running
    return adjusted


def seeds_needed(std: float, half_width: float, level: float = 0.95, limit: int = 1000):
    """Fewest seeds whose t interval of a paired difference has at most `half_width`.

    Solves t(0.5 + level/2, S - 1) * std / sqrt(S) <= half_width for the smallest S >= 2, at a
    per-seed spread `std` taken as known (an observed spread is itself uncertain).

    Args:
        std: sample standard deviation of the per-seed differences.
        half_width: wanted half-width, in the units of `std`.
        level: coverage of the interval. Defaults to 0.95.
        limit: the largest answer searched. Defaults to 1000.

    Returns:
        The number of seeds, or None when more than `limit` would be needed.
    """
    check_finite([std, half_width], "seeds_needed()")
    if half_width <= 0 or std < 0:
        raise ValueError(
            f"seeds_needed needs half_width > 0 and std >= 0; received half_width={half_width!r}"
            f", std={std!r}"
        )

    def fits(seeds: int) -> bool:
        return t_quantile(0.5 + level / 2, seeds - 1) * std / math.sqrt(seeds) <= half_width

    # The half-width only shrinks as seeds are added (the t quantile and 1/sqrt(S) both fall),
    # so the first count that fits is found by bisection: about log2(limit) quantiles instead
    # of up to `limit` (a summary asks this for every method after every cell).
    if limit < 2 or not fits(limit):
        return None
    too_few, enough = 1, limit  # one seed has no interval; `enough` always fits
    while enough - too_few > 1:
        middle = (too_few + enough) // 2
        if fits(middle):
            enough = middle
        else:
            too_few = middle
    return enough


def at_chance_level(accuracy: float, num_classes: int, n: int) -> bool:
    """Whether `accuracy` on `n` images is no better than guessing among `num_classes`.

    "No better" is within three binomial standard deviations above 1/C, so a model that has
    learned anything clears it on a few hundred images while a constant or label-permuted one
    does not.

    Example:
        >>> at_chance_level(0.11, 10, 1000), at_chance_level(0.5, 10, 1000)
        (True, False)
    """
    return accuracy <= chance_threshold(num_classes, n)


def chance_threshold(num_classes: int, n: int) -> float:
    """1/C plus three binomial standard deviations of an accuracy on `n` images."""
    chance = 1.0 / num_classes
    return chance + 3.0 * (chance * (1.0 - chance) / max(n, 1)) ** 0.5

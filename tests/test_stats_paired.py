"""dgad_tf.stats' per-image and per-seed tests against SciPy and exact enumeration."""

import itertools
import math

import numpy as np
import pytest

from dgad_tf import stats

scipy_stats = pytest.importorskip("scipy.stats")


def correct_pair(n, a_rate, b_rate, seed):
    """Two models that mostly agree, as two students do: the pairing narrows the interval."""
    rng = np.random.default_rng(seed)
    difficulty = rng.random(n)
    noise = rng.random(n) < 0.1
    return difficulty < a_rate, (difficulty < b_rate) ^ noise


@pytest.mark.parametrize("n", [0, 1, 7, 8, 9, 10000])
def test_packed_correctness_round_trips_in_image_order(n):
    correct = np.random.default_rng(n).random(n) < 0.5
    bits = stats.pack_correct(correct)
    assert bits.dtype == np.uint8 and bits.size == math.ceil(n / 8)
    np.testing.assert_array_equal(stats.unpack_correct(bits, n), correct)
    if n:
        # np.packbits order: image 0 is the high bit of byte 0.
        assert (bits[0] >> 7) & 1 == correct[0]


@pytest.mark.parametrize(
    "a_only, b_only",
    [(0, 0), (0, 5), (5, 0), (3, 9), (9, 3), (10, 10), (40, 61), (700, 650), (1200, 1)],
)
def test_mcnemar_exact_is_scipys_two_sided_binomial_test(a_only, b_only):
    both, neither = 30, 20
    a = np.array([True] * a_only + [False] * b_only + [True] * both + [False] * neither)
    b = np.array([False] * a_only + [True] * b_only + [True] * both + [False] * neither)
    order = np.random.default_rng(0).permutation(a.size)
    result = stats.mcnemar_exact(a[order], b[order])
    assert (result.a_only, result.b_only) == (a_only, b_only)
    expected = (
        1.0 if a_only + b_only == 0 else scipy_stats.binomtest(a_only, a_only + b_only, 0.5).pvalue
    )
    assert result.p_value == pytest.approx(expected, rel=1e-9, abs=1e-300)


def test_mcnemar_refuses_arrays_over_different_images():
    with pytest.raises(ValueError, match="same images"):
        stats.mcnemar_exact(np.ones(5, bool), np.ones(6, bool))


def test_image_bootstrap_matches_scipys_paired_percentile_bootstrap():
    a, b = correct_pair(400, 0.55, 0.48, seed=1)
    ours = stats.bootstrap_images(a, b, resamples=40000, seed=3)
    theirs = scipy_stats.bootstrap(
        (a.astype(float), b.astype(float)),
        lambda x, y, axis: np.mean(x - y, axis=axis),
        paired=True,
        vectorized=True,
        n_resamples=40000,
        method="percentile",
        random_state=np.random.default_rng(4),
    ).confidence_interval
    assert ours.mean == pytest.approx(np.mean(a.astype(float) - b), abs=1e-12)
    # Two Monte Carlo estimates of the same quantiles: their standard error is ~0.0015 here.
    assert ours.low == pytest.approx(theirs.low, abs=0.006)
    assert ours.high == pytest.approx(theirs.high, abs=0.006)
    assert ours.resamples == 40000 and ours.level == 0.95


def test_image_bootstrap_is_reproducible_from_its_seed():
    a, b = correct_pair(300, 0.5, 0.5, seed=2)
    assert stats.bootstrap_images(a, b, seed=5) == stats.bootstrap_images(a, b, seed=5)


def exact_hierarchical_distribution(a, b):
    """Every (seed draw, image draw) of the crossed bootstrap, each equally likely."""
    d = a.astype(float) - b.astype(float)
    seeds, n = d.shape
    values = {}
    for seed_draw in itertools.product(range(seeds), repeat=seeds):
        for image_draw in itertools.product(range(n), repeat=n):
            value = round(float(d[np.ix_(seed_draw, image_draw)].mean()), 9)
            values[value] = values.get(value, 0) + 1
    total = seeds**seeds * n**n
    return {v: c / total for v, c in values.items()}


def test_hierarchical_bootstrap_draws_seeds_and_images_as_the_enumeration_says():
    # 2 seeds x 3 images: 4 x 27 equally likely resamples, enumerated exactly.
    a = np.array([[1, 1, 0], [1, 0, 0]], bool)
    b = np.array([[0, 1, 0], [1, 1, 1]], bool)
    exact = exact_hierarchical_distribution(a, b)
    replicates = stats.hierarchical_bootstrap_replicates(a, b, resamples=60000, seed=0)
    observed = {v: np.mean(np.isclose(replicates, v, atol=1e-9)) for v in exact}
    assert sum(observed.values()) == pytest.approx(1.0)
    for value, probability in exact.items():
        # binomial standard error at 60,000 draws is at most 0.002
        assert observed[value] == pytest.approx(probability, abs=0.008), value
    exact_var = sum(p * v**2 for v, p in exact.items()) - sum(p * v for v, p in exact.items()) ** 2
    assert np.var(replicates) == pytest.approx(exact_var, rel=0.03)


def test_hierarchical_interval_is_wider_than_the_one_seed_image_interval():
    rng = np.random.default_rng(7)
    # Seeds that disagree: seed effects +8 and -2 points on the same 500 images.
    base = rng.random(500)
    a = np.stack([base < 0.58, base < 0.48])
    b = np.stack([base < 0.50, base < 0.50])
    both = stats.hierarchical_bootstrap(a, b, resamples=20000, seed=1)
    assert both.mean == pytest.approx(np.mean(a.astype(float) - b), abs=1e-12)
    assert both.low < 0 < both.high
    one = stats.bootstrap_images(a[0], b[0], resamples=20000, seed=1)
    assert one.low > 0  # seed 0 alone "excludes 0"


def test_hierarchical_bootstrap_refuses_unpaired_shapes():
    with pytest.raises(ValueError, match=r"\[seeds, images\]"):
        stats.hierarchical_bootstrap(np.ones((2, 5), bool), np.ones((3, 5), bool))


@pytest.mark.parametrize(
    "differences",
    [
        [0.02, 0.03],
        [0.039, 0.037],
        [0.01, -0.02, 0.03],
        [0.05, 0.04, 0.06, 0.03, 0.05],
        [0.01, 0.0, -0.01, 0.02, 0.02, 0.03],
        [0.04, 0.03, 0.05, 0.02, 0.06, 0.01, 0.02],
    ],
)
def test_sign_flip_p_is_scipys_exact_permutation_test(differences):
    result = stats.sign_flip_test(differences)
    theirs = scipy_stats.permutation_test(
        (np.array(differences),),
        lambda x, axis: np.mean(x, axis=axis),
        permutation_type="samples",
        vectorized=True,
        n_resamples=np.inf,
        alternative="two-sided",
    )
    assert result.p_value == pytest.approx(theirs.pvalue, abs=1e-12)
    assert result.smallest_p == 2 / 2 ** len(differences)
    assert result.mean == pytest.approx(np.mean(differences))


@pytest.mark.parametrize("seeds, smallest", [(2, 0.5), (5, 0.0625), (6, 0.03125)])
def test_all_positive_differences_reach_the_smallest_p_the_seeds_allow(seeds, smallest):
    result = stats.sign_flip_test([0.01 * (k + 1) for k in range(seeds)])
    assert result.p_value == result.smallest_p == smallest


def closed_testing_bonferroni(p):
    """Holm = closed testing of Bonferroni: max over every subset holding i of |I| min p_I."""
    m = len(p)
    adjusted = []
    for i in range(m):
        worst = 0.0
        for size in range(1, m + 1):
            for subset in itertools.combinations(range(m), size):
                if i in subset:
                    worst = max(worst, min(1.0, size * min(p[j] for j in subset)))
        adjusted.append(worst)
    return adjusted


@pytest.mark.parametrize(
    "p",
    [
        [0.01],
        [0.01, 0.04],
        [0.04, 0.01, 0.03],
        [0.2, 0.001, 0.03, 0.03, 0.5],
        [0.5, 0.4, 0.3, 0.2, 0.1, 0.01],
        [0.012, 0.011, 0.9],
    ],
)
def test_holm_equals_closed_testing_by_enumeration(p):
    assert stats.holm(p) == pytest.approx(closed_testing_bonferroni(p), abs=1e-15)


def test_non_finite_values_are_refused():
    with pytest.raises(ValueError, match="non-finite"):
        stats.sign_flip_test([0.1, float("nan")])
    with pytest.raises(ValueError, match="non-finite"):
        stats.paired_difference([0.5, float("nan")], [0.4, 0.4])
    with pytest.raises(ValueError, match="non-finite"):
        stats.holm([0.1, float("inf")])


@pytest.mark.parametrize(
    "std, half_width", [(0.01, 0.01), (0.02, 0.01), (0.005, 0.01), (0.03, 0.005)]
)
def test_seeds_needed_is_the_first_seed_count_whose_t_interval_fits(std, half_width):
    needed = stats.seeds_needed(std, half_width)

    def half(s):
        return scipy_stats.t.ppf(0.975, s - 1) * std / math.sqrt(s)

    assert half(needed) <= half_width * (1 + 1e-9)
    assert needed == 2 or half(needed - 1) > half_width


def test_seeds_needed_says_none_past_its_limit():
    assert stats.seeds_needed(1.0, 0.001, limit=50) is None


@pytest.mark.parametrize(
    "std, half_width, level",
    [
        (0.0, 0.01, 0.95),
        (0.01, 0.01, 0.95),
        (0.03, 0.005, 0.95),
        (0.02, 0.01, 0.8),
        (0.004, 0.001, 0.95),
        (0.05, 0.003, 0.95),
    ],
)
def test_seeds_needed_is_a_scan_of_every_seed_count_up_to_the_limit(std, half_width, level):
    """The first S = 2, 3, ... whose SciPy t interval fits, found one by one; limit inclusive."""

    def fits(s):
        return scipy_stats.t.ppf(0.5 + level / 2, s - 1) * std / math.sqrt(s) <= half_width

    first = next(s for s in itertools.count(2) if fits(s))
    assert stats.seeds_needed(std, half_width, level) == (first if first <= 1000 else None)
    for limit in sorted({1, 2, 3, first - 1, first, first + 1, 2 * first + 5}):
        expected = first if limit >= first else None
        assert stats.seeds_needed(std, half_width, level, limit=limit) == expected, limit


def test_seeds_needed_counts_a_half_width_reached_exactly():
    """An interval exactly `half_width` wide fits ("at most"): 5 seeds, not 6."""
    half_width = stats.t_quantile(0.975, 4) * 0.01 / math.sqrt(5)
    assert stats.seeds_needed(0.01, half_width) == 5
    assert stats.seeds_needed(0.01, half_width * (1 - 1e-9)) == 6


@pytest.mark.parametrize("std, half_width", [(0.01, 0.0), (0.01, -0.01), (-0.01, 0.01)])
def test_seeds_needed_refuses_a_width_or_spread_with_no_answer(std, half_width):
    with pytest.raises(
        ValueError,
        match=rf"seeds_needed needs half_width > 0 and std >= 0; received "
        rf"half_width={half_width!r}, std={std!r}",
    ):
        stats.seeds_needed(std, half_width)


def test_seeds_needed_searches_up_to_1000_seeds_by_default():
    """summary.md's "more than 1000" is the default limit: 1,000 seeds is an answer, 1,001 not."""
    exactly_1000 = stats.t_quantile(0.975, 999) / math.sqrt(1000)
    assert stats.seeds_needed(1.0, exactly_1000) == 1000
    exactly_1001 = stats.t_quantile(0.975, 1000) / math.sqrt(1001)
    assert stats.seeds_needed(1.0, exactly_1001, limit=1001) == 1001
    assert stats.seeds_needed(1.0, exactly_1001) is None


def test_seeds_needed_refuses_a_non_finite_spread_naming_itself():
    with pytest.raises(ValueError, match=r"^seeds_needed\(\) holds a non-finite value \(nan\)"):
        stats.seeds_needed(float("nan"), 0.01)


def test_unpacked_correctness_is_a_bool_mask():
    correct = np.array([True, False, True, True, False, False, True, False, True])
    unpacked = stats.unpack_correct(stats.pack_correct(correct), correct.size)
    # a mask, not 0/1 numbers: ~ and & must act as logical not and and
    assert unpacked.dtype == bool
    np.testing.assert_array_equal(~unpacked & correct, np.zeros(correct.size, bool))


def test_bootstrap_intervals_say_whether_they_include_zero():
    a, b = correct_pair(300, 0.6, 0.5, seed=3)
    for interval in (
        stats.bootstrap_images(a, b),
        stats.bootstrap_images(b, a),
        stats.bootstrap_images(a, a),
        stats.hierarchical_bootstrap(np.stack([a, b]), np.stack([b, b])),
    ):
        values = interval.to_dict()
        assert values == {
            "mean": interval.mean,
            "low": interval.low,
            "high": interval.high,
            "level": 0.95,
            "resamples": 10000,
            "includes_zero": interval.low <= 0 <= interval.high,
        }


def test_hierarchical_bootstrap_defaults_are_10000_resamples_from_seed_0():
    a, b = correct_pair(200, 0.6, 0.5, seed=4)
    a, b = np.stack([a, b]), np.stack([b, b])
    replicates = stats.hierarchical_bootstrap_replicates(a, b)
    assert replicates.shape == (10000,)
    np.testing.assert_array_equal(
        replicates, stats.hierarchical_bootstrap_replicates(a, b, resamples=10000, seed=0)
    )
    assert stats.hierarchical_bootstrap(a, b) == stats.hierarchical_bootstrap(
        a, b, resamples=10000, seed=0
    )
    # a given seed gives the same replicates every time
    np.testing.assert_array_equal(
        stats.hierarchical_bootstrap_replicates(a, b, resamples=500, seed=7),
        stats.hierarchical_bootstrap_replicates(a, b, resamples=500, seed=7),
    )


def test_hierarchical_bootstrap_of_one_seed_and_one_image_is_that_difference():
    replicates = stats.hierarchical_bootstrap_replicates([[True]], [[False]], resamples=50)
    np.testing.assert_array_equal(replicates, np.ones(50))


@pytest.mark.parametrize("shape", [(2, 0), (0, 5)])
def test_hierarchical_bootstrap_refuses_empty_arrays_naming_the_shapes(shape):
    empty = np.zeros(shape, bool)
    with pytest.raises(ValueError) as error:
        stats.hierarchical_bootstrap(empty, empty)
    assert str(error.value) == (
        "hierarchical_bootstrap needs two non-empty bool arrays shaped [seeds, images]; "
        f"received shapes {shape} and {shape}"
    )


def test_hierarchical_bootstrap_variance_in_chunks_is_the_exact_variance():
    """6 seeds x 3000 images: ~700 distinct columns, so 20,000 resamples are drawn in chunks.

    Exact variance of R = mean over S drawn seeds of X_s, X = the image-resampled row means
    (the same image draw for every seed): Var(R) = (1/S) E[popvar_s X] + Var(mean_s X), with
    Cov(X) = Sigma / n (Sigma: the population covariance of the columns) and mu the row means,
    E[popvar_s X] = popvar(mu) + tr(C Sigma) / (S n), C the centring matrix, and
    Var(mean_s X) = 1' Sigma 1 / (S^2 n).
    """
    rng = np.random.default_rng(11)
    seeds, n = 6, 3000
    a, b = rng.random((seeds, n)) < 0.6, rng.random((seeds, n)) < 0.5
    d = a.astype(float) - b
    patterns = np.unique(d.T, axis=0)
    assert 4_000_000 // (len(patterns) + seeds) < 20000  # more than one chunk
    sigma = np.cov(d, bias=True)
    centre = np.eye(seeds) - 1.0 / seeds
    mu = d.mean(axis=1)
    exact = (np.var(mu) + np.trace(centre @ sigma) / (seeds * n)) / seeds + sigma.sum() / (
        seeds**2 * n
    )
    replicates = stats.hierarchical_bootstrap_replicates(a, b, resamples=20000, seed=2)
    assert replicates.shape == (20000,)
    assert np.mean(replicates) == pytest.approx(d.mean(), abs=4 * math.sqrt(exact / 20000))
    # the sample variance of 20,000 draws has a relative standard error of about 1%
    assert np.var(replicates) == pytest.approx(exact, rel=0.05)


@pytest.mark.parametrize("level", [0.5, 0.8])
def test_image_bootstrap_honours_the_level(level):
    a, b = correct_pair(400, 0.55, 0.48, seed=1)
    ours = stats.bootstrap_images(a, b, level=level, resamples=40000, seed=3)
    theirs = scipy_stats.bootstrap(
        (a.astype(float), b.astype(float)),
        lambda x, y, axis: np.mean(x - y, axis=axis),
        paired=True,
        vectorized=True,
        n_resamples=40000,
        confidence_level=level,
        method="percentile",
        random_state=np.random.default_rng(4),
    ).confidence_interval
    assert ours.level == level
    assert ours.low == pytest.approx(theirs.low, abs=0.003)
    assert ours.high == pytest.approx(theirs.high, abs=0.003)


@pytest.mark.parametrize("level", [0.0, 1.0, 1.5, -0.2])
def test_a_level_outside_0_1_is_refused(level):
    a, b = correct_pair(50, 0.5, 0.5, seed=0)
    for interval in (stats.bootstrap_images, stats.hierarchical_bootstrap):
        args = (a, b) if interval is stats.bootstrap_images else (a[None], b[None])
        with pytest.raises(ValueError) as error:
            interval(*args, level=level, resamples=10)
        assert str(error.value) == f"`level` must be in (0, 1); received level={level!r}"


def test_image_bootstrap_defaults_are_10000_resamples_from_seed_0():
    a, b = correct_pair(300, 0.55, 0.5, seed=5)
    default = stats.bootstrap_images(a, b)
    assert default.resamples == 10000
    assert default == stats.bootstrap_images(a, b, resamples=10000, seed=0)


@pytest.mark.parametrize("dtype", [np.int64, np.float32])
def test_correctness_given_as_0_1_numbers_is_read_as_a_mask(dtype):
    a, b = correct_pair(200, 0.6, 0.5, seed=6)
    assert stats.mcnemar_exact(a.astype(dtype), b.astype(dtype)) == stats.mcnemar_exact(a, b)
    assert stats.bootstrap_images(a.astype(dtype), b.astype(dtype)) == stats.bootstrap_images(a, b)
    np.testing.assert_array_equal(stats.pack_correct(a.astype(dtype)), stats.pack_correct(a))


def test_one_image_is_a_paired_comparison_and_none_is_refused():
    assert stats.mcnemar_exact([True], [False]) == stats.McNemar(1, 0, 1.0)
    one = stats.bootstrap_images([True], [False], resamples=20)
    assert (one.mean, one.low, one.high) == (1.0, 1.0, 1.0)
    with pytest.raises(ValueError) as error:
        stats.mcnemar_exact([], [])
    assert str(error.value) == (
        "a paired comparison needs two non-empty correctness arrays over the same images; "
        "received shapes (0,) and (0,)"
    )


def test_hierarchical_interval_is_the_percentiles_of_its_replicates():
    a, b = correct_pair(200, 0.6, 0.5, seed=8)
    a, b = np.stack([a, b, a]), np.stack([b, b, a])
    interval = stats.hierarchical_bootstrap(a, b, level=0.9, resamples=500, seed=7)
    replicates = stats.hierarchical_bootstrap_replicates(a, b, resamples=500, seed=7)
    assert interval.resamples == 500 and interval.level == 0.9
    assert (interval.low, interval.high) == tuple(np.quantile(replicates, [0.05, 0.95]))
    assert interval.mean == pytest.approx(np.mean(a.astype(float) - b), abs=1e-12)

"""dgad_tf.stats against hand-computed values and published t-table quantiles."""

import math

import pytest

from dgad_tf import stats


@pytest.mark.parametrize(
    "dof, expected",
    # Two-sided 95% critical values of Student's t, as printed in every t table.
    [(1, 12.7062), (2, 4.3027), (3, 3.1824), (4, 2.7764), (5, 2.5706), (9, 2.2622), (30, 2.0423)],
)
def test_t_quantile_matches_the_t_table(dof, expected):
    assert stats.t_quantile(0.975, dof) == pytest.approx(expected, abs=5e-5)


def test_t_quantile_other_levels():
    assert stats.t_quantile(0.995, 3) == pytest.approx(5.8409, abs=5e-5)  # 99% two-sided
    assert stats.t_quantile(0.95, 10) == pytest.approx(1.8125, abs=5e-5)  # 90% two-sided
    assert stats.t_quantile(0.75, 30) == pytest.approx(0.6828, abs=5e-5)  # below 1


@pytest.mark.parametrize("p, dof", [(0.5, 3), (1.0, 3), (0.975, 0), (0.975, 2.5)])
def test_t_quantile_refuses_what_it_cannot_compute(p, dof):
    with pytest.raises(ValueError):
        stats.t_quantile(p, dof)


def test_spread_is_the_sample_standard_deviation():
    # mean 0.5; squared deviations 0.0004, 0, 0.0004 -> 0.0008 / (3 - 1) -> sd 0.02
    result = stats.spread([0.52, 0.50, 0.48])
    assert result.mean == pytest.approx(0.5)
    assert result.n == 3
    assert result.std == pytest.approx(0.02)
    # the population sd (divide by 3) would be 0.01633
    assert stats.spread([0.6, 0.7]).std == pytest.approx(math.sqrt(0.005))
    assert stats.spread([0.7]).std is None


def test_paired_difference_by_hand():
    # differences 0.02, 0.01, 0.03: mean 0.02, sd 0.01, se 0.01/sqrt(3); t(0.975, 2) = 4.302653
    result = stats.paired_difference([0.52, 0.50, 0.55], [0.50, 0.49, 0.52])
    half = 4.302653 * 0.01 / math.sqrt(3)
    assert result.mean == pytest.approx(0.02)
    assert result.std == pytest.approx(0.01)
    assert result.low == pytest.approx(0.02 - half, abs=1e-6)
    assert result.high == pytest.approx(0.02 + half, abs=1e-6)
    assert result.includes_zero  # 0.02 - 0.0248 < 0


def test_paired_difference_pairs_by_position_not_by_sorting():
    # a is higher on every pair, by 0.1; unpaired spreads would overlap heavily
    result = stats.paired_difference([0.3, 0.6, 0.9], [0.2, 0.5, 0.8])
    assert result.std == pytest.approx(0.0, abs=1e-12)
    assert result.low == pytest.approx(0.1) and not result.includes_zero
    # 0.6 - 0.5 and 0.9 - 0.8 differ from 0.1 by float rounding only: still no spread.
    assert result.no_spread and result.to_dict()["no_spread"]


def test_differences_that_vary_have_spread():
    result = stats.paired_difference([0.52, 0.50], [0.50, 0.49])
    assert not result.no_spread and result.to_dict()["no_spread"] is False
    assert not stats.paired_difference([0.6], [0.5]).no_spread


def test_one_pair_gives_no_interval():
    result = stats.paired_difference([0.6], [0.5])
    assert result.mean == pytest.approx(0.1)
    assert result.low is None and result.includes_zero is None


def test_unequal_lengths_are_refused():
    with pytest.raises(ValueError, match="equal length"):
        stats.paired_difference([0.1, 0.2], [0.1])


def test_spread_of_nothing_is_refused_naming_the_problem():
    with pytest.raises(ValueError, match=r"^spread\(\) needs at least one value$"):
        stats.spread([])


def test_to_dict_holds_every_number_of_the_summary():
    assert stats.spread([0.6, 0.7]).to_dict() == {
        "mean": pytest.approx(0.65),
        "std": pytest.approx(math.sqrt(0.005)),
        "n": 2,
    }
    assert stats.paired_difference([0.6], [0.5], level=0.9).to_dict() == {
        "mean": pytest.approx(0.1),
        "std": None,
        "n": 1,
        "level": 0.9,
        "low": None,
        "high": None,
        "includes_zero": None,
        "no_spread": False,
    }
    result = stats.paired_difference([0.52, 0.50, 0.55], [0.50, 0.49, 0.52], level=0.9)
    half = 2.919986 * 0.01 / math.sqrt(3)  # t(0.95, 2), the 90% two-sided table value
    assert result.to_dict() == {
        "mean": pytest.approx(0.02),
        "std": pytest.approx(0.01),
        "n": 3,
        "level": 0.9,
        "low": pytest.approx(0.02 - half, abs=1e-6),
        "high": pytest.approx(0.02 + half, abs=1e-6),
        "includes_zero": False,
        "no_spread": False,
    }


def test_refusals_name_the_argument_and_the_value_received():
    with pytest.raises(ValueError) as caught:
        stats.paired_difference([0.1, 0.2], [0.1])
    assert str(caught.value) == (
        "paired_difference needs two non-empty lists of equal length; received 2 and 1 values"
    )
    with pytest.raises(ValueError) as caught:
        stats.t_quantile(0.5, 3)
    assert str(caught.value) == "t_quantile needs 0.5 < p < 1; received p=0.5"
    with pytest.raises(ValueError) as caught:
        stats.t_quantile(0.975, 2.5)
    assert str(caught.value) == "t_quantile needs an integer dof >= 1; received dof=2.5"


@pytest.mark.parametrize("num_classes, n", [(10, 500), (10, 1000), (2, 40), (200, 10000), (10, 0)])
def test_chance_level_is_one_over_c_plus_three_binomial_standard_deviations(num_classes, n):
    # The binomial standard deviation of an accuracy on n images under guessing, from SciPy.
    scipy_stats = pytest.importorskip("scipy.stats")
    sd = scipy_stats.binom(max(n, 1), 1 / num_classes).std() / max(n, 1)
    threshold = 1 / num_classes + 3 * sd
    assert stats.chance_threshold(num_classes, n) == pytest.approx(threshold, rel=1e-12)
    # At the threshold is still chance; a hair above it is not.
    assert stats.at_chance_level(threshold, num_classes, n)
    assert not stats.at_chance_level(threshold + 1e-9, num_classes, n)
    assert stats.at_chance_level(1 / num_classes, num_classes, n)

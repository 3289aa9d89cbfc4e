"""The figures' confidence intervals: exact t quantiles and paired differences."""

import math

import pytest

from testbed.stats import mean_ci, paired_diff, t95


def test_t_quantiles_are_exact_not_rounded_down() -> None:
    assert t95(1) == pytest.approx(12.706, abs=1e-3)
    assert t95(10) == pytest.approx(2.228, abs=1e-3)
    assert t95(19) == pytest.approx(2.093, abs=1e-3)  # the old table used 2.13 (df 15)
    assert t95(200) == pytest.approx(1.972, abs=1e-3)
    with pytest.raises(ValueError):
        t95(0)


def test_mean_ci_half_width() -> None:
    mu, ci = mean_ci([1.0, 2.0, 3.0, 4.0])
    assert mu == 2.5
    assert ci == pytest.approx(t95(3) * math.sqrt(5 / 3) / 2)


def test_paired_difference_sees_what_overlapping_bars_hide() -> None:
    base = [10.0, 20.0, 30.0, 40.0, 50.0]
    better = [x - 1.0 + 0.1 * (i % 2) for i, x in enumerate(base)]
    mu, ci, significant = paired_diff(better, base)
    assert mu == pytest.approx(-0.96)
    assert significant and ci < 0.2
    # means with CIs: the two bars overlap almost entirely
    assert abs(mean_ci(better)[0] - mean_ci(base)[0]) < mean_ci(base)[1]
    assert not paired_diff([1.0, -1.0, 1.0], [0.0, 0.0, 0.0])[2]
    with pytest.raises(ValueError, match="length"):
        paired_diff([1.0], [1.0, 2.0])

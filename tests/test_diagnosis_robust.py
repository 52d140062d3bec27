"""Tests of the robust-statistics helpers (diagnosis.robust)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tb_gradplugin.diagnosis import (
    robust,
)
from tests.diagnosis_runs import (
    rng,
)


def test_rolling_median_matches_a_direct_computation():
    """The centred rolling median equals np.median over each clipped window."""
    x = rng(17).standard_normal(41)
    got = robust.rolling_median(x, 5)
    want = [np.median(x[max(0, i - 2) : i + 3]) for i in range(41)]
    np.testing.assert_allclose(got, want)


def test_lag1_matches_numpy_corrcoef_on_detrended_data():
    """The lag-1 autocorrelation agrees with an independent computation."""
    x = np.cumsum(rng(18).standard_normal(200)) + 0.1 * np.arange(200)
    t = np.arange(200)
    res = x - np.polyval(np.polyfit(t, x, 1), t)
    want = np.sum(res[:-1] * res[1:]) / np.sum(res * res)
    assert robust.lag1_autocorrelation(x) == pytest.approx(want)
    assert abs(np.corrcoef(res[:-1], res[1:])[0, 1] - want) < 0.05


def test_cumulative_quantile_matches_numpy_on_every_prefix():
    """Exact at every point when the series is short enough."""
    x = rng(3).standard_normal(60)
    got = robust.cumulative_quantile(x, 0.25)
    want = [np.quantile(x[: i + 1], 0.25) for i in range(60)]
    np.testing.assert_allclose(got, want)


def test_cumulative_quantile_holds_the_last_exact_value_between_places():
    """With fewer exact places than points, a point takes the earlier place's value."""
    x = np.arange(10.0)
    got = robust.cumulative_quantile(x, 1.0, points=4)
    # Exact places 0, 3, 6, 9: the running maximum there, held in between.
    np.testing.assert_array_equal(got, [0, 0, 0, 3, 3, 3, 6, 6, 6, 9])


def test_nan_aware_median_and_quantile_skip_non_finite_values():
    """NaN and Inf are left out; nothing finite gives NaN."""
    x = np.array([1.0, np.nan, 3.0, np.inf, 2.0])
    assert robust.nanmedian(x) == 2.0
    assert robust.nanquantile(x, 1.0) == 3.0
    assert math.isnan(robust.nanmedian(np.array([np.nan])))
    assert math.isnan(robust.nanquantile(np.array([]), 0.5))


def test_thirds_late_window_and_candidate_starts():
    """Thirds are medians of the ends; the late window is the second half."""
    assert robust.thirds(np.array([1.0, 2.0, 3.0, 7.0, 8.0, 9.0])) == (1.5, 8.5)
    assert robust.late_window(10) == slice(5, 10)
    assert robust.late_window(1) == slice(0, 1)
    assert robust.candidate_starts(80) == [0, 10, 20, 30, 40]


def test_initial_loss_and_improvement():
    """The initial loss is the median of three points; improvement is relative."""
    assert robust.initial_loss(np.array([2.0, 9.0, 1.0, 0.0])) == 2.0
    assert robust.improvement(2.0, 0.5) == 0.75
    assert robust.improvement(2.0, 3.0) == -0.5


def test_isotonic_decreasing_pools_violators_and_keeps_a_falling_series():
    """Rises are pooled into their mean; a non-increasing series is its own fit."""
    np.testing.assert_allclose(
        robust.isotonic_decreasing(np.array([3.0, 1.0, 2.0, 0.0])), [3, 1.5, 1.5, 0]
    )
    np.testing.assert_allclose(
        robust.isotonic_decreasing(np.array([1.0, 2.0, 3.0])), [2, 2, 2]
    )
    falling = np.array([5.0, 4.0, 4.0, 1.0])
    np.testing.assert_array_equal(robust.isotonic_decreasing(falling), falling)


def test_isotonic_decreasing_is_the_least_squares_fit():
    """No other non-increasing series is closer (checked against perturbations)."""
    x = rng(4).standard_normal(30).cumsum()
    fit = robust.isotonic_decreasing(x)
    assert np.all(np.diff(fit) <= 1e-12)
    best = np.sum((x - fit) ** 2)
    for seed in range(20):
        other = np.sort(fit + 0.1 * rng(seed + 40).standard_normal(30))[::-1]
        assert np.sum((x - other) ** 2) >= best - 1e-9


def test_variance_ratio_is_one_for_noise_and_large_for_swings():
    """Noise gives ≈ 1, slow waves far more, step-to-step alternation far less."""
    noise = rng(5).standard_normal(4000)
    assert 0.7 < robust.variance_ratio(noise, 20) < 1.3
    t = np.arange(4000)
    waves = np.sin(2 * np.pi * t / 400) + 0.5 * noise
    assert robust.variance_ratio(waves, 20) > 10
    alternating = np.where(t % 2, 1.0, -1.0) + 0.1 * noise
    assert robust.variance_ratio(alternating, 20) < 0.1
    assert math.isnan(robust.variance_ratio(np.ones(10), 2))
    assert math.isnan(robust.variance_ratio(noise[:3], 2))


def test_rank_lag1_sees_an_alternation_through_a_rare_spike():
    """One huge point hides an alternation from the plain r1, not from the ranks'."""
    t = np.arange(300)
    x = np.where(t % 2, 0.5, 0.9) + 0.02 * rng(6).standard_normal(300)
    x[::60] = 12.0
    assert robust.lag1_autocorrelation(x) > -0.3
    assert robust.rank_lag1_autocorrelation(x) < -0.6
    noise = rng(7).standard_normal(300)
    assert abs(robust.rank_lag1_autocorrelation(noise)) < 0.2


def test_rolling_min_is_the_minimum_of_each_run():
    """Each output is the minimum of width consecutive points."""
    x = np.array([3.0, 1.0, 4.0, 1.0, 5.0, 9.0, 2.0])
    np.testing.assert_array_equal(robust.rolling_min(x, 3), [1, 1, 1, 1, 2])
    np.testing.assert_array_equal(robust.rolling_min(x, 20), [1])
    np.testing.assert_array_equal(robust.rolling_min(x, 1), x)
    assert robust.rolling_min(np.zeros(0), 3).shape == (0,)


@pytest.mark.parametrize("width", [3, 5, 9])
def test_rolling_median_equals_the_median_of_each_window(width):
    """Every point is np.median of its window, ties and both dtypes included."""
    rng = np.random.default_rng(width)
    for dtype in (np.float32, np.float64):
        x = np.round(rng.normal(size=301), 1).astype(dtype)
        half = width // 2
        want = [np.median(x[max(0, i - half) : i + half + 1]) for i in range(301)]
        np.testing.assert_array_equal(robust.rolling_median(x, width), want)


def test_rolling_min_skips_nan_like_nanmin():
    """A run's minimum ignores NaN; a run of NaN only gives NaN."""
    x = np.array([np.nan, 2.0, np.nan, np.nan, np.nan, 5.0, 1.0, 7.0, 3.0, 0.5])
    want = [
        np.nanmin(x[i : i + 3]) if np.isfinite(x[i : i + 3]).any() else np.nan
        for i in range(8)
    ]
    np.testing.assert_array_equal(robust.rolling_min(x, 3), want)
    np.testing.assert_array_equal(robust.rolling_min(x, 7), [1.0, 1.0, 1.0, 0.5])


@pytest.mark.parametrize("q", [0.0, 0.25, 0.5, 0.9, 1.0])
def test_cumulative_quantile_equals_np_quantile_of_each_prefix(q):
    """At every exact point the value is np.quantile of the prefix, bit for bit."""
    rng = np.random.default_rng(3)
    x = np.concatenate([np.round(rng.normal(size=150), 1), rng.normal(size=150)])
    got = robust.cumulative_quantile(x, q, points=300)
    want = [np.quantile(x[: i + 1], q) for i in range(300)]
    np.testing.assert_array_equal(got, want)


def test_ranks_equal_the_double_stable_argsort_with_ties():
    """One argsort inverted gives the ranks of two stable argsorts, ties included."""
    x = np.round(np.random.default_rng(5).normal(size=2000), 1)
    want = np.argsort(np.argsort(x, kind="stable"), kind="stable")
    np.testing.assert_array_equal(robust.ranks(x), want)
    np.testing.assert_array_equal(robust.ranks(np.array([2.0, 1.0, 2.0])), [1, 0, 2])


@pytest.mark.parametrize("n", [1, 2, 3, 7, 401, 5_000])
def test_cumulative_quantile_is_np_quantile_with_ties_at_any_length(n):
    """Repeated values and lengths around the bucket sizes change no bit."""
    rng = np.random.default_rng(n)
    x = np.round(rng.standard_normal(n), 1)  # many ties
    at = np.unique(np.linspace(0, n - 1, min(n, 400)).astype(int))
    for q in (0.0, 0.25, 0.5, 1.0):
        got = robust.cumulative_quantile(x, q)
        want = np.array([np.quantile(x[: i + 1], q) for i in at])
        assert np.array_equal(got[at], want), q

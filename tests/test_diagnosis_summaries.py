"""Tests of the display summaries (diagnosis.summaries)."""

from __future__ import annotations

import numpy as np
import pytest

from tb_gradplugin.diagnosis import RECENT_STEPS, recent_median, volatility


def test_volatility_matches_numpy_and_separates_settled_from_swinging():
    """The volatility figure is std(diff(second half)) / mean |second half|."""
    rng = np.random.default_rng(2)
    swing = 2 + np.sin(np.arange(200)) * 1.5
    settled = 1 + 1e-3 * rng.normal(size=200)
    tail = swing[100:]
    expect = np.std(np.diff(tail)) / np.mean(np.abs(tail))
    assert volatility(swing) == pytest.approx(expect, rel=1e-12)
    assert volatility(settled) < 0.01 < 0.5 < volatility(swing)
    assert volatility(np.array([1.0, np.nan])) is None
    assert volatility(np.zeros(8)) == 0.0


def test_recent_median_takes_the_last_rows_per_variable():
    """Only the last RECENT_STEPS rows count; NaN and Inf are skipped per column."""
    old = np.full((50, 2), 100.0)
    recent = np.stack([np.arange(RECENT_STEPS, dtype=float), np.full(100, 2.0)], 1)
    recent[::2, 1] = np.inf
    got = recent_median(np.concatenate([old, recent]))
    np.testing.assert_allclose(got, [np.median(np.arange(100.0)), 2.0])
    assert np.isnan(recent_median(np.full((3, 1), np.nan))).all()
    np.testing.assert_array_equal(recent_median(recent, steps=1), recent[-1])

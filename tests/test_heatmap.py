"""Tests of tb_gradplugin.heatmap: bucket maxima, NaN findings, absent cells."""

from __future__ import annotations

import numpy as np

from tb_gradplugin import heatmap, reader
from tests.test_shaping import _series


def test_heatmap_cells_are_bucket_maxima_with_nan_kept():
    """Heatmap cells hold each step bucket's maximum, NaN when the bucket has one."""
    values = np.arange(40, dtype=np.float64).reshape(10, 4)
    values[3, 2] = np.nan
    series = reader.Series(
        steps=np.arange(1, 11),
        values=values,
        wall_times=np.zeros(10),
        content={"variables": ["a", "b", "c", "d"]},
    )
    out = heatmap.heatmap_json(series, 2)
    assert out["variables"] == ["a", "b", "c", "d"]
    assert out["steps"] == [5, 10]
    assert out["step_ranges"] == [[1, 5], [6, 10]]
    assert out["values"][0] == [16.0, 36.0]
    assert out["values"][2] == ["NaN", 38.0]  # sent as TensorBoard sends NaN


def _heatmap_reference(values, counts, buckets):
    """Cells by a plain loop: max of updated finite values, NaN, or None."""
    n, k = values.shape
    edges = np.linspace(0, n, buckets + 1).round().astype(int)
    rows = []
    for j in range(k):
        row = []
        for a, b in zip(edges[:-1], edges[1:], strict=True):
            cell = values[a:b, j]
            absent = np.isnan(cell) & (counts[a:b, j] == 0)
            kept = cell[~absent]
            if not kept.size:
                row.append(None)
            elif not np.isfinite(kept).all():
                row.append("NaN")
            else:
                row.append(float(kept.max()))
        rows.append(row)
    return rows


def test_heatmap_cells_not_updated_are_null_and_nonfinite_stay_nan():
    """Absent steps (NaN, count 0) are left out; an all-absent cell is null."""
    rng = np.random.default_rng(3)
    steps = np.arange(1, 101)
    values = rng.random((100, 3))
    counts = np.zeros((100, 3))
    values[:40, 0] = np.nan  # frozen for the first 40 steps
    values[60:65, 1] = np.nan  # frozen within a bucket holding updated steps
    values[70, 2], counts[70, 2] = np.nan, 12.0  # a real NaN gradient
    content = {"variables": ["a", "b", "c"]}
    out = heatmap.heatmap_json(
        _series(steps, values, content), 5, _series(steps, counts, content)
    )
    assert out["values"] == _heatmap_reference(values, counts, 5)
    assert out["values"][0][:2] == [None, None]
    assert out["values"][2][3] == "NaN"
    assert out["values"][1][3] == float(np.nanmax(values[60:80, 1]))
    without = heatmap.heatmap_json(_series(steps, values, content), 5)
    assert without["values"][0][:2] == ["NaN", "NaN"]  # no counts: NaN is a finding


def test_absent_entries_need_the_steps_count():
    """A NaN at a step the counts lack stays a finding (it may be a real NaN)."""
    values = np.array([[np.nan], [np.nan], [1.0]])
    counts = _series([1, 3], [[0.0], [0.0]])
    absent = heatmap.absent_entries(_series([1, 2, 3], values), counts)
    assert absent[:, 0].tolist() == [True, False, False]


def test_only_a_series_with_nan_may_hold_absent_entries():
    """Only a series holding a NaN needs the counts (an Inf is never absent)."""
    assert not heatmap.may_be_absent(None)
    assert not heatmap.may_be_absent(_series([1, 2], [[1.0, np.inf], [2.0, 3.0]]))
    assert heatmap.may_be_absent(_series([1, 2], [[1.0, np.nan], [2.0, 3.0]]))

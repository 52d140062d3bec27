"""Tests of tb_gradplugin.blocks: drawing long series from per-block summaries."""

from __future__ import annotations

import math

import numpy as np

from tb_gradplugin import blocks, heatmap, reader

ROW = {name: i for i, name in enumerate(blocks.BLOCK_ROWS)}


def _series(steps, values, content=None) -> reader.Series:
    steps = np.asarray(steps, dtype=np.int64)
    return reader.Series(
        steps=steps,
        values=np.asarray(values, dtype=np.float64),
        wall_times=steps.astype(np.float64),
        content=content or {},
    )


def _blocks_of(steps, values, size, content=None) -> reader.Series:
    """Summarises a per-step series block by block, as a writer would log it."""
    rows = [
        blocks.summarize(steps[i : i + size], values[i : i + size])
        for i in range(0, len(steps), size)
    ]
    ends = [steps[min(i + size, len(steps)) - 1] for i in range(0, len(steps), size)]
    return _series(ends, np.stack(rows).reshape(len(rows), -1), content)


def test_summarize_rows_of_one_block():
    """A block's rows hold its extremes, their steps back, last, median and NaN."""
    out = blocks.summarize(
        np.array([10, 12, 14, 16]), np.array([3.0, np.nan, -1.0, 2.0])
    )
    assert out.dtype == np.float32 and out.shape == (len(blocks.BLOCK_ROWS),)
    assert out[ROW["count"]] == 4 and out[ROW["first_back"]] == 6
    assert out[ROW["min"]] == -1.0 and out[ROW["min_back"]] == 2
    assert out[ROW["max"]] == 3.0 and out[ROW["max_back"]] == 6
    assert out[ROW["last"]] == 2.0 and out[ROW["median"]] == 2.0
    assert out[ROW["nonfinite"]] == 1 and out[ROW["nonfinite_back"]] == 4
    assert math.isnan(out[ROW["nonfinite_value"]])
    per_variable = blocks.summarize(
        np.array([1, 2]), np.array([[1.0, 5.0], [2.0, 4.0]])
    )
    assert per_variable.shape == (len(blocks.BLOCK_ROWS), 2)
    assert per_variable[ROW["max"]].tolist() == [2.0, 5.0]


def test_block_median_is_numpy_median_of_each_columns_finite_values():
    """The block median equals np.median over each column's finite entries."""
    rng = np.random.default_rng(7)
    for _ in range(200):
        n, k = rng.integers(1, 90), rng.integers(1, 12)
        values = rng.normal(size=(n, k)) * 10.0 ** rng.integers(-3, 4)
        bad = rng.random((n, k)) < rng.random() * 0.6
        values[bad] = rng.choice([np.nan, np.inf, -np.inf], size=bad.sum())
        values[:, 0] = np.nan if rng.random() < 0.2 else values[:, 0]
        finite = np.isfinite(values)
        expected = [
            np.median(values[finite[:, j], j]) if finite[:, j].any() else math.nan
            for j in range(k)
        ]
        got = blocks.summarize(np.arange(n), values)[ROW["median"]]
        np.testing.assert_array_equal(got, np.float32(expected))


def test_series_from_blocks_keeps_spike_and_nan_at_their_steps():
    """Drawn from blocks, the spike, the NaN and the last point keep their steps."""
    steps = np.arange(1, 30_001)
    values = np.linspace(2, 1, 30_000)
    values[12_345] = 1e4
    values[20_000] = -np.inf
    out = blocks.series_json(_blocks_of(steps, values, 64), 600)
    assert out["total_points"] == 30_000 and out["downsampled"]
    assert len(out["steps"]) <= 600 + 1
    assert out["values"][out["steps"].index(12_346)] == 1e4
    assert out["values"][out["steps"].index(20_001)] == "-Infinity"
    assert out["steps"][-1] == 30_000 and out["values"][-1] == 1.0
    assert out["steps"] == sorted(out["steps"])


def test_heatmap_from_blocks_equals_heatmap_from_every_step():
    """With buckets made of whole blocks, the heatmap equals the per-step one."""
    rng = np.random.default_rng(0)
    steps = np.arange(1, 4001)
    values = rng.random((4000, 3))
    values[1234, 1] = np.nan
    content = {"variables": ["a", "b", "c"]}
    per_step = heatmap.heatmap_json(_series(steps, values, content), 50)
    coarse = blocks.heatmap_json(_blocks_of(steps, values, 80, content), 50)
    assert coarse["variables"] == ["a", "b", "c"]
    assert coarse["steps"] == per_step["steps"]
    assert coarse["step_ranges"] == per_step["step_ranges"]
    assert coarse["total_points"] == 4000
    want = np.array(per_step["values"], dtype=object)
    got = np.array(coarse["values"], dtype=object)
    assert (want == "NaN").tolist() == (got == "NaN").tolist()
    finite = want != "NaN"
    np.testing.assert_allclose(
        got[finite].astype(float), want[finite].astype(float), rtol=1e-6
    )


def test_heatmap_from_blocks_marks_not_updated_cells_as_the_per_step_one():
    """From blocks of the counts, absent cells are null and real NaNs stay NaN."""
    rng = np.random.default_rng(1)
    steps = np.arange(1, 2001)
    values = rng.random((2000, 3))
    counts = np.zeros((2000, 3))
    values[:400, 0] = np.nan  # frozen for 400 steps: five whole buckets
    values[1000:1010, 1] = np.nan  # frozen for 10 steps within a bucket
    values[1500, 2], counts[1500, 2] = np.nan, 3.0
    content = {"variables": ["a", "b", "c"]}
    per_step = heatmap.heatmap_json(
        _series(steps, values, content), 25, _series(steps, counts, content)
    )
    coarse = blocks.heatmap_json(
        _blocks_of(steps, values, 80, content),
        25,
        _blocks_of(steps, counts, 80, content),
    )
    want = np.array(per_step["values"], dtype=object)
    got = np.array(coarse["values"], dtype=object)
    assert (got == None).tolist() == (want == None).tolist()  # noqa: E711
    assert (got == "NaN").tolist() == (want == "NaN").tolist()
    assert (want == None).sum() == 5 and (want == "NaN").sum() == 1  # noqa: E711
    number = (want != "NaN") & (want != None)  # noqa: E711
    np.testing.assert_allclose(
        got[number].astype(float), want[number].astype(float), rtol=1e-6
    )
    unknown = blocks.heatmap_json(_blocks_of(steps, values, 80, content), 25)
    assert unknown["values"][0][0] == "NaN"  # without counts a NaN is a finding


def test_latest_and_pairs_from_blocks():
    """The latest values come from the last block; pairs keep y's spike."""
    steps = np.arange(1, 201)
    ratio = np.tile([1e-3, 2e-3], (200, 1)) * (1 + np.arange(200)[:, None] / 200)
    latest = blocks.latest_json(_blocks_of(steps, ratio, 100, {"variables": ["w"]}))
    assert latest["variables"] == ["w", "var_1"] and latest["step"] == 200
    np.testing.assert_allclose(latest["values"], ratio[-1], rtol=1e-6)
    np.testing.assert_allclose(
        latest["median"], np.median(ratio[100:], axis=0), rtol=1e-6
    )
    grad = np.ones(200)
    grad[150] = 99.0
    param = np.linspace(5, 6, 200)
    pairs = blocks.pairs_from_blocks(
        _blocks_of(steps, param, 50), _blocks_of(steps, grad, 50), 100
    )
    assert pairs["steps"] == [50, 100, 150, 200]
    assert pairs["y"] == [1.0, 1.0, 1.0, 99.0]
    np.testing.assert_allclose(pairs["x"], param[[49, 99, 149, 199]], rtol=1e-6)
    assert blocks.total_points(_blocks_of(steps, grad, 50)) == 200

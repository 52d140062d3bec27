"""Tests of tb_gradplugin.shaping: downsampling and the payloads of the routes."""

from __future__ import annotations

import math

import numpy as np

from tb_gradplugin import reader, shaping


def _series(steps, values, content=None) -> reader.Series:
    steps = np.asarray(steps, dtype=np.int64)
    return reader.Series(
        steps=steps,
        values=np.asarray(values, dtype=np.float64),
        wall_times=steps.astype(np.float64) + 0.5,
        content=content or {},
    )


def test_downsample_indices_keep_bucket_extremes_and_nonfinite():
    """Downsampling keeps each bucket's min, max and first non-finite point."""
    rng = np.random.default_rng(1)
    values = rng.normal(size=10_007)
    values[[17, 5000, 5001, 9999]] = [np.nan, np.inf, -np.inf, np.nan]
    idx = shaping.downsample_indices(values, 300)
    assert len(idx) <= 300 + 2
    assert np.all(np.diff(idx) > 0)
    size = math.ceil(len(values) / 100)
    for b in range(100):
        chunk = values[b * size : (b + 1) * size]
        if not len(chunk):
            continue
        finite = np.where(np.isfinite(chunk))[0]
        assert b * size + finite[np.argmin(chunk[finite])] in idx
        assert b * size + finite[np.argmax(chunk[finite])] in idx
        bad = np.where(~np.isfinite(chunk))[0]
        if len(bad):
            assert b * size + bad[0] in idx
    assert {0, len(values) - 1, 17, 5000, 9999} <= set(idx.tolist())


def test_downsample_indices_short_series_untouched():
    """A series shorter than the budget comes back whole."""
    np.testing.assert_array_equal(shaping.downsample_indices(np.ones(5), 10), range(5))


def test_series_json_keeps_spike_and_nan_when_downsampled():
    """A downsampled series still holds its one spike and its one NaN."""
    values = np.ones(5000)
    values[1234], values[4321] = 1e6, np.nan
    out = shaping.series_json(_series(np.arange(1, 5001), values), 300)
    assert out["downsampled"] and out["total_points"] == 5000
    assert len(out["steps"]) <= 302
    assert out["values"][out["steps"].index(1235)] == 1e6
    assert out["values"][out["steps"].index(4322)] == "NaN"
    full = shaping.series_json(_series([1, 2], [1.0, 2.0]), None, wall_times=True)
    assert full == {
        "steps": [1, 2],
        "values": [1.0, 2.0],
        "total_points": 2,
        "downsampled": False,
        "wall_times": [1.5, 2.5],
    }


def test_tensor_series_keeps_the_step_where_one_variable_spikes():
    """Downsampling a tensor series keeps a step where only one variable spikes."""
    values = np.ones((3000, 4))
    values[2000, 3] = 50.0
    values[100, 1] = np.inf
    out = shaping.tensor_series_json(
        _series(np.arange(3000), values, {"variables": ["a", "b"]}), 90
    )
    assert out["variables"] == ["a", "b", "var_2", "var_3"]
    assert 2000 in out["steps"] and 100 in out["steps"]
    assert out["values"][out["steps"].index(100)][1] == "Infinity"


def test_export_csv_writes_every_row_with_repr_of_floats():
    """CSV export has a header and one row per point, non-finite as nan/inf."""
    text = shaping.export_csv(_series([1, 2, 3], [0.1, math.nan, -math.inf]), False)
    assert text.splitlines() == [
        "step,wall_time,value",
        "1,1.5,0.1",
        "2,2.5,nan",
        "3,3.5,-inf",
    ]
    tensor = _series([7], [[1.0, 2.0]], {"variables": ["w", "b"]})
    assert shaping.export_csv(tensor, True).splitlines() == [
        "step,wall_time,w,b",
        "7,7.5,1.0,2.0",
    ]


def test_pairs_align_on_shared_steps():
    """Pairs of two series are taken at the steps both hold, in step order."""
    a = _series([1, 2, 3, 5], [10.0, 20.0, 30.0, 50.0])
    b = _series([2, 3, 4, 5], [0.2, 0.3, 0.4, 0.5])
    steps, x, y = shaping.aligned(a, b)
    assert steps.tolist() == [2, 3, 5]
    out = shaping.pairs_json(steps, x, y, 1000)
    assert out == {
        "steps": [2, 3, 5],
        "x": [20.0, 30.0, 50.0],
        "y": [0.2, 0.3, 0.5],
        "total_points": 3,
    }
    assert shaping.aligned(a, None)[0].size == 0


def test_slices_json_splits_slice_names_from_stats():
    """Slice keys become {name: {stat: series}}; window keys their own map."""
    got = {
        "slice/emb_lo/grad_variance": _series([1], [0.5], {"content": "x"}),
        "slice/emb_lo/grad_mean_abs": _series([1], [0.1]),
        "window/noise_scale": _series([1], [3.0]),
    }
    out = shaping.slices_json(got, 10)
    assert sorted(out["slices"]["emb_lo"]) == [
        "content",
        "grad_mean_abs",
        "grad_variance",
    ]
    assert out["slices"]["emb_lo"]["grad_variance"]["values"] == [0.5]
    assert out["window"]["noise_scale"]["values"] == [3.0]


def test_the_docstring_examples_of_the_serving_modules_run():
    """Every >>> example in shaping, heatmap and json_encoding gives its output."""
    import doctest

    from tb_gradplugin import heatmap, json_encoding

    tried = 0
    for module in (shaping, heatmap, json_encoding):
        result = doctest.testmod(module, raise_on_error=False, verbose=False)
        assert result.failed == 0, module.__name__
        tried += result.attempted
    assert tried >= 1

"""Tests of tb_gradplugin.json_encoding: NaN and infinities as TensorBoard sends."""

from __future__ import annotations

import json
import math

import numpy as np
from tensorboard.backend import json_util

from tb_gradplugin import json_encoding


def test_encode_json_matches_tensorboard_cleanse():
    """Vectorised NaN/Inf encoding gives exactly TensorBoard's json_util output."""
    rng = np.random.default_rng(4)
    grid = rng.normal(size=(50, 7))
    grid[rng.random(grid.shape) < 0.1] = np.nan
    grid[3, 4], grid[9, 0] = np.inf, -np.inf
    payload = {
        "a": json_encoding.float_list(grid),
        "b": json_encoding.float_list(grid[:, 4]),
    }
    reference = {"a": grid.tolist(), "b": grid[:, 4].tolist()}
    assert json_encoding.encode_json(payload) == json.dumps(
        json_util.Cleanse(reference)
    )
    assert json_encoding.encode_json({"x": math.nan}) == '{"x": "NaN"}'


def test_nonfinite_text_names_each_kind():
    """NaN, +Inf and -Inf get TensorBoard's three names."""
    assert [
        json_encoding.nonfinite_text(v) for v in (math.nan, math.inf, -math.inf)
    ] == ["NaN", "Infinity", "-Infinity"]


def test_float_list_leaves_finite_values_as_floats():
    """Finite values stay floats; only non-finite entries become strings."""
    out = json_encoding.float_list(np.array([1.5, math.inf, -2.0]))
    assert out == [1.5, "Infinity", -2.0]
    assert json_encoding.float_list(np.array([[1.0, 2.0]])) == [[1.0, 2.0]]

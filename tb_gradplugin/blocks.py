"""Per-block summaries: the coarse copy of a long series that the views draw from.

Reading every point of a 100,000-step run costs seconds (a per-variable tensor of
100 variables is ~42 MB on the data server's wire). A writer that also logs, every
block of logged steps, one small summary of that block lets a view read about a
thousand rows instead: the block's extremes with their steps, its last value and its
first non-finite value, so that a chart drawn from blocks still shows every spike and
every NaN. ``export`` and the diagnosis keep reading the per-step series.

A block summary of the per-step key ``K`` (e.g. ``step/loss``, ``layer/grad_norm``)
is the tensor series ``block/K``: one float32 array per block, logged at the block's
last step, of shape ``[len(BLOCK_ROWS)]`` for a scalar key or
``[len(BLOCK_ROWS), n_variables]`` for a per-variable key, rows as
:data:`BLOCK_ROWS` names them. :func:`summarize` computes them (numpy only).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from tb_gradplugin.heatmap import null_cells
from tb_gradplugin.json_encoding import float_list
from tb_gradplugin.reader import Series
from tb_gradplugin.shaping import pairs_json, variable_names

BLOCK_FAMILY = "block/"
"""Key prefix of a block summary: ``block/<per-step key>``."""

BLOCK_ROWS = (
    "count",
    "first_back",
    "min",
    "min_back",
    "max",
    "max_back",
    "last",
    "median",
    "nonfinite",
    "nonfinite_back",
    "nonfinite_value",
)
"""Rows of a block summary. ``count``: logged steps in the block; ``first_back``:
how many steps before the block's last step its first step was; ``min``/``max``:
the smallest/largest finite value (NaN when none); ``*_back``: how many steps
before the block's last step that value (or the first non-finite one) was logged;
``last``: the value at the block's last step; ``median``: the median of the finite
values; ``nonfinite``: how many values are NaN or infinite; ``nonfinite_value``: the
first of them (NaN when none)."""

_ROW = {name: i for i, name in enumerate(BLOCK_ROWS)}


def block_key(key: str) -> str:
    """Returns the key of the block summary of a per-step key.

    Args:
        key: A per-step key, e.g. ``"step/loss"``.

    Returns:
        ``"block/" + key``.
    """
    return BLOCK_FAMILY + key


def summarize(steps: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Summarises one block of a series, as a writer logs it at the block's end.

    Args:
        steps: The block's logged steps, increasing, shape ``[n]`` (n >= 1).
        values: The values, shape ``[n]`` or ``[n, k]``.

    Returns:
        float32 ``[len(BLOCK_ROWS)]`` or ``[len(BLOCK_ROWS), k]``.
    """
    steps = np.asarray(steps, dtype=np.int64)
    v = np.asarray(values, dtype=np.float64)
    scalar = v.ndim == 1
    v = v.reshape(len(steps), -1)
    back = (steps[-1] - steps).astype(np.float64)
    finite = np.isfinite(v)
    some = finite.any(axis=0)
    cols = np.arange(v.shape[1])
    lo = np.where(finite, v, np.inf).argmin(axis=0)
    hi = np.where(finite, v, -np.inf).argmax(axis=0)
    bad = ~finite
    first_bad = bad.argmax(axis=0)
    has_bad = bad.any(axis=0)
    median = _finite_median(v, finite)
    out = np.full((len(BLOCK_ROWS), v.shape[1]), math.nan)
    out[_ROW["count"]] = len(steps)
    out[_ROW["first_back"]] = back[0]
    out[_ROW["min"]] = np.where(some, v[lo, cols], math.nan)
    out[_ROW["min_back"]] = np.where(some, back[lo], math.nan)
    out[_ROW["max"]] = np.where(some, v[hi, cols], math.nan)
    out[_ROW["max_back"]] = np.where(some, back[hi], math.nan)
    out[_ROW["last"]] = v[-1]
    out[_ROW["median"]] = median
    out[_ROW["nonfinite"]] = bad.sum(axis=0)
    out[_ROW["nonfinite_back"]] = np.where(has_bad, back[first_bad], math.nan)
    out[_ROW["nonfinite_value"]] = np.where(has_bad, v[first_bad, cols], math.nan)
    out = out.astype(np.float32)
    return out[:, 0] if scalar else out


def _finite_median(v: np.ndarray, finite: np.ndarray) -> np.ndarray:
    """Each column's median over its finite entries (NaN where none), as np.median.

    One sort of the block instead of a median per column: the writer summarises
    every block of a 100-variable run, and a per-column loop was most of its cost.
    """
    count = finite.sum(axis=0)
    ordered = np.sort(np.where(finite, v, np.inf), axis=0)
    cols = np.arange(v.shape[1])
    low = ordered[np.maximum(count - 1, 0) // 2, cols]
    high = ordered[count // 2 - (count == 0), cols]
    with np.errstate(all="ignore"):
        median = (low + high) / 2
    return np.where(count > 0, median, math.nan)


def _rows(blocks: Series) -> np.ndarray:
    """The block values as ``[n_blocks, len(BLOCK_ROWS), k]``."""
    return blocks.values.reshape(len(blocks), len(BLOCK_ROWS), -1)


def row(blocks: Series, name: str) -> np.ndarray:
    """One row of every block of a block series.

    Args:
        blocks: A ``block/<key>`` series.
        name: A row of :data:`BLOCK_ROWS`, e.g. ``"max"``.

    Returns:
        float64 ``[n_blocks, k]`` (``k`` = 1 for a scalar key).

    Raises:
        KeyError: For a name not in :data:`BLOCK_ROWS`.
    """
    return _rows(blocks)[:, _ROW[name], :].astype(np.float64)


def _variables(blocks: Series, rows: np.ndarray) -> list[str]:
    """The variable names of a per-variable block series, one per column."""
    return variable_names(
        Series(blocks.steps, rows[:, 0, :], blocks.wall_times, blocks.content)
    )


def _group_size(n_blocks: int, groups: int) -> int:
    """Blocks per group so that ``n_blocks`` make at most ``groups`` groups."""
    return max(1, math.ceil(n_blocks / max(1, groups)))


def series_json(blocks: Series, max_points: int) -> dict[str, Any]:
    """Shapes a scalar series drawn from its block summaries.

    Consecutive blocks are merged into ``max_points // 3`` groups; each group
    contributes its smallest and largest finite value and its first non-finite
    value at their own steps, as :func:`tb_gradplugin.shaping.downsample_indices`
    keeps them; the last logged point is kept.

    Args:
        blocks: The ``block/<key>`` series of a scalar key.
        max_points: Most points to send.

    Returns:
        The shape of :func:`tb_gradplugin.shaping.series_json`:
        ``{"steps", "values", "total_points", "downsampled": true}``.
    """
    rows = _rows(blocks)[:, :, 0]
    end = blocks.steps
    size = _group_size(len(end), max_points // 3)
    points: dict[int, float] = {}
    for start in range(0, len(end), size):
        grp = rows[start : start + size]
        for value_row, back_row in (("min", "min_back"), ("max", "max_back")):
            vals = grp[:, _ROW[value_row]]
            finite = np.flatnonzero(np.isfinite(vals))
            if finite.size:
                pick = np.argmin if value_row == "min" else np.argmax
                i = int(finite[pick(vals[finite])])
                points[int(end[start + i] - grp[i, _ROW[back_row]])] = float(vals[i])
        bad = np.flatnonzero(grp[:, _ROW["nonfinite"]] > 0)
        if bad.size:
            i = int(bad[0])
            step = int(end[start + i] - grp[i, _ROW["nonfinite_back"]])
            points[step] = float(grp[i, _ROW["nonfinite_value"]])
    if len(end):
        points[int(end[-1])] = float(rows[-1, _ROW["last"]])
    steps = sorted(points)
    return {
        "steps": steps,
        "values": float_list(np.array([points[s] for s in steps])),
        "total_points": int(rows[:, _ROW["count"]].sum()),
        "downsampled": True,
    }


def heatmap_json(
    blocks: Series, buckets: int, nonfinite: Series | None = None
) -> dict[str, Any]:
    """Buckets a per-variable series for a heatmap, from its block summaries.

    Each cell is the largest value of the variable within its run of whole
    blocks, or NaN when any value there is not finite, as
    :func:`tb_gradplugin.heatmap.heatmap_json` computes it from every step.
    With the block summaries of ``layer/nonfinite_grads``, NaN values of a group
    whose non-finite gradient count is 0 at every step are absent (no optimizer
    updated the variable): they are left out of the cell, and a cell of only
    such values is ``None`` ("not updated"). Blocks do not pair a NaN with its
    own step's count, so a group with any count above 0 keeps its NaN values as
    findings.

    Args:
        blocks: The ``block/<key>`` series of a per-variable key.
        buckets: The most step buckets (columns).
        nonfinite: The ``block/layer/nonfinite_grads`` series of the run.
            Defaults to ``None``: every NaN is a finding.

    Returns:
        The shape of :func:`tb_gradplugin.heatmap.heatmap_json`.
    """
    rows = _rows(blocks)
    if not len(blocks):
        return {
            "variables": [],
            "steps": [],
            "step_ranges": [],
            "values": [],
            "total_points": 0,
        }
    starts = np.arange(0, len(blocks), _group_size(len(blocks), buckets))
    ends = np.append(starts[1:], len(blocks)) - 1
    with np.errstate(all="ignore"):
        hi = np.fmax.reduceat(rows[:, _ROW["max"], :], starts, axis=0)
    stat_bad = np.add.reduceat(rows[:, _ROW["nonfinite"], :], starts, axis=0)
    count = rows[:, _ROW["count"], 0]
    counted = _counted_nonfinite(blocks, rows.shape[2], nonfinite)
    if counted is None:
        bad = stat_bad > 0
        empty = np.zeros_like(bad)
    else:
        bad = (stat_bad > 0) & (np.fmax.reduceat(counted, starts, axis=0) > 0)
        steps = np.add.reduceat(count, starts)[:, None]
        empty = ~bad & (stat_bad >= steps)
    hi[bad] = np.nan
    first_step = blocks.steps - rows[:, _ROW["first_back"], 0].astype(np.int64)
    names = _variables(blocks, rows)
    return {
        "variables": names,
        "steps": blocks.steps[ends].tolist(),
        "step_ranges": np.stack([first_step[starts], blocks.steps[ends]], axis=1)
        .astype(int)
        .tolist(),
        "values": null_cells(float_list(hi.T), empty.T),
        "total_points": int(count.sum()),
    }


def _counted_nonfinite(
    blocks: Series, width: int, nonfinite: Series | None
) -> np.ndarray | None:
    """Each block's largest ``layer/nonfinite_grads`` count, ``[n_blocks, k]``.

    ``None`` when the count's blocks do not end at the same steps as ``blocks``
    or cover other variables: absent and non-finite cannot be told apart then.
    """
    if nonfinite is None or not np.array_equal(nonfinite.steps, blocks.steps):
        return None
    counts = _rows(nonfinite)[:, _ROW["max"], :]
    return counts if counts.shape[1] == width else None


def latest_json(blocks: Series) -> dict[str, Any]:
    """The per-variable values at the last summarised step and the block's median.

    Args:
        blocks: The ``block/<key>`` series of a per-variable key.

    Returns:
        ``{"variables", "step", "values", "median"}``; the median is that of the
        last block's logged steps.
    """
    if not len(blocks):
        return {"variables": [], "step": None, "values": [], "median": []}
    rows = _rows(blocks)
    last = rows[-1]
    return {
        "variables": _variables(blocks, rows),
        "step": int(blocks.steps[-1]),
        "values": float_list(last[_ROW["last"]]),
        "median": float_list(last[_ROW["median"]]),
    }


def total_points(blocks: Series) -> int:
    """The number of logged steps a block series summarises.

    Args:
        blocks: A ``block/<key>`` series.

    Returns:
        The sum of the blocks' ``count`` rows.
    """
    return int(_rows(blocks)[:, _ROW["count"], 0].sum()) if len(blocks) else 0


def pairs_from_blocks(x: Series, y: Series, max_points: int) -> dict[str, Any]:
    """Pairs two scalar series block by block, for a scatter plot.

    Each block gives the last value of ``x`` and the largest value of ``y`` (its
    first non-finite value when it has one), so a spike of ``y`` stays drawn.

    Args:
        x: The ``block/<key>`` series of the x values.
        y: The ``block/<key>`` series of the y values.
        max_points: Most pairs to send.

    Returns:
        :func:`tb_gradplugin.shaping.pairs_json` at the steps both hold.
    """
    common, ix, iy = np.intersect1d(x.steps, y.steps, return_indices=True)
    xr, yr = _rows(x)[ix, :, 0], _rows(y)[iy, :, 0]
    bad = yr[:, _ROW["nonfinite"]] > 0
    yv = np.where(bad, yr[:, _ROW["nonfinite_value"]], yr[:, _ROW["max"]])
    return pairs_json(common, xr[:, _ROW["last"]], yv, max_points)

"""The per-layer heatmap: a per-variable series bucketed over steps (numpy only).

A cell is the largest value of one variable within one bucket of consecutive
logged steps, so a spike is never averaged away. A NaN or infinite value makes
the cell NaN: a finding. A variable that no optimizer updated at a step is NaN
there too but with a non-finite gradient count of 0 (``docs/INTERFACES.md``):
such absent steps are left out of the cell, and a cell of only absent steps is
JSON ``null`` ("not updated"), so a frozen layer is not drawn as a divergence.
:func:`tb_gradplugin.blocks.heatmap_json` draws the same from block summaries.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tb_gradplugin.json_encoding import float_list
from tb_gradplugin.reader import Series
from tb_gradplugin.shaping import variable_names

__all__ = ["absent_entries", "heatmap_json", "may_be_absent", "null_cells"]


def absent_entries(series: Series, nonfinite: Series | None) -> np.ndarray:
    """Which entries of a per-variable series are absent: no optimizer updated them.

    A variable that no optimizer updated at a logged step is written as NaN in
    every per-variable statistic of that step with ``layer/nonfinite_grads`` 0
    there; a NaN or infinite gradient always comes with a count above 0
    (``docs/INTERFACES.md``). A step that ``nonfinite`` lacks tells nothing, so
    its NaN entries stay findings.

    Args:
        series: A per-variable series, values ``[n, k]``.
        nonfinite: The run's ``layer/nonfinite_grads`` series over the same
            variables, or ``None`` (every NaN is then a finding).

    Returns:
        bool ``[n, k]``: True where the entry is NaN and the step's non-finite
        count of that variable is 0.
    """
    values = series.values
    absent = np.zeros(values.shape, dtype=bool)
    if nonfinite is None or not len(nonfinite) or values.ndim != 2:
        return absent
    counts = nonfinite.values.reshape(len(nonfinite), -1)
    if counts.shape[1] != values.shape[1]:
        return absent
    at = np.searchsorted(nonfinite.steps, series.steps)
    at = np.minimum(at, len(nonfinite) - 1)
    known = nonfinite.steps[at] == series.steps
    absent[known] = np.isnan(values[known]) & (counts[at[known]] == 0)
    return absent


def may_be_absent(series: Series | None) -> bool:
    """Whether a per-variable series holds a NaN, the only value that can be absent.

    A reader needs the ``layer/nonfinite_grads`` series for :func:`heatmap_json`
    only then: a run without NaN is drawn the same without it.

    Args:
        series: A per-variable series, or ``None``.

    Returns:
        True when ``series`` has a NaN entry.
    """
    return series is not None and bool(np.isnan(series.values).any())


def heatmap_json(
    series: Series, buckets: int, nonfinite: Series | None = None
) -> dict[str, Any]:
    """Buckets a per-variable tensor series over steps for a heatmap.

    Each cell is the largest value of the variable within the step bucket, or
    NaN when any value there is not finite (a NaN is a finding, not a gap).
    Steps at which no optimizer updated the variable (:func:`absent_entries`)
    are left out of its cell; a cell holding only such steps is ``None``
    (JSON ``null``: "not updated"), never a NaN finding.

    Args:
        series: The per-variable series, values ``[n, k]``.
        buckets: The most step buckets (columns).
        nonfinite: The run's ``layer/nonfinite_grads`` series, which tells an
            absent entry from a non-finite one. Defaults to ``None``: every
            NaN is a finding.

    Returns:
        ``{"variables": [str], "steps": [int], "step_ranges": [[int, int]],
        "values": [[float | "NaN" | None] * n_buckets] * k, "total_points":
        int}``: one row per variable, ``steps`` the last step of each bucket.
    """
    n = len(series)
    names = variable_names(series)
    if n == 0:
        return {
            "variables": names,
            "steps": [],
            "step_ranges": [],
            "values": [[] for _ in names],
            "total_points": 0,
        }
    values = series.values
    absent = absent_entries(series, nonfinite)
    edges = np.linspace(0, n, min(buckets, n) + 1).round().astype(np.int64)
    starts = edges[:-1]
    finite = np.isfinite(values)
    with np.errstate(all="ignore"):
        hi = np.maximum.reduceat(np.where(finite, values, -np.inf), starts, axis=0)
    findings = (~finite & ~absent).astype(np.int64)
    bad = np.add.reduceat(findings, starts, axis=0) > 0
    updated = np.add.reduceat((~absent).astype(np.int64), starts, axis=0) > 0
    hi = hi.astype(np.float64)
    hi[bad] = np.nan
    hi[np.isneginf(hi) & ~bad] = np.nan
    ends = edges[1:] - 1
    return {
        "variables": names,
        "steps": series.steps[ends].tolist(),
        "step_ranges": np.stack([series.steps[starts], series.steps[ends]], axis=1)
        .astype(int)
        .tolist(),
        "values": null_cells(float_list(hi.T), ~updated.T),
        "total_points": n,
    }


def null_cells(rows: list, empty: np.ndarray) -> list:
    """Puts ``None`` (JSON ``null``) into the cells of heatmap rows that hold no value.

    Args:
        rows: The rows of :func:`float_list`, ``[k][n_buckets]``.
        empty: bool ``[k, n_buckets]``: True where the cell holds no updated step.

    Returns:
        ``rows``, changed in place.
    """
    for variable, bucket in np.argwhere(empty).tolist():
        rows[variable][bucket] = None
    return rows

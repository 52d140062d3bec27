"""Shapes read series into the JSON payloads of the routes (numpy only).

Display copies are downsampled by :func:`downsample_indices`, which keeps each
bucket's extremes and its first non-finite point, so a chart never hides a spike
or a NaN; ``export`` sends every point (:func:`export_csv`, or the shapers with
``max_points=None``). Every float list goes through
:func:`tb_gradplugin.json_encoding.float_list`. The payloads are documented in
``http_api.md``.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from tb_gradplugin import spectral_density
from tb_gradplugin.diagnosis import summaries
from tb_gradplugin.json_encoding import float_list
from tb_gradplugin.reader import Series

DEFAULT_DOWNSAMPLE = 1000
"""Points per series a chart gets by default, as TensorBoard's scalars route."""

DEFAULT_HEATMAP_BUCKETS = 200
"""Step buckets of the per-layer heatmap by default (cells per layer row)."""


def downsample_indices(values: np.ndarray, max_points: int) -> np.ndarray:
    """Picks the points of a series to draw, keeping extremes and non-finite ones.

    The series is cut into ``max_points // 3`` equal buckets of consecutive
    points; each bucket contributes its smallest finite value, its largest
    finite value and its first non-finite value (NaN or ±Inf), so a spike or a
    NaN is never dropped from a chart. The first and last points are kept.

    Args:
        values: The values, shape ``[n]``.
        max_points: The most points wanted (at least 3 are kept per bucket).

    Returns:
        Sorted unique int64 indices into ``values``; all of them when
        ``n <= max_points``.

    Example:
        >>> downsample_indices(np.array([1.0, 9.0, np.nan, 2.0, 3.0, 4.0]), 3)
        array([0, 1, 2, 5])
    """
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    n = values.shape[0]
    if n <= max_points:
        return np.arange(n, dtype=np.int64)
    buckets = max(1, max_points // 3)
    size = math.ceil(n / buckets)
    padded = np.full(buckets * size, np.nan)
    padded[:n] = values
    valid = np.zeros(buckets * size, dtype=bool)
    valid[:n] = True
    grid = padded.reshape(buckets, size)
    valid = valid.reshape(buckets, size)
    finite = np.isfinite(grid) & valid
    nonfinite = ~np.isfinite(grid) & valid
    base = np.arange(buckets, dtype=np.int64) * size
    picks = [np.array([0, n - 1], dtype=np.int64)]
    has_finite = finite.any(axis=1)
    lo = np.where(finite, grid, np.inf).argmin(axis=1)
    hi = np.where(finite, grid, -np.inf).argmax(axis=1)
    picks.append((base + lo)[has_finite])
    picks.append((base + hi)[has_finite])
    has_bad = nonfinite.any(axis=1)
    picks.append((base + nonfinite.argmax(axis=1))[has_bad])
    idx = np.unique(np.concatenate(picks))
    return idx[idx < n]


def series_json(
    series: Series,
    max_points: int | None = DEFAULT_DOWNSAMPLE,
    wall_times: bool = False,
) -> dict[str, Any]:
    """Shapes a scalar series as JSON, downsampled for display.

    Args:
        series: The series.
        max_points: Most points to send; ``None`` sends every point. Defaults
            to :data:`DEFAULT_DOWNSAMPLE`.
        wall_times: Whether to include the wall times. Defaults to ``False``.

    Returns:
        ``{"steps": [int], "values": [float], "total_points": int,
        "downsampled": bool}`` (plus ``"wall_times": [float]`` on request);
        non-finite values as TensorBoard sends them: ``"NaN"``,
        ``"Infinity"``, ``"-Infinity"``.
    """
    n = len(series)
    if max_points is None or n <= max_points:
        idx = slice(None)
    else:
        idx = downsample_indices(series.values, max_points)
    out = {
        "steps": series.steps[idx].tolist(),
        "values": float_list(series.values[idx]),
        "total_points": n,
        "downsampled": max_points is not None and n > max_points,
    }
    if wall_times:
        out["wall_times"] = series.wall_times[idx].tolist()
    return out


def tensor_series_json(
    series: Series, max_points: int | None = DEFAULT_DOWNSAMPLE
) -> dict[str, Any]:
    """Shapes a per-variable tensor series as JSON, downsampled for display.

    The kept steps are those :func:`downsample_indices` keeps on each row's
    maximum (NaN when any entry of the row is not finite), so a spike or a NaN
    in any variable survives.

    Args:
        series: The series, values ``[n, k]``.
        max_points: Most steps to send; ``None`` sends every step. Defaults to
            :data:`DEFAULT_DOWNSAMPLE`.

    Returns:
        ``{"steps": [int], "variables": [str], "values": [[float] * k],
        "total_points": int, "downsampled": bool}``.
    """
    n = len(series)
    if max_points is None or n <= max_points:
        idx = slice(None)
    else:
        idx = downsample_indices(_row_extreme(series.values), max_points)
    return {
        "steps": series.steps[idx].tolist(),
        "variables": variable_names(series),
        "values": float_list(series.values[idx]),
        "total_points": n,
        "downsampled": max_points is not None and n > max_points,
    }


def _row_extreme(values: np.ndarray) -> np.ndarray:
    """Row maximum that turns into NaN when any entry of the row is not finite."""
    if values.size == 0:
        return np.zeros(values.shape[0])
    bad = ~np.isfinite(values).all(axis=1)
    with np.errstate(all="ignore"):
        out = np.where(np.isfinite(values), values, -np.inf).max(axis=1)
    out[bad] = np.nan
    return out


def variable_names(series: Series) -> list[str]:
    """Names the columns of a tensor series, ``var_<i>`` where the content has none.

    Args:
        series: A per-variable tensor series.

    Returns:
        One name per column of ``series.values``.
    """
    names = series.names
    width = series.values.shape[1] if series.values.ndim == 2 else 0
    if len(names) != width:
        names = names[:width] + [f"var_{i}" for i in range(len(names), width)]
    return names


def export_csv(series: Series, tensor: bool) -> str:
    """Writes every point of a series as CSV.

    Args:
        series: The series.
        tensor: Whether it is a per-variable tensor series (one column per
            variable).

    Returns:
        CSV text with a header row: ``step,wall_time,value`` or
        ``step,wall_time,<variable>...``; non-finite values as ``nan``,
        ``inf``, ``-inf``.
    """
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    header = variable_names(series) if tensor else ["value"]
    writer.writerow(["step", "wall_time", *header])
    rows = series.values.tolist()
    for step, wall, row in zip(
        series.steps.tolist(), series.wall_times.tolist(), rows, strict=True
    ):
        cells = row if tensor else [row]
        writer.writerow([step, repr(wall), *(repr(x) for x in cells)])
    return out.getvalue()


def export_json(series: Series, tensor: bool) -> dict[str, Any]:
    """Every point of a series as the JSON of ``export?format=json``.

    Args:
        series: The series.
        tensor: Whether it is a per-variable tensor series.

    Returns:
        :func:`tensor_series_json` or :func:`series_json` (with wall times)
        of every point.
    """
    if tensor:
        return tensor_series_json(series, None)
    return series_json(series, None, wall_times=True)


def aligned(
    a: Series | None, b: Series | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs two series at the steps both hold.

    Args:
        a: The first series, or ``None``.
        b: The second series, or ``None``.

    Returns:
        ``(steps, a_values, b_values)``; empty arrays when either is missing.
    """
    if a is None or b is None or not len(a) or not len(b):
        return np.zeros(0, np.int64), np.zeros(0), np.zeros(0)
    common, ia, ib = np.intersect1d(a.steps, b.steps, return_indices=True)
    return common, a.values[ia], b.values[ib]


def pairs_json(steps, x, y, max_points: int) -> dict[str, Any]:
    """Shapes (x, y) pairs for a scatter plot, downsampled on ``y``.

    Args:
        steps: The step of each pair.
        x: The x values.
        y: The y values; its extremes and non-finite points are kept.
        max_points: Most pairs to send.

    Returns:
        ``{"steps": [int], "x": [float], "y": [float], "total_points": int}``.
    """
    idx = downsample_indices(y, max_points) if len(y) > max_points else slice(None)
    return {
        "steps": np.asarray(steps)[idx].tolist(),
        "x": float_list(np.asarray(x)[idx]),
        "y": float_list(np.asarray(y)[idx]),
        "total_points": int(len(steps)),
    }


def overview_json(
    run: str, last_step: int | None, got: Mapping[str, Series], n: int
) -> dict[str, Any]:
    """The payload of the ``overview`` route.

    Args:
        run: The run.
        last_step: The run's largest logged step.
        got: The whole-model series read, by key.
        n: Most points per series.

    Returns:
        ``{"run", "last_step", "series": {key: series_json}, "norms":
        {"steps", "x" (param norm), "y" (grad norm)}}``.
    """
    steps, param, grad = aligned(got.get("step/param_norm"), got.get("step/grad_norm"))
    return {
        "run": run,
        "last_step": last_step,
        "series": {k: series_json(s, n) for k, s in got.items()},
        "norms": pairs_json(steps, param, grad, n),
    }


def slices_json(got: Mapping[str, Series], n: int) -> dict[str, Any]:
    """One run's entry of the ``slices`` route.

    Args:
        got: The run's ``slice/*`` and ``window/*`` series, by key.
        n: Most points per series.

    Returns:
        ``{"slices": {name: {"content", stat: series_json}}, "window":
        {stat: series_json}}``.
    """
    slices: dict[str, dict] = {}
    window: dict[str, Any] = {}
    for key, s in sorted(got.items()):
        family, _, rest = key.partition("/")
        if family == "window":
            window[rest] = series_json(s, n)
            continue
        name, _, stat = rest.rpartition("/")
        entry = slices.setdefault(name, {"content": s.content})
        entry[stat] = series_json(s, n)
    return {"slices": slices, "window": window}


def curvature_json(
    run: str,
    got: Mapping[str, Series],
    n: int,
    density: Series | None = None,
    step: int | None = None,
) -> dict[str, Any]:
    """The payload of the ``curvature`` route.

    Args:
        run: The run.
        got: The run's ``hessian/*`` and window noise series, by key.
        n: Most points per series.
        density: The run's ``hessian_spectrum/density`` series. Defaults to
            ``None``: the payload's ``spectral_density`` is ``None``.
        step: The curvature step whose density to send. Defaults to ``None``:
            the latest.

    Returns:
        ``{"run", "available": bool, "series": {key: series_json},
        "min_ratio_vs_loss": {"steps", "x" (probe loss), "y" (min ratio)},
        "spectral_density": {...} or None, "content": {...}}``; the density's
        layout is in ``http_api.md``.
    """
    steps, loss, ratio = aligned(
        got.get("hessian/probe_loss"), got.get("hessian/min_ratio")
    )
    content = next((s.content for k, s in got.items() if k.startswith("hessian/")), {})
    shown = None
    if density is not None and len(density):
        unpacked = spectral_density.unpack_density(
            density.steps, density.values, density.content, step
        )
        shown = {
            k: float_list(v) if isinstance(v, np.ndarray) else v
            for k, v in unpacked.items()
        }
    return {
        "run": run,
        "available": bool(got),
        "series": {k: series_json(s, n) for k, s in sorted(got.items())},
        "min_ratio_vs_loss": pairs_json(steps, loss, ratio, n),
        "spectral_density": shown,
        "content": content,
    }


def latest_update_ratios(ratio: Series | None) -> dict[str, Any]:
    """The per-variable update ratios at the last logged step and their median.

    Args:
        ratio: The ``layer/update_ratio`` series, or ``None``.

    Returns:
        ``{"variables", "step", "values", "median"}``: the median is
        :func:`tb_gradplugin.diagnosis.recent_median` over the last
        :data:`tb_gradplugin.diagnosis.RECENT_STEPS` logged steps.
    """
    if ratio is None or not len(ratio):
        return {"variables": [], "step": None, "values": [], "median": []}
    return {
        "variables": variable_names(ratio),
        "step": int(ratio.steps[-1]),
        "values": float_list(ratio.values[-1]),
        "median": float_list(summaries.recent_median(ratio.values)),
    }

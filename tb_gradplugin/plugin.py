"""The "Gradient Health" TensorBoard plugin: HTTP routes over the data provider.

The plugin reads only through ``context.data_provider`` (so it works over the
Rust data server and the Python one alike) and imports no TensorFlow. Every
route is a thin handler over a function of this module that returns plain
data; :func:`downsample_indices` keeps minima, maxima and non-finite points so
that a display never hides a spike or a NaN, while ``export`` returns every
point. The routes and their JSON are documented in ``http_api.md``.
"""

from __future__ import annotations

import collections
import csv
import io
import json
import logging
import math
import mimetypes
import pathlib
import threading
import time
import warnings
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
from tensorboard import plugin_util
from tensorboard.backend import http_util, json_util
from tensorboard.data import provider as tb_provider
from tensorboard.plugins import base_plugin
from werkzeug import wrappers

from tb_gradplugin import health, metadata, reader

try:  # The diagnosis engine is its own module; the tab works without it.
    from tb_gradplugin import diagnosis as _diagnosis
except ImportError:  # pragma: no cover - only until diagnosis.py lands
    _diagnosis = None

try:  # PCA of the parameter trajectories, numpy only.
    from tb_gradplugin import trajectory as _trajectory
except ImportError:  # pragma: no cover - only until trajectory.py lands
    _trajectory = None

logger = logging.getLogger(__name__)

STATIC_DIR = pathlib.Path(__file__).resolve().parent / "static"
"""The built frontend bundle (generated from ``frontend/``)."""

DEFAULT_DOWNSAMPLE = 1000
"""Points per series a chart gets by default, as TensorBoard's scalars route."""

MAX_DOWNSAMPLE = 100_000
"""The largest ``downsample`` a route accepts; ``export`` has no limit."""

DEFAULT_HEATMAP_BUCKETS = 200
"""Step buckets of the per-layer heatmap by default (cells per layer row)."""

MAX_HEATMAP_BUCKETS = 5000
"""The largest ``buckets`` the ``layers`` route accepts."""

RECENT_STEPS = 100
"""Logged steps over which the per-variable update ratio's median is taken."""

MAX_RUNS_PER_REQUEST = 200
"""The most ``run`` parameters one multi-run request may carry."""

LISTING_TTL_S = 1.0
"""Seconds a run's tag listing is reused. A listing costs 13–40 ms on the Rust
data server (measured, TensorBoard 2.21) and the data changes at most every
``--reload_interval`` (5 s by default), so the requests of one view share one."""

_CACHE_ENTRIES = 256

_ENCODED_ENTRIES = 32
"""JSON texts of memoised payloads kept (a heatmap of 100 x 200 cells: ~0.4 MB)."""
"""Read results kept in memory (each at most a few MB for 100,000 steps)."""

OVERVIEW_KEYS = (
    "step/loss",
    "step/grad_norm",
    "step/param_norm",
    "step/update_ratio",
)
"""The whole-model per-step scalars the overview view draws (others: ``series``).

Each costs a full read of the series on a cold cache (~2 s per 100,000 points
under the Python data provider, as TensorBoard's own scalars route), so the
overview reads only what it draws."""

_LAYER_KEYS = tuple(f"layer/{stat}" for stat in metadata.LAYER_STATS)
_CURVATURE_KEYS = tuple(f"hessian/{stat}" for stat in metadata.HESSIAN_SCALARS) + (
    "window/noise_scale",
    "window/grad_snr",
)

_JSON = "application/json"


class RequestError(ValueError):
    """A request parameter is malformed or names nothing that exists.

    The JSON routes answer it with its ``code`` and message as ``text/plain``.

    Args:
        message: One short line for the client.
        code: The HTTP status to answer with (400, 404 or 503). Defaults to 400.

    Attributes:
        code: The HTTP status to answer with.

    Example:
        >>> err = RequestError("unknown run: 'x'", 404)
        >>> err.code, str(err)
        (404, "unknown run: 'x'")
    """

    def __init__(self, message: str, code: int = 400):
        super().__init__(message)
        self.code = code


# --------------------------------------------------------------------------
# Pure functions: downsampling and shaping series as JSON.


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


def float_list(values: np.ndarray) -> list:
    """Converts floats to JSON-ready lists the way TensorBoard's JSON does.

    Same output as ``json_util.Cleanse`` (NaN and ±Inf become the strings
    ``"NaN"``, ``"Infinity"``, ``"-Infinity"``), but vectorised: the lists
    of a 100,000-step series are converted without a Python call per value.

    Args:
        values: A 1-D or 2-D float array.

    Returns:
        Nested lists of floats and, for non-finite entries, strings.
    """
    arr = np.asarray(values, dtype=np.float64)
    out = arr.tolist()
    finite = np.isfinite(arr)
    if finite.all():
        return out
    for idx in np.argwhere(~finite):
        v = arr[tuple(idx)]
        text = "NaN" if np.isnan(v) else ("Infinity" if v > 0 else "-Infinity")
        if arr.ndim == 1:
            out[idx[0]] = text
        else:
            out[idx[0]][idx[1]] = text
    return out


def encode_json(payload: Any) -> str:
    """Serialises a route's payload; NaN/Inf as TensorBoard's ``json_util`` does.

    Payloads built with :func:`float_list` are already clean and go straight to
    ``json.dumps``; anything else that still holds a non-finite float (e.g. a
    flag's evidence) goes through ``json_util.Cleanse``.

    Args:
        payload: JSON-serialisable data.

    Returns:
        The JSON text.
    """
    try:
        return json.dumps(payload, allow_nan=False)
    except ValueError:
        return json.dumps(json_util.Cleanse(payload), allow_nan=False)


def series_json(
    series: reader.Series,
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
        ``"Infinity"``, ``"-Infinity"`` (:func:`float_list`).
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
    series: reader.Series, max_points: int | None = DEFAULT_DOWNSAMPLE
) -> dict[str, Any]:
    """Shapes a per-variable tensor series as JSON, downsampled for display.

    The kept steps are the union over variables of
    :func:`downsample_indices` applied to the row maximum, so a spike in any
    variable survives.

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
        "variables": _variable_names(series),
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


def _variable_names(series: reader.Series) -> list[str]:
    names = series.names
    width = series.values.shape[1] if series.values.ndim == 2 else 0
    if len(names) != width:
        names = names[:width] + [f"var_{i}" for i in range(len(names), width)]
    return names


def heatmap_json(series: reader.Series, buckets: int) -> dict[str, Any]:
    """Buckets a per-variable tensor series over steps for a heatmap.

    Each cell is the largest value of the variable within the step bucket, or
    NaN when any value there is not finite (a NaN is a finding, not a gap).

    Args:
        series: The per-variable series, values ``[n, k]``.
        buckets: The most step buckets (columns).

    Returns:
        ``{"variables": [str], "steps": [int], "step_ranges": [[int, int]],
        "values": [[float] * n_buckets] * k, "total_points": int}``: one row
        per variable, ``steps`` the last step of each bucket.
    """
    n = len(series)
    names = _variable_names(series)
    if n == 0:
        return {
            "variables": names,
            "steps": [],
            "step_ranges": [],
            "values": [[] for _ in names],
            "total_points": 0,
        }
    values = series.values
    nb = min(buckets, n)
    edges = np.linspace(0, n, nb + 1).round().astype(np.int64)
    starts = edges[:-1]
    finite = np.isfinite(values)
    with np.errstate(all="ignore"):
        hi = np.maximum.reduceat(np.where(finite, values, -np.inf), starts, axis=0)
    bad = np.add.reduceat((~finite).astype(np.int64), starts, axis=0) > 0
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
        "values": float_list(hi.T),
        "total_points": n,
    }


def volatility(values: np.ndarray) -> float | None:
    """Measures how much a loss jumps from one logged point to the next.

    The figure is the standard deviation of the point-to-point differences
    over the second half of the series divided by the mean absolute value over
    that half: about 0 for a settled loss, near or above 1 for a loss that
    keeps swinging by its own size (seed 002's HRM 0.5 and 10.0 runs). The
    first half is left out so that the initial descent does not count.

    Args:
        values: The loss values in step order.

    Returns:
        The volatility, or ``None`` when fewer than 4 finite points exist.
    """
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size < 4:
        return None
    tail = v[v.size // 2 :]
    scale = float(np.mean(np.abs(tail)))
    if scale == 0.0:
        return 0.0
    return float(np.std(np.diff(tail)) / scale)


def export_csv(series: reader.Series, tensor: bool) -> str:
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
    if tensor:
        writer.writerow(["step", "wall_time", *_variable_names(series)])
        for step, wall, row in zip(
            series.steps.tolist(),
            series.wall_times.tolist(),
            series.values.tolist(),
            strict=True,
        ):
            writer.writerow([step, repr(wall), *(repr(x) for x in row)])
    else:
        writer.writerow(["step", "wall_time", "value"])
        for step, wall, value in zip(
            series.steps.tolist(),
            series.wall_times.tolist(),
            series.values.tolist(),
            strict=True,
        ):
            writer.writerow([step, repr(wall), repr(value)])
    return out.getvalue()


def _aligned(a: reader.Series | None, b: reader.Series | None):
    """Returns (steps, a_values, b_values) at the steps both series share."""
    if a is None or b is None or not len(a) or not len(b):
        return np.zeros(0, np.int64), np.zeros(0), np.zeros(0)
    common, ia, ib = np.intersect1d(a.steps, b.steps, return_indices=True)
    return common, a.values[ia], b.values[ib]


def _pairs_json(steps, x, y, max_points: int) -> dict[str, Any]:
    idx = downsample_indices(y, max_points) if len(y) > max_points else slice(None)
    return {
        "steps": np.asarray(steps)[idx].tolist(),
        "x": float_list(np.asarray(x)[idx]),
        "y": float_list(np.asarray(y)[idx]),
        "total_points": int(len(steps)),
    }


# --------------------------------------------------------------------------
# Parameter parsing.


def _int_param(args, name: str, default: int, lo: int, hi: int) -> int:
    raw = args.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise RequestError(f"{name} must be an integer, got {raw[:40]!r}") from None
    if not lo <= value <= hi:
        raise RequestError(f"{name} must be between {lo} and {hi}, got {value}")
    return value


def _run_param(args) -> str:
    run = args.get("run")
    if run is None or run == "":
        raise RequestError("missing parameter: run")
    return run


def _runs_param(args) -> list[str] | None:
    """The repeated ``run`` parameters, or ``None`` for "every run"."""
    runs = args.getlist("run")
    if len(runs) > MAX_RUNS_PER_REQUEST:
        raise RequestError(f"at most {MAX_RUNS_PER_REQUEST} run parameters")
    if any(not r for r in runs):
        raise RequestError("empty run parameter")
    return list(dict.fromkeys(runs)) or None


_TENSOR_PREFIXES = ("layer/", "window_layer/", "hessian_layer/", "trajectory/")


def _kind_of(key: str) -> str:
    """Whether a key is written as a scalar or a tensor (docs/INTERFACES.md)."""
    return "tensor" if key.startswith(_TENSOR_PREFIXES) else "scalar"


# --------------------------------------------------------------------------
# The plugin.


class GradientHealthPlugin(base_plugin.TBPlugin):
    """Serves the "Gradient Health" tab and its data.

    Args:
        context: The ``TBContext`` given by TensorBoard; only its
            ``data_provider`` is read.

    Example:
        >>> from tensorboard.plugins import base_plugin
        >>> provider = reader.provider_for_logdir("runs")  # doctest: +SKIP
        >>> plugin = GradientHealthPlugin(
        ...     base_plugin.TBContext(data_provider=provider)
        ... )  # doctest: +SKIP
        >>> plugin.runs_impl(ctx=None, experiment_id="")  # doctest: +SKIP
        ['exp1']
    """

    plugin_name = metadata.PLUGIN_NAME

    def __init__(self, context: base_plugin.TBContext):
        self._provider: tb_provider.DataProvider | None = context.data_provider
        self._cache: collections.OrderedDict = collections.OrderedDict()
        self._cache_lock = threading.Lock()
        self._listing_cache: dict = {}
        self._encoded_cache: collections.OrderedDict = collections.OrderedDict()
        self._health = health.HealthTable(
            self._require_provider, self.read_run_data, self.flags_impl
        )

    # -- TBPlugin interface -------------------------------------------------

    def is_active(self) -> bool:
        """Returns ``False``: TensorBoard activates the tab from the data's plugin name.

        Returns:
            ``False``; ``data_plugin_names`` decides.
        """
        return False

    def data_plugin_names(self) -> tuple[str, ...]:
        """Returns the plugin names whose summaries this plugin reads.

        Returns:
            ``("gradient_health",)``.
        """
        return (metadata.PLUGIN_NAME,)

    def frontend_metadata(self) -> base_plugin.FrontendMetadata:
        """Returns the tab's frontend: the ES module ``index.js``.

        Returns:
            The frontend metadata with the tab name "Gradient Health".
        """
        return base_plugin.FrontendMetadata(
            es_module_path="/index.js", tab_name="Gradient Health"
        )

    def get_plugin_apps(self) -> dict[str, Callable]:
        """Returns the WSGI apps of every route, keyed by path.

        Returns:
            A dict from route path (leading slash) to WSGI application.
        """
        return {
            "/index.js": self._serve_index,
            "/static/*": self._serve_static,
            "/runs": self._json_route(self._runs_args),
            "/tags": self._json_route(self._tags_args),
            "/flags": self._json_route(self._flags_args),
            "/series": self._json_route(self._series_args),
            "/overview": self._json_route(self._overview_args),
            "/layers": self._json_route(self._layers_args),
            "/slices": self._json_route(self._slices_args),
            "/loss_components": self._json_route(self._loss_components_args),
            "/curvature": self._json_route(self._curvature_args),
            "/trajectory": self._json_route(self._trajectory_args),
            "/export": self._serve_export,
            "/health": self._json_route(self._health_args),
            "/last_finite": self._json_route(self._last_finite_args),
        }

    # -- data access --------------------------------------------------------

    def _require_provider(self) -> tb_provider.DataProvider:
        if self._provider is None:
            raise RequestError("TensorBoard gave this plugin no data provider", 503)
        return self._provider

    def runs_impl(self, ctx, experiment_id: str) -> list[str]:
        """Lists the runs with gradient-health data.

        Args:
            ctx: The request context.
            experiment_id: The experiment.

        Returns:
            The sorted run names.
        """
        return reader.list_runs(
            self._require_provider(), ctx, experiment_id=experiment_id
        )

    def _tag_versions(
        self,
        ctx,
        eid: str,
        run: str,
        keys: Iterable[str] | None = None,
        kinds: Iterable[str] = ("scalar", "tensor"),
    ) -> dict[str, tuple]:
        """Maps each key of a run to (kind, max_step, max_wall_time, content).

        Listing named tags is cheaper than listing a run's every tag (measured
        on the Rust data server: ~0.4 ms per named scalar tag, ~13 ms per named
        tensor tag, ~40 ms for all tags of a run), so routes that know their
        keys pass them. A listing is reused for :data:`LISTING_TTL_S`.
        """
        provider = self._require_provider()
        keys = None if keys is None else tuple(keys)
        ck = ("versions", eid, run, tuple(kinds), keys)
        now = time.monotonic()
        with self._cache_lock:
            hit = self._listing_cache.get(ck)
        if hit is not None and now - hit[0] < LISTING_TTL_S:
            return hit[1]
        by_kind: dict[str, list[str] | None] = {k: None for k in kinds}
        if keys is not None:
            by_kind = {k: [] for k in kinds}
            for key in keys:
                if _kind_of(key) in by_kind:
                    by_kind[_kind_of(key)].append(metadata.TAG_PREFIX + key)
        out: dict[str, tuple] = {}
        listings = {"scalar": provider.list_scalars, "tensor": provider.list_tensors}
        for kind, tags in by_kind.items():
            if tags is not None and not tags:
                continue
            # Measured on the Rust data server (TensorBoard 2.21): a listing of
            # one or two named scalar tags answers in ~0.4 ms, of three or more
            # in ~40 ms, so a few named tags are listed one by one.
            groups = [[t] for t in tags] if tags and len(tags) <= 16 else [tags]
            found: dict = {}
            for group in groups:
                filt = tb_provider.RunTagFilter(runs=[run], tags=group)
                found.update(
                    listings[kind](
                        ctx,
                        experiment_id=eid,
                        plugin_name=metadata.PLUGIN_NAME,
                        run_tag_filter=filt,
                    ).get(run, {})
                )
            for tag, ts in found.items():
                if tag.startswith(metadata.TAG_PREFIX):
                    key = tag[len(metadata.TAG_PREFIX) :]
                    out[key] = (kind, ts.max_step, ts.max_wall_time, ts.plugin_content)
        with self._cache_lock:
            self._listing_cache[ck] = (now, out)
            if len(self._listing_cache) > _CACHE_ENTRIES:
                self._listing_cache.clear()
        return out

    def _known_run(
        self,
        ctx,
        eid: str,
        run: str,
        keys: Iterable[str] | None = None,
        kinds: Iterable[str] = ("scalar", "tensor"),
    ) -> dict[str, tuple]:
        """Like :meth:`_tag_versions`, but a run without data is a 404."""
        versions = self._tag_versions(ctx, eid, run, keys, kinds)
        if not versions and (keys is not None or tuple(kinds) != ("scalar", "tensor")):
            versions = self._tag_versions(ctx, eid, run)  # run or key unknown?
            if versions:
                return {}
        if not versions:
            raise RequestError(f"unknown run: {run[:200]!r}", 404)
        return versions

    def _scalar_versions_of_runs(
        self, ctx, eid: str, runs: list[str]
    ) -> dict[str, dict[str, tuple]]:
        """Scalar tag versions of several runs in one listing; unknown run: 404."""
        ck = ("scalar_versions", eid, tuple(runs))
        now = time.monotonic()
        with self._cache_lock:
            hit = self._listing_cache.get(ck)
        if hit is not None and now - hit[0] < LISTING_TTL_S:
            return hit[1]
        found = self._require_provider().list_scalars(
            ctx,
            experiment_id=eid,
            plugin_name=metadata.PLUGIN_NAME,
            run_tag_filter=tb_provider.RunTagFilter(runs=runs),
        )
        out: dict[str, dict[str, tuple]] = {}
        for run in runs:
            tags = found.get(run, {})
            if not tags:
                self._known_run(ctx, eid, run)  # 404 unless it has tensors only
            out[run] = {
                tag[len(metadata.TAG_PREFIX) :]: (
                    "scalar",
                    ts.max_step,
                    ts.max_wall_time,
                    ts.plugin_content,
                )
                for tag, ts in tags.items()
                if tag.startswith(metadata.TAG_PREFIX)
            }
        with self._cache_lock:
            self._listing_cache[ck] = (now, out)
            if len(self._listing_cache) > _CACHE_ENTRIES:
                self._listing_cache.clear()
        return out

    def _memo(self, key: tuple, compute: Callable[[], Any]) -> Any:
        """Returns a cached result for ``key`` (which holds the data versions)."""
        with self._cache_lock:
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
                return hit
        value = compute()
        with self._cache_lock:
            self._cache[key] = value
            while len(self._cache) > _CACHE_ENTRIES:
                self._cache.popitem(last=False)
        return value

    def read_series(
        self, ctx, eid: str, run: str, keys: Iterable[str], versions: dict[str, tuple]
    ) -> dict[str, reader.Series]:
        """Reads every point of some series of a run, through a small cache.

        A series is re-read only when its last step or wall time changed, so
        an auto-reloading tab over a finished run costs no provider read.

        Args:
            ctx: The request context.
            eid: The experiment.
            run: The run.
            keys: The keys (tags without the prefix) to read; absent ones are
                skipped.
            versions: The run's tag versions from :meth:`_tag_versions`.

        Returns:
            The series found, by key.
        """
        found: dict[str, reader.Series] = {}
        missing: list[str] = []
        for key in keys:
            if key not in versions:
                continue
            ck = (eid, run, key, versions[key][1], versions[key][2])
            with self._cache_lock:
                hit = self._cache.get(ck)
                if hit is not None:
                    self._cache.move_to_end(ck)
            if hit is None:
                missing.append(key)
            else:
                found[key] = hit
        if missing:
            data = reader.read_run(
                self._require_provider(), run, ctx, experiment_id=eid, keys=missing
            )
            with self._cache_lock:
                for key in missing:
                    series = data.scalars.get(key) or data.tensors.get(key)
                    if series is None:
                        continue
                    found[key] = series
                    ck = (eid, run, key, versions[key][1], versions[key][2])
                    self._cache[ck] = series
                    while len(self._cache) > _CACHE_ENTRIES:
                        self._cache.popitem(last=False)
        return found

    def read_run_data(
        self, ctx, eid: str, run: str, versions: dict[str, tuple] | None = None
    ) -> reader.RunData:
        """Reads all of a run's series (for the diagnosis), through the cache.

        Args:
            ctx: The request context.
            eid: The experiment.
            run: The run.
            versions: The run's tag versions when already listed. Defaults to
                ``None``: list them.

        Returns:
            The run's data.

        Raises:
            RequestError: When the run has no gradient-health data (404).
        """
        if versions is None:
            versions = self._known_run(ctx, eid, run)
        series = self.read_series(ctx, eid, run, versions.keys(), versions)
        data = reader.RunData(run=run)
        for key, s in series.items():
            target = data.scalars if versions[key][0] == "scalar" else data.tensors
            target[key] = s
        return data

    # -- route bodies (plain functions of the request arguments) -------------

    def _runs_args(self, ctx, eid, args):
        return self.runs_impl(ctx, eid)

    def _tags_args(self, ctx, eid, args):
        run = _run_param(args)
        versions = self._known_run(ctx, eid, run)
        out: dict[str, dict] = {"scalars": {}, "tensors": {}}
        for key, (kind, max_step, _wall, content) in sorted(versions.items()):
            try:
                parsed = metadata.parse_plugin_content(content)
            except ValueError:
                parsed = {}
            out["scalars" if kind == "scalar" else "tensors"][key] = {
                "max_step": int(max_step),
                "content": parsed,
            }
        return {"run": run, **out}

    def flags_impl(self, ctx, eid: str, run: str) -> dict[str, Any]:
        """Diagnoses a run: the contract's ``flags`` object.

        Args:
            ctx: The request context.
            eid: The experiment.
            run: The run.

        Returns:
            ``{"run", "last_step", "flags": [...]}`` as in the CLI.

        Raises:
            RequestError: 404 for an unknown run, 503 while no diagnosis module
                is installed.
        """
        versions = self._known_run(ctx, eid, run)
        if _diagnosis is None:
            raise RequestError(
                "pathology flags unavailable: tb_gradplugin.diagnosis is not installed",
                503,
            )
        # The report depends only on the data: reuse it until a series grows.
        ck = (
            "flags",
            eid,
            run,
            tuple(sorted((k, v[1], v[2]) for k, v in versions.items())),
        )
        with self._cache_lock:
            hit = self._cache.get(ck)
        if hit is not None:
            return hit
        report = _diagnosis.run_report(self.read_run_data(ctx, eid, run, versions))
        with self._cache_lock:
            self._cache[ck] = report
            while len(self._cache) > _CACHE_ENTRIES:
                self._cache.popitem(last=False)
        return report

    def _flags_args(self, ctx, eid, args):
        return self.flags_impl(ctx, eid, _run_param(args))

    def _series_args(self, ctx, eid, args):
        run = _run_param(args)
        key = args.get("key") or ""
        if not key:
            raise RequestError("missing parameter: key")
        n = _int_param(args, "downsample", DEFAULT_DOWNSAMPLE, 1, MAX_DOWNSAMPLE)
        versions = self._known_run(ctx, eid, run, keys=[key])
        if key not in versions:
            raise RequestError(f"unknown key for run: {key[:200]!r}", 404)
        kind = versions[key][0]

        def compute():
            series = self.read_series(ctx, eid, run, [key], versions)[key]
            shape = series_json if kind == "scalar" else tensor_series_json
            return {"run": run, "key": key, "kind": kind, **shape(series, n)}

        return self._memo(("series", eid, run, key, n, versions[key][1:3]), compute)

    def overview_impl(self, ctx, eid: str, run: str, n: int) -> dict[str, Any]:
        """The overview of a run: whole-model per-step series.

        Args:
            ctx: The request context.
            eid: The experiment.
            run: The run.
            n: Most points per series.

        Returns:
            ``{"run", "last_step", "series": {key: series_json}, "norms":
            {"steps", "x" (param norm), "y" (grad norm)}}``.
        """
        versions = self._known_run(ctx, eid, run, keys=OVERVIEW_KEYS)

        def compute():
            got = self.read_series(ctx, eid, run, OVERVIEW_KEYS, versions)
            steps, p, g = _aligned(
                got.get("step/param_norm"), got.get("step/grad_norm")
            )
            last = max((int(v[1]) for v in versions.values()), default=None)
            return {
                "run": run,
                "last_step": last,
                "series": {k: series_json(s, n) for k, s in got.items()},
                "norms": _pairs_json(steps, p, g, n),
            }

        stamp = tuple(sorted((k, v[1:3]) for k, v in versions.items()))
        return self._memo(("overview", eid, run, n, stamp), compute)

    def _overview_args(self, ctx, eid, args):
        n = _int_param(args, "downsample", DEFAULT_DOWNSAMPLE, 1, MAX_DOWNSAMPLE)
        return self.overview_impl(ctx, eid, _run_param(args), n)

    def layers_impl(
        self, ctx, eid: str, run: str, stat: str, buckets: int
    ) -> dict[str, Any]:
        """Per-layer heatmap data and the latest update/parameter ratio per layer.

        Args:
            ctx: The request context.
            eid: The experiment.
            run: The run.
            stat: A per-layer statistic (``metadata.LAYER_STATS`` key).
            buckets: Most step buckets.

        Returns:
            ``{"run", "stat", "stats": [available], "heatmap": heatmap_json,
            "update_ratio": {"variables", "step", "values", "median"}}``:
            the ratios at the last logged step and their median over the last
            :data:`RECENT_STEPS` logged steps.
        """
        if stat not in metadata.LAYER_STATS:
            raise RequestError(f"unknown stat: {stat[:80]!r}")
        versions = self._known_run(ctx, eid, run, keys=_LAYER_KEYS)
        available = [s for s in metadata.LAYER_STATS if f"layer/{s}" in versions]
        keys = sorted({f"layer/{stat}", "layer/update_ratio"})
        # Bucketing 100,000 steps x 100 variables takes ~0.1 s: keep the result
        # until one of the two series grows.
        ck = (
            "layers",
            eid,
            run,
            stat,
            buckets,
            tuple((k, versions[k][1:3]) for k in keys if k in versions),
        )
        with self._cache_lock:
            hit = self._cache.get(ck)
        if hit is not None:
            return hit
        got = self.read_series(ctx, eid, run, keys, versions)
        heat = got.get(f"layer/{stat}")
        ratio = got.get("layer/update_ratio")
        latest = {"variables": [], "step": None, "values": [], "median": []}
        if ratio is not None and len(ratio):
            recent = ratio.values[-RECENT_STEPS:]
            with np.errstate(all="ignore"), warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN column
                med = np.nanmedian(np.where(np.isfinite(recent), recent, np.nan), 0)
            latest = {
                "variables": _variable_names(ratio),
                "step": int(ratio.steps[-1]),
                "values": float_list(ratio.values[-1]),
                "median": float_list(med),
            }
        out = {
            "run": run,
            "stat": stat,
            "stats": available,
            "heatmap": None if heat is None else heatmap_json(heat, buckets),
            "update_ratio": latest,
        }
        with self._cache_lock:
            self._cache[ck] = out
            while len(self._cache) > _CACHE_ENTRIES:
                self._cache.popitem(last=False)
        return out

    def _layers_args(self, ctx, eid, args):
        run = _run_param(args)
        stat = args.get("stat") or "grad_norm"
        buckets = _int_param(
            args, "buckets", DEFAULT_HEATMAP_BUCKETS, 1, MAX_HEATMAP_BUCKETS
        )
        return self.layers_impl(ctx, eid, run, stat, buckets)

    def slices_impl(self, ctx, eid: str, runs: list[str], n: int) -> dict[str, Any]:
        """Slice and window gradient statistics of several runs.

        Args:
            ctx: The request context.
            eid: The experiment.
            runs: The runs.
            n: Most points per series.

        Returns:
            ``{"runs": {run: {"slices": {name: {"content", "grad_mean_abs",
            "grad_variance"}}, "window": {stat: series_json}}}}``.
        """
        out: dict[str, Any] = {}
        listing = self._scalar_versions_of_runs(ctx, eid, runs)
        for run in runs:
            versions = listing[run]
            keys = [
                k for k in versions if k.startswith("slice/") or k.startswith("window/")
            ]
            got = self.read_series(ctx, eid, run, keys, versions)
            slices: dict[str, dict] = {}
            window: dict[str, Any] = {}
            for key, s in sorted(got.items()):
                if key.startswith("window/"):
                    window[key[len("window/") :]] = series_json(s, n)
                    continue
                name, _, stat = key[len("slice/") :].rpartition("/")
                entry = slices.setdefault(name, {"content": s.content})
                entry[stat] = series_json(s, n)
            out[run] = {"slices": slices, "window": window}
        return {"runs": out}

    def _slices_args(self, ctx, eid, args):
        n = _int_param(args, "downsample", DEFAULT_DOWNSAMPLE, 1, MAX_DOWNSAMPLE)
        runs = _runs_param(args) or self.runs_impl(ctx, eid)
        return self.slices_impl(ctx, eid, runs, n)

    def loss_components_impl(
        self, ctx, eid: str, runs: list[str], n: int
    ) -> dict[str, Any]:
        """Loss components of several runs with each one's volatility.

        Args:
            ctx: The request context.
            eid: The experiment.
            runs: The runs.
            n: Most points per series.

        Returns:
            ``{"runs": {run: {name: {**series_json, "volatility": float|null}}}}``;
            the volatility (:func:`volatility`) uses every point.
        """
        out: dict[str, Any] = {}
        listing = self._scalar_versions_of_runs(ctx, eid, runs)
        for run in runs:
            versions = listing[run]
            keys = [k for k in versions if k.startswith("loss_component/")]
            got = self.read_series(ctx, eid, run, keys, versions)
            comps = {}
            for key, s in sorted(got.items()):
                comps[key[len("loss_component/") :]] = {
                    **series_json(s, n),
                    "volatility": volatility(s.values),
                }
            out[run] = comps
        return {"runs": out}

    def _loss_components_args(self, ctx, eid, args):
        n = _int_param(args, "downsample", DEFAULT_DOWNSAMPLE, 1, MAX_DOWNSAMPLE)
        runs = _runs_param(args) or self.runs_impl(ctx, eid)
        return self.loss_components_impl(ctx, eid, runs, n)

    def curvature_impl(self, ctx, eid: str, run: str, n: int) -> dict[str, Any]:
        """Curvature series, the min-ratio vs loss pairs and the noise scale.

        Args:
            ctx: The request context.
            eid: The experiment.
            run: The run.
            n: Most points per series.

        Returns:
            ``{"run", "available": bool, "series": {key: series_json},
            "min_ratio_vs_loss": {"steps", "x" (probe loss), "y" (min ratio)},
            "content": {...}}``; ``available`` is false when the run has no
            ``hessian/*`` and no ``window/noise_scale`` data.
        """
        versions = self._known_run(ctx, eid, run, keys=_CURVATURE_KEYS)
        keys = [k for k in versions if k.startswith("hessian/")]
        keys += [k for k in ("window/noise_scale", "window/grad_snr") if k in versions]
        got = self.read_series(ctx, eid, run, keys, versions)
        steps, loss, ratio = _aligned(
            got.get("hessian/probe_loss"), got.get("hessian/min_ratio")
        )
        content = next(
            (s.content for k, s in got.items() if k.startswith("hessian/")), {}
        )
        return {
            "run": run,
            "available": bool(got),
            "series": {k: series_json(s, n) for k, s in sorted(got.items())},
            "min_ratio_vs_loss": _pairs_json(steps, loss, ratio, n),
            "content": content,
        }

    def _curvature_args(self, ctx, eid, args):
        n = _int_param(args, "downsample", DEFAULT_DOWNSAMPLE, 1, MAX_DOWNSAMPLE)
        return self.curvature_impl(ctx, eid, _run_param(args), n)

    def trajectory_impl(self, ctx, eid: str, runs: list[str]) -> dict[str, Any]:
        """PCA of the parameter trajectories of several runs, in one basis.

        Args:
            ctx: The request context.
            eid: The experiment.
            runs: The runs.

        Returns:
            ``{"available": bool, "runs": {run: {"steps", "xy"}},
            "explained_variance_ratio": [r1, r2]}``; ``available`` is false
            when no run has a ``trajectory/projection`` with 2 or more points.

        Raises:
            RequestError: 503 while no trajectory module is installed.
        """
        key = metadata.TRAJECTORY_TAG[len(metadata.TAG_PREFIX) :]
        groups: dict[tuple, dict[str, tuple]] = {}
        for run in runs:
            versions = self._known_run(ctx, eid, run, keys=[key])
            s = self.read_series(ctx, eid, run, [key], versions).get(key)
            if s is not None and len(s) >= 1:
                # Only projections made with the same matrix share a PCA: the
                # matrix is a function of (seed, dim, parameter count).
                c = s.content
                group = (c.get("seed"), c.get("dim"), c.get("n_params"))
                groups.setdefault(group, {})[run] = (s.steps, s.values)
        if not groups:
            return {"available": False, "runs": {}, "explained_variance_ratio": []}
        if _trajectory is None:
            raise RequestError(
                "trajectories unavailable: tb_gradplugin.trajectory is not installed",
                503,
            )
        # The largest group of comparable runs (the first run's on a tie).
        inputs = max(groups.values(), key=len)
        excluded = sorted(r for g in groups.values() if g is not inputs for r in g)
        try:
            result = _trajectory.pca_trajectories(inputs)
        except ValueError as err:
            raise RequestError(f"trajectories cannot be compared: {err}", 400) from err
        return {"available": bool(result.get("runs")), "excluded": excluded, **result}

    def _trajectory_args(self, ctx, eid, args):
        runs = _runs_param(args) or self.runs_impl(ctx, eid)
        return self.trajectory_impl(ctx, eid, runs)

    def _health_args(self, ctx, eid, args):
        try:
            return self._health.table(ctx, eid, _runs_param(args))
        except LookupError as err:
            raise RequestError(str(err), 404) from None

    def _last_finite_args(self, ctx, eid, args):
        run = _run_param(args)
        key = args.get("key") or ""
        if not key:
            raise RequestError("missing parameter: key")
        versions = self._known_run(ctx, eid, run, keys=[key])
        if key not in versions:
            raise RequestError(f"unknown key for run: {key[:200]!r}", 404)
        series = self.read_series(ctx, eid, run, [key], versions)[key]
        step, values = health.last_finite_row(series)
        return {
            "run": run,
            "key": key,
            "last_step": int(series.steps[-1]) if len(series) else None,
            "step": step,
            "variables": _variable_names(series),
            "values": None if values is None else float_list(values.reshape(-1)),
        }

    # -- HTTP plumbing --------------------------------------------------------

    def _encoded(self, payload: Any) -> str:
        """JSON text of a payload; a memoised payload object is encoded once."""
        with self._cache_lock:
            hit = self._encoded_cache.get(id(payload))
        if hit is not None and hit[0] is payload:
            return hit[1]
        text = encode_json(payload)
        with self._cache_lock:
            # Holding the payload keeps its id from being reused while cached.
            self._encoded_cache[id(payload)] = (payload, text)
            while len(self._encoded_cache) > _ENCODED_ENTRIES:
                self._encoded_cache.popitem(last=False)
        return text

    def _json_route(self, body: Callable) -> Callable:
        @wrappers.Request.application
        def app(request):
            try:
                ctx = plugin_util.context(request.environ)
                eid = plugin_util.experiment_id(request.environ)
                payload = body(ctx, eid, request.args)
            except RequestError as err:
                return http_util.Respond(request, str(err), "text/plain", code=err.code)
            except Exception:  # never a traceback to the user
                logger.exception("gradient_health route %s failed", request.path)
                return http_util.Respond(
                    request,
                    "internal error; see the TensorBoard log",
                    "text/plain",
                    500,
                )
            return http_util.Respond(request, self._encoded(payload), _JSON)

        return app

    @wrappers.Request.application
    def _serve_export(self, request):
        try:
            ctx = plugin_util.context(request.environ)
            eid = plugin_util.experiment_id(request.environ)
            run = _run_param(request.args)
            key = request.args.get("key") or ""
            fmt = request.args.get("format") or "csv"
            if not key:
                raise RequestError("missing parameter: key")
            if fmt not in ("csv", "json"):
                raise RequestError("format must be csv or json")
            versions = self._known_run(ctx, eid, run, keys=[key])
            if key not in versions:
                raise RequestError(f"unknown key for run: {key[:200]!r}", 404)
            series = self.read_series(ctx, eid, run, [key], versions)[key]
            tensor = versions[key][0] == "tensor"
        except RequestError as err:
            return http_util.Respond(request, str(err), "text/plain", code=err.code)
        stem = "".join(c if c.isalnum() or c in "-_." else "_" for c in f"{run}_{key}")
        headers = [("Content-Disposition", f'attachment; filename="{stem}.{fmt}"')]
        if fmt == "csv":
            return http_util.Respond(
                request, export_csv(series, tensor), "text/csv", headers=headers
            )
        if tensor:
            body = tensor_series_json(series, None)
        else:
            body = series_json(series, None, wall_times=True)
        payload = {"run": run, "key": key, "kind": versions[key][0], **body}
        return http_util.Respond(request, encode_json(payload), _JSON, headers=headers)

    @wrappers.Request.application
    def _serve_index(self, request):
        return self._static_response(request, "index.js")

    @wrappers.Request.application
    def _serve_static(self, request):
        prefix = f"/data/plugin/{metadata.PLUGIN_NAME}/static/"
        path = request.path
        name = path[path.find(prefix) + len(prefix) :] if prefix in path else ""
        return self._static_response(request, name)

    def _static_response(self, request, name: str):
        target = (STATIC_DIR / name).resolve()
        if not name or STATIC_DIR not in target.parents or not target.is_file():
            return http_util.Respond(request, "not found", "text/plain", code=404)
        if target.suffix in (".js", ".mjs"):
            mime = "text/javascript"
        else:
            mime = mimetypes.guess_type(target.name)[0] or "application/octet-stream"
        return http_util.Respond(request, target.read_bytes(), mime)


class GradientHealthLoader(base_plugin.TBLoader):
    """Loads the plugin and keeps every point of its data by default.

    TensorBoard keeps only a sample of each series of an unknown plugin (10
    points under the Python ingester, 1,000 scalars / 100 tensors under the
    Rust data server). ``fix_flags`` runs before the data ingester is made
    and adds ``gradient_health=all`` to ``--samples_per_plugin`` unless the
    user set it, so a plain ``tensorboard --logdir DIR`` shows the whole run.

    Example:
        >>> from tensorboard import default, program
        >>> tb = program.TensorBoard(
        ...     plugins=default.get_static_plugins() + [GradientHealthLoader()]
        ... )
        >>> tb.configure(argv=[None, "--logdir", "runs"])  # doctest: +SKIP
    """

    def fix_flags(self, flags) -> None:
        """Keeps all gradient-health points unless ``--samples_per_plugin`` names it.

        Args:
            flags: TensorBoard's parsed flags (an ``argparse.Namespace``).
        """
        spp = getattr(flags, "samples_per_plugin", None)
        if spp is None or isinstance(spp, str):
            spp = _parse_samples(spp or "")
        spp = dict(spp)
        # 0 means "keep all": the Python ingester's reservoir size 0 keeps
        # every point, and server_ingester turns 0 into "all" for the Rust one.
        spp.setdefault(metadata.PLUGIN_NAME, 0)
        flags.samples_per_plugin = spp

    def load(self, context: base_plugin.TBContext) -> GradientHealthPlugin:
        """Makes the plugin.

        Args:
            context: TensorBoard's context.

        Returns:
            The plugin instance.
        """
        return GradientHealthPlugin(context)


def _parse_samples(value: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for token in value.split(","):
        if not token.strip():
            continue
        name, _, count = token.strip().partition("=")
        out[name] = 0 if count == "all" else int(count)
    return out

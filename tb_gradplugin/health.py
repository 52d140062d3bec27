"""The health table: every run's worst flag, last loss and a grad-norm sparkline.

The tab's first view answers "which of my runs are unhealthy?" in one request.
:class:`HealthTable` lists the runs' tags in one provider call per kind (not
one per run: a per-run listing costs ~40 ms under the Rust data server, 8 s for
200 runs) and keeps each row until a series of its run grows; a new row takes
the run's report from the ``flags`` route's cache, so the table and the flags
view show one diagnosis. The pure functions here shape one row and
find the non-finite stretches and the last finite row of a series; they import
no TensorFlow.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from tb_gradplugin import blocks, cached_reader, diagnosis, reader

SPARKLINE_POINTS = 60
"""Most points of the grad-norm sparkline of a row (up to three per bucket)."""

_ROW_CACHE_ENTRIES = 1024
"""Rows kept: one per run and data version (the table holds up to 200 runs)."""

FEW_RUNS = 4
"""Most runs of a table listed one by one, through the plugin's per-run listings
(shared with the run's other views); more are listed in one call per kind."""


def worst_severity(flags: list[dict]) -> str | None:
    """The most severe flag's severity.

    Args:
        flags: Flag objects as in the ``flags`` route.

    Returns:
        ``"error"``, ``"warning"`` or ``"info"`` (``diagnosis.SEVERITIES``
        order), or ``None`` without flags.
    """
    rank = {name: i for i, name in enumerate(diagnosis.SEVERITIES)}
    worst = max((f["severity"] for f in flags), key=rank.get, default=None)
    return worst


def nonfinite_stretches(steps: np.ndarray, values: np.ndarray) -> list[dict]:
    """Runs of consecutive non-finite points of a scalar series.

    Args:
        steps: int steps, shape ``[n]``.
        values: float values, shape ``[n]``.

    Returns:
        ``[{"first_step", "last_step", "count", "value"}, ...]`` in step order:
        ``count`` is the number of logged points in the stretch and ``value``
        its first value (NaN, +Inf or -Inf, encoded as TensorBoard does).

    Example:
        >>> out = nonfinite_stretches(np.arange(1, 5), np.array([1, np.inf, np.nan, 2]))
        >>> [(s["first_step"], s["last_step"], s["count"], s["value"]) for s in out]
        [(2, 3, 2, inf)]
    """
    bad = ~np.isfinite(values)
    if not bad.any():
        return []
    edges = np.diff(np.concatenate(([0], bad.astype(np.int8), [0])))
    starts = np.flatnonzero(edges == 1)
    stops = np.flatnonzero(edges == -1)  # exclusive
    return [
        {
            "first_step": int(steps[start]),
            "last_step": int(steps[stop - 1]),
            "count": int(stop - start),
            "value": float(values[start]),
        }
        for start, stop in zip(starts, stops, strict=True)
    ]


def sparkline(series: reader.Series, points: int = SPARKLINE_POINTS) -> dict:
    """A small copy of a scalar series that keeps each bucket's extremes.

    The series is cut into ``points // 3`` buckets of consecutive points; each
    keeps its smallest and largest finite value and its first non-finite one,
    so a spike or a NaN still shows in a sparkline of a long run.

    Args:
        series: A scalar series.
        points: Most points. Defaults to :data:`SPARKLINE_POINTS`.

    Returns:
        ``{"steps": [int], "values": [float]}`` with NaN/Inf as floats (the
        route encodes them as TensorBoard does).
    """
    n = len(series)
    buckets = max(1, points // 3)
    if n <= points:
        idx = np.arange(n)
    else:
        picks = set()
        for chunk in np.array_split(np.arange(n), buckets):
            vals = series.values[chunk]
            bad = ~np.isfinite(vals)
            if bad.any():
                picks.add(int(chunk[np.argmax(bad)]))
            finite = np.flatnonzero(~bad)
            if finite.size:
                picks.add(int(chunk[finite[np.argmin(vals[finite])]]))
                picks.add(int(chunk[finite[np.argmax(vals[finite])]]))
        idx = np.array(sorted(picks), dtype=np.int64)
    return {
        "steps": series.steps[idx].tolist(),
        "values": series.values[idx].astype(float).tolist(),
    }


def last_finite_row(series: reader.Series) -> tuple[int | None, np.ndarray | None]:
    """The last logged step at which every value of a series is finite.

    Args:
        series: A scalar or per-variable tensor series.

    Returns:
        ``(step, values)`` of that step, or ``(None, None)`` when none is.
    """
    values = series.values.reshape(len(series), -1)
    ok = np.flatnonzero(np.isfinite(values).all(axis=1))
    if not ok.size:
        return None, None
    i = int(ok[-1])
    return int(series.steps[i]), series.values[i]


def health_row(data: reader.RunData, report: dict) -> dict[str, Any]:
    """One run's row of the health table.

    Args:
        data: The run's series; only its scalars are read.
        report: The run's ``flags`` object (``diagnosis.run_report``).

    Returns:
        ``{"run", "worst", "kinds", "flag_count", "last_step", "last_loss",
        "last_finite_loss", "grad_norm", "nonfinite"}``: ``worst`` is the most
        severe flag's severity or ``None``; ``kinds`` the flag kinds, most
        severe first; ``last_loss`` the loss at its last logged step (may be
        NaN) and ``last_finite_loss`` ``{"step", "value"}`` of the last finite
        one; ``grad_norm`` a :func:`sparkline`; ``nonfinite`` maps each scalar
        key with non-finite points to its :func:`nonfinite_stretches`.
    """
    flags = report.get("flags", [])
    rank = {name: i for i, name in enumerate(diagnosis.SEVERITIES)}
    kinds: list[str] = []
    for flag in sorted(flags, key=lambda f: -rank.get(f["severity"], 0)):
        if flag["kind"] not in kinds:
            kinds.append(flag["kind"])
    loss = data.scalar("step/loss")
    last_loss = None
    last_finite_loss = None
    if loss is not None and len(loss):
        last_loss = float(loss.values[-1])
        step, value = last_finite_row(loss)
        if step is not None:
            last_finite_loss = {"step": step, "value": float(value)}
    grad = data.scalar("step/grad_norm")
    return {
        "run": data.run,
        "worst": worst_severity(flags),
        "kinds": kinds,
        "flag_count": len(flags),
        "last_step": report.get("last_step", data.last_step),
        "last_loss": last_loss,
        "last_finite_loss": last_finite_loss,
        "grad_norm": None if grad is None else sparkline(grad),
        "nonfinite": {
            key: stretches
            for key, series in sorted(data.scalars.items())
            if (stretches := nonfinite_stretches(series.steps, series.values))
        },
    }


class HealthTable:
    """The ``health`` route: a row per run, each recomputed only when its data grows.

    Args:
        list_versions: ``(ctx, eid, runs) -> {run: {key: TagVersion}}``, the
            plugin reader's cached listing of several runs, one provider call
            per kind (``CachedReader.versions_of_runs``).
        read_run_data: ``(ctx, eid, run, versions) -> reader.RunData``, the
            plugin's cached read of the listed series of a run (a row reads
            the scalars).
        run_report: ``(ctx, eid, run, versions) -> dict``, the ``flags``
            route's cached report, so a row and the run's flags come from one
            diagnosis; ``versions`` is the run's listing made by this table.
        run_versions: ``(ctx, eid, run) -> {key: TagVersion}``, the plugin's
            cached listing of one run (empty for an unknown run), used for a
            table of at most :data:`FEW_RUNS` runs. Defaults to ``None``: list
            every table in one listing per kind.
        prefetch: ``(ctx, eid, {run: {key: TagVersion}}) -> None``, reads the
            given series of several runs into the cache ``read_run_data`` and
            ``run_report`` read through, in one call per kind (the rows of 200
            runs then cost 2 provider calls, not 600). Defaults to ``None``:
            each row reads its own.
    """

    def __init__(
        self,
        list_versions: Callable[..., dict],
        read_run_data: Callable[..., reader.RunData],
        run_report: Callable[..., dict],
        run_versions: Callable[..., dict] | None = None,
        prefetch: Callable[..., None] | None = None,
    ):
        self._list_versions = list_versions
        self._read_run_data = read_run_data
        self._run_report = run_report
        self._run_versions = run_versions
        self._prefetch = prefetch
        self._rows = cached_reader.LRUCache(_ROW_CACHE_ENTRIES)

    def versions(
        self, ctx, eid: str, runs: list[str] | None = None
    ) -> dict[str, dict[str, cached_reader.TagVersion]]:
        """The tag versions of some runs, in one listing per kind.

        The listing is the plugin reader's (``list_versions``), cached as a
        run's listing is.

        Args:
            ctx: The request context.
            eid: The experiment.
            runs: The runs. Defaults to ``None``: every run.

        Returns:
            ``{run: {key: TagVersion}}``
            for the runs that hold gradient-health data.
        """
        if runs is not None and len(runs) <= FEW_RUNS and self._run_versions:
            # The views of these runs list them too: share their listings.
            found = {run: self._run_versions(ctx, eid, run) for run in runs}
            return {run: v for run, v in found.items() if v}
        return self._list_versions(ctx, eid, runs)

    def table(self, ctx, eid: str, runs: list[str] | None = None) -> dict[str, Any]:
        """The health table of some runs.

        Args:
            ctx: The request context.
            eid: The experiment.
            runs: The runs. Defaults to ``None``: every run.

        Returns:
            ``{"runs": [health_row, ...]}`` in the order of ``runs`` (sorted
            by name for every run).

        Raises:
            LookupError: When a named run has no gradient-health data (the
                message names it).
        """
        versions = self.versions(ctx, eid, runs)
        names = sorted(versions) if runs is None else runs
        for run in names:
            if run not in versions:
                raise LookupError(f"unknown run: {run[:200]!r}")
        stale = [r for r in names if self._cached_row(eid, r, versions[r]) is None]
        if self._prefetch is not None and len(stale) > 1:
            # What a new row reads whole: its scalars and the block summaries
            # that the diagnosis decides from. Per-step tensors stay unread.
            self._prefetch(
                ctx,
                eid,
                {
                    run: {
                        k: v
                        for k, v in versions[run].items()
                        if v.kind == "scalar" or k.startswith(blocks.BLOCK_FAMILY)
                    }
                    for run in stale
                },
            )
        return {"runs": [self._row(ctx, eid, run, versions[run]) for run in names]}

    def _cached_row(self, eid: str, run: str, versions: dict) -> dict | None:
        return self._rows.get(_row_key(eid, run, versions))

    def _row(self, ctx, eid: str, run: str, versions: dict[str, tuple]) -> dict:
        def compute():
            report = self._run_report(ctx, eid, run, versions)
            # A row shows scalars only; the report read the tensors it needs.
            scalars = {k: v for k, v in versions.items() if v.kind == "scalar"}
            return health_row(self._read_run_data(ctx, eid, run, scalars), report)

        return self._rows.memo(_row_key(eid, run, versions), compute)


def _row_key(eid: str, run: str, versions: dict[str, tuple]) -> tuple:
    """A row's cache key: its run and the versions of every series it has."""
    return (eid, run, cached_reader.version_stamp(versions))

"""The data each view of the tab shows, as plain JSON-ready objects.

Each ``*_impl`` method is what a route of :mod:`tb_gradplugin.plugin` answers:
it lists and reads series through one
:class:`tb_gradplugin.cached_reader.CachedReader`
(so a series is read again only when it grew), hands them to
:mod:`tb_gradplugin.shaping`, and caches what it made under the versions of the
series it read. Errors are raised as ``tensorboard.errors``. Imports no
TensorFlow.
"""

from __future__ import annotations

from typing import Any

from tensorboard import errors

from tb_gradplugin import (
    blocks,
    cached_reader,
    compare_views,
    diagnosis,
    export_views,
    flag_reads,
    health,
    metadata,
    reader,
    shaping,
)
from tb_gradplugin.heatmap import heatmap_json, may_be_absent

BLOCK_MIN_POINTS = 20_000
"""Logged steps from which a view draws a series from its block summaries
(:mod:`tb_gradplugin.blocks`) rather than reading every step: below, a full read of
a 100-variable tensor is a few MB and fast."""

OVERVIEW_KEYS = (
    "step/loss",
    "step/grad_norm",
    "step/param_norm",
    "step/update_ratio",
)
"""The whole-model per-step scalars the overview view draws (others: ``series``).

Each costs a full read of the series on a cold cache, so the overview reads only
what it draws."""

_LAYER_KEYS = tuple(f"layer/{stat}" for stat in metadata.LAYER_STATS)
_CURVATURE_KEYS = tuple(f"hessian/{stat}" for stat in metadata.HESSIAN_SCALARS) + (
    "window/noise_scale",
    "window/grad_snr",
)
_DENSITY_KEY = metadata.tag_key(metadata.HESSIAN_SPECTRUM_TAG)


class ViewData(compare_views.CompareViews, export_views.PointViews):
    """Answers the data of every view from a run's series.

    The several-run views come from :class:`compare_views.CompareViews`, the
    every-point ones from :class:`export_views.PointViews`.

    Args:
        data_reader: The reader (and its cache) to read through.

    Example:
        >>> provider = reader.provider_for_logdir("runs")  # doctest: +SKIP
        >>> views = ViewData(cached_reader.CachedReader(provider))  # doctest: +SKIP
        >>> views.runs_impl(ctx=None, experiment_id="")  # doctest: +SKIP
        ['exp1']
    """

    def __init__(self, data_reader: cached_reader.CachedReader):
        self._health = health.HealthTable(
            data_reader.versions_of_runs,
            data_reader.read_run_data,
            self.flags_impl,
            data_reader.tag_versions,
            data_reader.prefetch,
        )
        self._reader = data_reader

    def runs_impl(self, ctx, experiment_id: str) -> list[str]:
        """Lists the runs with gradient-health data.

        Args:
            ctx: The request context.
            experiment_id: The experiment.

        Returns:
            The sorted run names.
        """
        return self._reader.list_runs(ctx, experiment_id)

    def tags_impl(self, ctx, eid: str, run: str) -> dict[str, Any]:
        """What a run holds, without reading a series.

        Args:
            ctx: The request context.
            eid: The experiment.
            run: The run.

        Returns:
            ``{"run", "scalars": {key: {"max_step", "content"}}, "tensors": ...}``.

        Raises:
            tensorboard.errors.NotFoundError: For an unknown run.
        """
        out: dict[str, dict] = {"scalars": {}, "tensors": {}}
        for key, version in sorted(self._reader.known_run(ctx, eid, run).items()):
            try:
                parsed = metadata.parse_plugin_content(version.content)
            except ValueError:
                parsed = {}
            out[f"{version.kind}s"][key] = {
                "max_step": int(version.max_step),
                "content": parsed,
            }
        return {"run": run, **out}

    def flags_impl(
        self,
        ctx,
        eid: str,
        run: str,
        versions: dict[str, cached_reader.TagVersion] | None = None,
    ) -> dict[str, Any]:
        """Diagnoses a run: the contract's ``flags`` object.

        Args:
            ctx: The request context.
            eid: The experiment.
            run: The run.
            versions: The run's listing when the caller already made one (the
                health table lists every run at once). Defaults to ``None``:
                list the run.

        Returns:
            ``{"run", "last_step", "flags": [...]}`` as in the CLI.

        Raises:
            tensorboard.errors.NotFoundError: For an unknown run.
        """
        if versions is None:
            versions = self._reader.known_run(ctx, eid, run)

        # The rules read the per-step scalars whole and each per-variable
        # series only where its block summaries cannot decide: a healthy long
        # run is judged without reading its per-variable steps (most of its
        # bytes). The last step still comes from every series' listing.
        def compute():
            scalars, tensors, block_keys = flag_reads.split_keys(versions)
            data = self._reader.read_run_data(
                ctx, eid, run, {k: versions[k] for k in scalars}
            )
            summaries = flag_reads.LazySummaries(
                block_keys,
                lambda key: self._reader.read_series(
                    ctx, eid, run, [key], versions
                ).get(key),
            )
            deferred = flag_reads.deferred_tensors(
                {k: (versions[k].content, versions[k].max_step) for k in tensors},
                summaries,
                data.scalar(flag_reads.GRAD_KEY),
                lambda key: self._reader.read_series(
                    ctx, eid, run, [key], versions
                ).get(key),
            )
            return diagnosis.run_report(
                data,
                last_step=max(int(v.max_step) for v in versions.values()),
                deferred=deferred,
            )

        stamp = cached_reader.version_stamp(versions)
        return self._reader.memo(("flags", eid, run, stamp), compute)

    def series_impl(self, ctx, eid: str, run: str, key: str, n: int) -> dict[str, Any]:
        """One series of a run, downsampled for display.

        Args:
            ctx: The request context.
            eid: The experiment.
            run: The run.
            key: The series' key, e.g. ``"step/loss"``.
            n: Most points.

        Returns:
            ``{"run", "key", "kind", **S}`` or ``**T`` (``http_api.md``).

        Raises:
            tensorboard.errors.NotFoundError: For an unknown run or key.
        """
        keys = [key, blocks.block_key(key)]
        versions = self._reader.known_run(ctx, eid, run, keys=keys)
        if key not in versions:
            raise errors.NotFoundError(f"run {run[:200]!r} has no series {key[:200]!r}")
        kind = versions[key].kind

        def compute():
            coarse = self._coarse(ctx, eid, run, [key], versions)
            if kind == "scalar" and key in coarse:
                drawn = blocks.series_json(coarse[key], n)
                return {"run": run, "key": key, "kind": kind, **drawn}
            series = self._reader.read_series(ctx, eid, run, [key], versions)[key]
            shape = (
                shaping.series_json if kind == "scalar" else shaping.tensor_series_json
            )
            return {"run": run, "key": key, "kind": kind, **shape(series, n)}

        stamp = cached_reader.version_stamp(versions)
        return self._reader.memo(("series", eid, run, key, n, stamp), compute)

    def overview_impl(self, ctx, eid: str, run: str, n: int) -> dict[str, Any]:
        """The overview of a run: whole-model per-step series.

        Args:
            ctx: The request context.
            eid: The experiment.
            run: The run.
            n: Most points per series.

        Returns:
            :func:`tb_gradplugin.shaping.overview_json`.

        Raises:
            tensorboard.errors.NotFoundError: For an unknown run.
        """
        keys = OVERVIEW_KEYS + tuple(blocks.block_key(k) for k in OVERVIEW_KEYS)
        versions = self._reader.known_run(ctx, eid, run, keys=keys)
        last = max((int(v.max_step) for v in versions.values()), default=None)

        def compute():
            coarse = self._coarse(ctx, eid, run, OVERVIEW_KEYS, versions)
            fine = [k for k in OVERVIEW_KEYS if k not in coarse]
            got = self._reader.read_series(ctx, eid, run, fine, versions)
            out = shaping.overview_json(run, last, got, n)
            for key, summary in coarse.items():
                out["series"][key] = blocks.series_json(summary, n)
            if {"step/param_norm", "step/grad_norm"} <= coarse.keys():
                out["norms"] = blocks.pairs_from_blocks(
                    coarse["step/param_norm"], coarse["step/grad_norm"], n
                )
            return out

        stamp = cached_reader.version_stamp(versions)
        return self._reader.memo(("overview", eid, run, n, stamp), compute)

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
            :data:`tb_gradplugin.diagnosis.RECENT_STEPS` logged steps.

        Raises:
            tensorboard.errors.InvalidArgumentError: For an unknown ``stat``.
            tensorboard.errors.NotFoundError: For an unknown run.
        """
        if stat not in metadata.LAYER_STATS:
            raise errors.InvalidArgumentError(f"unknown stat: {stat[:80]!r}")
        # The non-finite counts tell a variable no optimizer updated from a NaN.
        keys = sorted({f"layer/{stat}", "layer/update_ratio", "layer/nonfinite_grads"})
        listed = _LAYER_KEYS + tuple(blocks.block_key(k) for k in keys)
        versions = self._reader.known_run(ctx, eid, run, keys=listed)
        available = [s for s in metadata.LAYER_STATS if f"layer/{s}" in versions]
        read = set(keys) | {blocks.block_key(k) for k in keys}
        used = {k: v for k, v in versions.items() if k in read}

        def compute():
            coarse = self._coarse(ctx, eid, run, keys, versions)
            heat_key, ratio_key = f"layer/{stat}", "layer/update_ratio"
            counts = "layer/nonfinite_grads"
            # The counts are read only when a NaN needs them (a long run's tensor).
            lazy = {counts} - {heat_key}
            fine = [k for k in keys if k not in coarse and k not in lazy]
            got = self._reader.read_series(ctx, eid, run, fine, versions)
            if counts not in coarse and may_be_absent(got.get(heat_key)):
                got.update(self._reader.read_series(ctx, eid, run, [counts], versions))
            if heat_key in coarse:
                heatmap = blocks.heatmap_json(
                    coarse[heat_key], buckets, coarse.get(counts)
                )
            elif heat_key in got:
                heatmap = heatmap_json(got[heat_key], buckets, got.get(counts))
            else:
                heatmap = None
            if ratio_key in coarse:
                latest = blocks.latest_json(coarse[ratio_key])
            else:
                latest = shaping.latest_update_ratios(got.get(ratio_key))
            return {
                "run": run,
                "stat": stat,
                "stats": available,
                "heatmap": heatmap,
                "update_ratio": latest,
            }

        stamp = cached_reader.version_stamp(used)
        return self._reader.memo(("layers", eid, run, stat, buckets, stamp), compute)

    def curvature_impl(
        self, ctx, eid: str, run: str, n: int, step: int | None = None
    ) -> dict[str, Any]:
        """Curvature series, the min-ratio vs loss pairs, the spectral density.

        Args:
            ctx: The request context.
            eid: The experiment.
            run: The run.
            n: Most points per series.
            step: The curvature step whose density to send. Defaults to
                ``None``: the latest.

        Returns:
            :func:`tb_gradplugin.shaping.curvature_json`; ``available`` is false
            when the run has no ``hessian/*`` and no window noise data.

        Raises:
            tensorboard.errors.NotFoundError: For an unknown run.
        """
        keys = _CURVATURE_KEYS + (_DENSITY_KEY,)
        versions = self._reader.known_run(ctx, eid, run, keys=keys)
        got = dict(self._reader.read_series(ctx, eid, run, keys, versions))
        density = got.pop(_DENSITY_KEY, None)
        return shaping.curvature_json(run, got, n, density, step)

    def health_impl(self, ctx, eid: str, runs: list[str] | None) -> dict[str, Any]:
        """The health table: one row per run (:class:`health.HealthTable`).

        Args:
            ctx: The request context.
            eid: The experiment.
            runs: The runs, or ``None`` for every run.

        Returns:
            ``{"runs": [health_row, ...]}``.

        Raises:
            tensorboard.errors.NotFoundError: For an unknown run.
        """
        try:
            return self._health.table(ctx, eid, runs)
        except LookupError as err:
            raise errors.NotFoundError(str(err)) from None

    def _coarse(
        self,
        ctx,
        eid: str,
        run: str,
        keys,
        versions: dict[str, cached_reader.TagVersion],
    ) -> dict[str, reader.Series]:
        """The block summaries of those ``keys`` long enough to be drawn from them.

        Returns:
            Per-step key -> its ``block/<key>`` series, for the keys whose
            blocks summarise at least :data:`BLOCK_MIN_POINTS` steps.
        """
        wanted = {blocks.block_key(k): k for k in keys}
        got = self._reader.read_series(ctx, eid, run, wanted, versions)
        return {
            wanted[block_key]: summary
            for block_key, summary in got.items()
            if blocks.total_points(summary) >= BLOCK_MIN_POINTS
        }

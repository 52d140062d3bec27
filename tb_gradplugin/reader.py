"""Reads a run's gradient-health series out of a TensorBoard data provider.

Shared by the plugin (which gets its provider from TensorBoard) and the CLI
(which builds one over TensorBoard's own event loading with
:func:`provider_for_logdir`). Imports no TensorFlow.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Iterable, Mapping

import numpy as np
from tensorboard import context as tb_context
from tensorboard.backend.event_processing import data_provider as tb_data_provider
from tensorboard.backend.event_processing import plugin_event_multiplexer
from tensorboard.data import provider as tb_provider

from tb_gradplugin import data_server, metadata

logger = logging.getLogger(__name__)

ALL_POINTS = 1 << 30
"""A ``downsample`` large enough to read every stored point of a series."""


@dataclasses.dataclass(frozen=True)
class Series:
    """One time series.

    Attributes:
        steps: int64 steps, increasing.
        values: float64 values, shape ``[n]`` for scalars or ``[n, k]`` for
            per-variable tensors (NaN where a step lacks an entry).
        wall_times: float64 seconds since the epoch, one per step.
        content: The JSON content of the tag's summary metadata.
    """

    steps: np.ndarray
    values: np.ndarray
    wall_times: np.ndarray
    content: dict

    @property
    def names(self) -> list[str]:
        """The variable names of a per-variable tensor series (may be empty)."""
        return list(self.content.get("variables", []))

    def __len__(self) -> int:
        return int(self.steps.shape[0])


@dataclasses.dataclass
class RunData:
    """All gradient-health series of one run, keyed by tag without the prefix.

    Attributes:
        run: The run name.
        scalars: e.g. ``"step/loss"``, ``"window/noise_scale"``,
            ``"slice/emb_lo/grad_variance"``, ``"loss_component/kl_loss"``.
        tensors: e.g. ``"layer/grad_norm"``, ``"window_layer/grad_variance"``,
            ``"hessian_layer/min_ratio"``, ``"trajectory/projection"``.
    """

    run: str
    scalars: dict[str, Series] = dataclasses.field(default_factory=dict)
    tensors: dict[str, Series] = dataclasses.field(default_factory=dict)

    @property
    def last_step(self) -> int | None:
        """The largest step of any series, or ``None`` for an empty run."""
        ends = [int(s.steps[-1]) for s in self.series() if len(s)]
        return max(ends) if ends else None

    def series(self) -> Iterable[Series]:
        """Yields every series of the run."""
        yield from self.scalars.values()
        yield from self.tensors.values()

    def scalar(self, key: str) -> Series | None:
        """Returns a scalar series by key (e.g. ``"step/loss"``) or ``None``."""
        return self.scalars.get(key)

    def tensor(self, key: str) -> Series | None:
        """Returns a tensor series by key (e.g. ``"layer/grad_norm"``) or ``None``."""
        return self.tensors.get(key)


def parse_content(raw: bytes) -> dict:
    """A series' content (its summary metadata's JSON), ``{}`` when malformed.

    Args:
        raw: The ``PluginData`` content bytes.

    Returns:
        The parsed content.
    """
    try:
        return metadata.parse_plugin_content(raw)
    except ValueError as err:
        logger.warning("ignoring the content of a series: %s", err)
        return {}


def stack_rows(rows: list[np.ndarray]) -> np.ndarray:
    """Per-step tensors as one float64 array, NaN where a row is shorter.

    Args:
        rows: One array per step (flattened here).

    Returns:
        ``[len(rows), widest row]`` float64.
    """
    width = max((r.size for r in rows), default=0)
    out = np.full((len(rows), width), np.nan, dtype=np.float64)
    for i, r in enumerate(rows):
        flat = np.asarray(r, dtype=np.float64).reshape(-1)
        out[i, : flat.size] = flat
    return out


def _read_points(
    provider, ctx, kind: str, experiment_id: str, run: str, tags, downsample: int
) -> dict[str, data_server.Points]:
    """Reads some series of one kind of a run as arrays, by tag."""
    found = _read_points_of_runs(
        provider, ctx, kind, experiment_id, [run], tags, downsample
    )
    return found.get(run, {})


def _read_points_of_runs(
    provider, ctx, kind: str, experiment_id: str, runs, tags, downsample: int
) -> dict[str, dict[str, data_server.Points]]:
    """Reads some series of one kind of several runs as arrays, by run and tag."""
    fast = data_server.read_points_of_runs(
        provider, kind, experiment_id, runs, tags, downsample
    )
    if fast is not None:
        return fast
    read = provider.read_scalars if kind == "scalar" else provider.read_tensors
    points = read(
        ctx,
        experiment_id=experiment_id,
        plugin_name=metadata.PLUGIN_NAME,
        downsample=downsample,
        run_tag_filter=tb_provider.RunTagFilter(runs=list(runs), tags=tags),
    )
    out: dict[str, dict[str, data_server.Points]] = {}
    for run, by_tag in points.items():
        for tag, datums in by_tag.items():
            if kind == "scalar":
                values = np.array([d.value for d in datums], dtype=np.float64)
            else:
                values = stack_rows([d.numpy for d in datums])
            out.setdefault(run, {})[tag] = (
                np.array([d.step for d in datums], dtype=np.int64),
                np.array([d.wall_time for d in datums], dtype=np.float64),
                values,
            )
    return out


def read_runs(
    provider: tb_provider.DataProvider,
    listed: Mapping[str, Mapping[str, tuple[str, bytes]]],
    ctx=None,
    *,
    experiment_id: str = "",
    downsample: int = ALL_POINTS,
) -> dict[str, RunData]:
    """Reads listed series of several runs together (a call per kind, or per tag).

    A call costs 10-40 ms on the Rust data server whatever it holds, so the
    health table reads the scalars of 200 runs together instead of 200 times;
    :func:`read_run` with ``listed`` is this for one run. On that server the
    calls go one a scalar tag or per-step tensor tag, and one for all block
    summaries (:func:`tb_gradplugin.data_server.read_points_of_runs`).

    Args:
        provider: A TensorBoard data provider.
        listed: Run -> key -> ``(kind, PluginData content)``, as for
            :func:`read_run`'s ``listed``.
        ctx: The request context. Defaults to ``None``.
        experiment_id: The experiment. Defaults to ``""``.
        downsample: Most points per series. Defaults to :data:`ALL_POINTS`.

    Returns:
        Run -> its series; a listed series that the provider no longer holds
        is left out.
    """
    ctx = ctx or tb_context.RequestContext()
    out = {run: RunData(run=run) for run in listed}
    for kind in ("scalar", "tensor"):
        contents = {
            run: {
                metadata.TAG_PREFIX + key: content
                for key, (k, content) in keys.items()
                if k == kind
            }
            for run, keys in listed.items()
        }
        runs = [run for run, tags in contents.items() if tags]
        if not runs:
            continue
        tags = set().union(*(contents[run] for run in runs))
        points = _read_points_of_runs(
            provider, ctx, kind, experiment_id, runs, tags, downsample
        )
        for run in runs:
            target = out[run].scalars if kind == "scalar" else out[run].tensors
            _put(target, points.get(run, {}), contents[run])
    return out


def list_runs(
    provider: tb_provider.DataProvider, ctx=None, *, experiment_id: str = ""
) -> list[str]:
    """Lists the runs that hold gradient-health data, sorted by name.

    Args:
        provider: A TensorBoard data provider.
        ctx: The request context. Defaults to ``None``.
        experiment_id: The experiment. Defaults to ``""`` (the only one).

    Returns:
        The run names.
    """
    ctx = ctx or tb_context.RequestContext()
    runs = set()
    for listing in (provider.list_scalars, provider.list_tensors):
        found = listing(
            ctx, experiment_id=experiment_id, plugin_name=metadata.PLUGIN_NAME
        )
        runs.update(run for run, tags in found.items() if tags)
    return sorted(runs)


def last_step(
    provider: tb_provider.DataProvider, run: str, ctx=None, *, experiment_id: str = ""
) -> int | None:
    """The largest step of any gradient-health series of a run, without reading one.

    Args:
        provider: A TensorBoard data provider.
        run: The run name.
        ctx: The request context. Defaults to ``None``.
        experiment_id: The experiment. Defaults to ``""`` (the only one).

    Returns:
        The step, or ``None`` for a run with no series.
    """
    found = listing(provider, run, ctx, experiment_id=experiment_id)
    steps = [step for _, _, step in found.values()]
    return max(steps) if steps else None


def listing(
    provider: tb_provider.DataProvider, run: str, ctx=None, *, experiment_id: str = ""
) -> dict[str, tuple[str, bytes, int]]:
    """Lists a run's gradient-health series without reading them.

    Args:
        provider: A TensorBoard data provider.
        run: The run name.
        ctx: The request context. Defaults to ``None``.
        experiment_id: The experiment. Defaults to ``""`` (the only one).

    Returns:
        Key -> ``(kind, PluginData content bytes, last step)``; empty for a run
        with no series.
    """
    ctx = ctx or tb_context.RequestContext()
    out = {}
    for kind, list_fn in (
        ("scalar", provider.list_scalars),
        ("tensor", provider.list_tensors),
    ):
        found = list_fn(
            ctx,
            experiment_id=experiment_id,
            plugin_name=metadata.PLUGIN_NAME,
            run_tag_filter=tb_provider.RunTagFilter(runs=[run]),
        ).get(run, {})
        for tag, ts in found.items():
            key = metadata.tag_key(tag)
            if key is not None:
                out[key] = (kind, ts.plugin_content, int(ts.max_step))
    return out


def read_run(
    provider: tb_provider.DataProvider,
    run: str,
    ctx=None,
    *,
    experiment_id: str = "",
    downsample: int = ALL_POINTS,
    keys: Iterable[str] | None = None,
    listed: Mapping[str, tuple[str, bytes]] | None = None,
) -> RunData:
    """Reads a run's gradient-health series.

    Args:
        provider: A TensorBoard data provider.
        run: The run name.
        ctx: The request context. Defaults to ``None``.
        experiment_id: The experiment. Defaults to ``""``.
        downsample: Most points per series. Defaults to :data:`ALL_POINTS`.
        keys: Only these keys (tags without the prefix). Defaults to ``None``:
            all of them.
        listed: Key -> ``(kind, PluginData content)`` of the series to read,
            from a listing already made: then only these are read, without
            listing the run again (a listing is a server call of its own, tens
            of ms on a busy machine), and ``keys`` is ignored. Defaults to
            ``None``.

    Returns:
        The run's series; empty when the run has none.
    """
    ctx = ctx or tb_context.RequestContext()
    if listed is not None:
        return read_runs(
            provider,
            {run: listed},
            ctx,
            experiment_id=experiment_id,
            downsample=downsample,
        )[run]
    data = RunData(run=run)
    targets = {"scalar": data.scalars, "tensor": data.tensors}
    wanted = None if keys is None else {metadata.TAG_PREFIX + k for k in keys}
    filt = tb_provider.RunTagFilter(runs=[run], tags=wanted)
    kw = dict(experiment_id=experiment_id, plugin_name=metadata.PLUGIN_NAME)
    for kind, list_fn in (
        ("scalar", provider.list_scalars),
        ("tensor", provider.list_tensors),
    ):
        meta = list_fn(ctx, run_tag_filter=filt, **kw).get(run, {})
        contents = {tag: ts.plugin_content for tag, ts in meta.items()}
        _read_into(
            provider, ctx, kind, experiment_id, run, contents, downsample, targets[kind]
        )
    return data


def event_multiplexer() -> plugin_event_multiplexer.EventMultiplexer:
    """TensorBoard's event loader, set to keep every gradient-health point.

    Returns:
        An empty multiplexer (no reservoir sampling of this plugin's series,
        one reload thread); add runs to it and call ``Reload``.
    """
    return plugin_event_multiplexer.EventMultiplexer(
        tensor_size_guidance={metadata.PLUGIN_NAME: 0}, max_reload_threads=1
    )


def _read_into(
    provider, ctx, kind, experiment_id, run, contents, downsample, target
) -> None:
    """Reads the tags of ``contents`` (tag -> content bytes) of one kind into target."""
    if not contents:
        return
    points = _read_points(
        provider, ctx, kind, experiment_id, run, set(contents), downsample
    )
    _put(target, points, contents)


def _put(target: dict, points: dict, contents: Mapping[str, bytes]) -> None:
    """Stores the points read of the tags of ``contents`` as Series, by key."""
    for tag, (steps, wall_times, values) in points.items():
        key = metadata.tag_key(tag)
        if key is None or tag not in contents:
            continue
        target[key] = Series(
            steps=steps,
            values=values,
            wall_times=wall_times,
            content=parse_content(contents[tag]),
        )


def provider_for_logdir(logdir: str | os.PathLike) -> tb_provider.DataProvider:
    """Loads every run under a log directory with TensorBoard's event loading.

    Keeps every point of the gradient-health series (no reservoir sampling),
    and survives a corrupt or half-written event file: TensorBoard's loader
    logs it and keeps what it could read.

    Args:
        logdir: The log directory.

    Returns:
        A data provider over the loaded runs.

    Raises:
        FileNotFoundError: When ``logdir`` is not a directory.
    """
    path = os.fspath(logdir)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"log directory not found: {path}")
    multiplexer = event_multiplexer()
    multiplexer.AddRunsFromDirectory(path)
    multiplexer.Reload()
    return tb_data_provider.MultiplexerDataProvider(multiplexer, path)

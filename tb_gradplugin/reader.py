"""Reads a run's gradient-health series out of a TensorBoard data provider.

Shared by the plugin (which gets its provider from TensorBoard) and the CLI
(which builds one over TensorBoard's own event loading with
:func:`provider_for_logdir`). Imports no TensorFlow.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import logging
import operator
import os
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, NamedTuple

import grpc
import numpy as np
from tensorboard import context as tb_context
from tensorboard import errors
from tensorboard.backend.event_processing import data_provider as tb_data_provider
from tensorboard.backend.event_processing import plugin_event_multiplexer
from tensorboard.compat.proto import types_pb2
from tensorboard.data import grpc_provider, server_ingester
from tensorboard.data import provider as tb_provider
from tensorboard.data.proto import data_provider_pb2
from tensorboard.util import tensor_util

from tb_gradplugin import metadata

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


def _key(tag: str) -> str | None:
    if not tag.startswith(metadata.TAG_PREFIX):
        return None
    return tag[len(metadata.TAG_PREFIX) :]


def _content(ts) -> dict:
    try:
        return metadata.parse_plugin_content(ts.plugin_content)
    except ValueError as err:
        logger.warning("ignoring the content of a series: %s", err)
        return {}


def _stack(rows: list[np.ndarray]) -> np.ndarray:
    width = max((r.size for r in rows), default=0)
    out = np.full((len(rows), width), np.nan, dtype=np.float64)
    for i, r in enumerate(rows):
        flat = np.asarray(r, dtype=np.float64).reshape(-1)
        out[i, : flat.size] = flat
    return out


def _tensor_matrix(protos) -> np.ndarray:
    """Stacks float32 ``TensorProto``s of one shape without a numpy call per proto.

    A tag's dtype is fixed by its writer, so the first proto's dtype stands for
    all; any other encoding goes through TensorBoard's ``make_ndarray`` per proto.
    """
    contents = list(map(operator.attrgetter("tensor_content"), protos))
    if (
        contents
        and contents[0]
        and protos[0].dtype == types_pb2.DT_FLOAT
        and len(set(map(len, contents))) == 1
    ):
        flat = np.frombuffer(b"".join(contents), dtype=np.float32)
        return flat.reshape(len(contents), -1).astype(np.float64)
    return _stack([tensor_util.make_ndarray(p) for p in protos])


Points = tuple[np.ndarray, np.ndarray, np.ndarray]
"""``(steps, wall_times, values)`` of one series."""


def _read_points_grpc(
    provider, kind: str, experiment_id: str, run: str, tags, downsample: int
) -> dict[str, Points] | None:
    """Reads one run's series from TensorBoard's Rust data server, decoded by numpy.

    ``GrpcDataProvider.read_*`` builds one Python object per point (and calls
    ``make_ndarray`` per tensor): 100,000 steps of a 100-variable tensor took
    seconds there. The wire format holds steps, wall times and scalar values as
    packed arrays, which numpy takes in one call each. Tensors are asked for one
    tag per call, as such a tag alone is ~42 MB of the 256 MB a TensorBoard gRPC
    answer may hold. ``None`` when the provider is not a gRPC one or a call
    fails (the caller then uses the public API, which also turns gRPC errors
    into TensorBoard's).
    """
    stub = getattr(provider, "_stub", None)
    if not isinstance(provider, grpc_provider.GrpcDataProvider) or stub is None:
        return None
    if kind == "scalar":
        new_request, call = data_provider_pb2.ReadScalarsRequest, stub.ReadScalars
        groups = [sorted(tags)]
    else:
        new_request, call = data_provider_pb2.ReadTensorsRequest, stub.ReadTensors
        groups = [[tag] for tag in sorted(tags)]
    out: dict[str, Points] = {}
    for group in groups:
        req = new_request()
        req.experiment_id = experiment_id
        req.plugin_filter.plugin_name = metadata.PLUGIN_NAME
        req.run_tag_filter.runs.names[:] = [run]
        req.run_tag_filter.tags.names[:] = group
        req.downsample.num_points = downsample
        try:
            res = call(req)
        except grpc.RpcError:
            return None
        for run_entry in res.runs:
            for tag_entry in run_entry.tags:
                d = tag_entry.data
                values = (
                    np.array(d.value, dtype=np.float64)
                    if kind == "scalar"
                    else _tensor_matrix(d.value)
                )
                out[tag_entry.tag_name] = (
                    np.array(d.step, dtype=np.int64),
                    np.array(d.wall_time, dtype=np.float64),
                    values,
                )
    return out


def _read_points(
    provider, ctx, kind: str, experiment_id: str, run: str, tags, downsample: int
) -> dict[str, Points]:
    """Reads some series of one kind of a run as arrays, by tag."""
    fast = _read_points_grpc(provider, kind, experiment_id, run, tags, downsample)
    if fast is not None:
        return fast
    read = provider.read_scalars if kind == "scalar" else provider.read_tensors
    points = read(
        ctx,
        experiment_id=experiment_id,
        plugin_name=metadata.PLUGIN_NAME,
        downsample=downsample,
        run_tag_filter=tb_provider.RunTagFilter(runs=[run], tags=tags),
    )
    out: dict[str, Points] = {}
    for tag, datums in points.get(run, {}).items():
        if kind == "scalar":
            values = np.array([d.value for d in datums], dtype=np.float64)
        else:
            values = _stack([d.numpy for d in datums])
        out[tag] = (
            np.array([d.step for d in datums], dtype=np.int64),
            np.array([d.wall_time for d in datums], dtype=np.float64),
            values,
        )
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


def read_run(
    provider: tb_provider.DataProvider,
    run: str,
    ctx=None,
    *,
    experiment_id: str = "",
    downsample: int = ALL_POINTS,
    keys: Iterable[str] | None = None,
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

    Returns:
        The run's series; empty when the run has none.
    """
    ctx = ctx or tb_context.RequestContext()
    wanted = None if keys is None else {metadata.TAG_PREFIX + k for k in keys}
    filt = tb_provider.RunTagFilter(runs=[run], tags=wanted)
    data = RunData(run=run)
    kw = dict(experiment_id=experiment_id, plugin_name=metadata.PLUGIN_NAME)
    kinds = (
        ("scalar", provider.list_scalars, data.scalars),
        ("tensor", provider.list_tensors, data.tensors),
    )
    for kind, list_fn, target in kinds:
        meta = list_fn(ctx, run_tag_filter=filt, **kw).get(run, {})
        if not meta:
            continue
        points = _read_points(
            provider, ctx, kind, experiment_id, run, set(meta), downsample
        )
        for tag, (steps, wall_times, values) in points.items():
            key = _key(tag)
            if key is None or tag not in meta:
                continue
            target[key] = Series(
                steps=steps,
                values=values,
                wall_times=wall_times,
                content=_content(meta[tag]),
            )
    return data


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
    multiplexer = plugin_event_multiplexer.EventMultiplexer(
        tensor_size_guidance={metadata.PLUGIN_NAME: 0},
        max_reload_threads=1,
    )
    multiplexer.AddRunsFromDirectory(path)
    multiplexer.Reload()
    return tb_data_provider.MultiplexerDataProvider(multiplexer, path)


# --------------------------------------------------------------------------
# Cached, versioned reading for a server that answers many requests.

LISTING_TTL_S = 1.0
"""Seconds a run's tag listing is reused. A listing costs 13–40 ms on the Rust
data server (measured, TensorBoard 2.21) and the data changes at most every
``--reload_interval`` (5 s by default), so the requests of one view share one."""

CACHE_ENTRIES = 256
"""Entries the reader's cache keeps: series (at most a few MB each for 100,000
steps), tag listings and the payloads derived from them."""

# Families written as per-variable tensors (docs/INTERFACES.md); the rest are
# scalars. Listing a named tag needs its kind.
_TENSOR_PREFIXES = (
    "layer/",
    "window_layer/",
    "hessian_layer/",
    "trajectory/",
    "block/",
)


def kind_of(key: str) -> str:
    """Says whether a key is written as a ``"scalar"`` or a ``"tensor"``.

    Args:
        key: A tag without the prefix, e.g. ``"layer/grad_norm"``.

    Returns:
        ``"tensor"`` for the per-variable families, else ``"scalar"``.
    """
    return "tensor" if key.startswith(_TENSOR_PREFIXES) else "scalar"


class TagVersion(NamedTuple):
    """What a listing says about one series, without reading it.

    Attributes:
        kind: ``"scalar"`` or ``"tensor"``.
        max_step: The largest step stored.
        max_wall_time: The largest wall time stored.
        content: The raw ``PluginData.content`` bytes.
    """

    kind: str
    max_step: int
    max_wall_time: float
    content: bytes


class UnavailableError(errors.PublicError):
    """TensorBoard gave the plugin no data provider (answered 503)."""

    http_code = 503


class LRUCache:
    """A thread-safe mapping that forgets its least recently used entries.

    Args:
        capacity: The most entries kept. Defaults to :data:`CACHE_ENTRIES`.
    """

    def __init__(self, capacity: int = CACHE_ENTRIES):
        self._capacity = capacity
        self._entries: collections.OrderedDict = collections.OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: tuple) -> Any:
        """Returns the value under ``key`` (marking it recent), or ``None``."""
        with self._lock:
            value = self._entries.get(key)
            if value is not None:
                self._entries.move_to_end(key)
            return value

    def put(self, key: tuple, value: Any) -> None:
        """Stores ``value`` under ``key``, evicting the oldest entries over capacity."""
        with self._lock:
            self._entries[key] = value
            self._entries.move_to_end(key)
            while len(self._entries) > self._capacity:
                self._entries.popitem(last=False)

    def memo(self, key: tuple, compute: Callable[[], Any]) -> Any:
        """Returns the value under ``key``, computing and storing it when absent.

        Args:
            key: A hashable key that holds every input of ``compute`` (for data,
                the versions of the series it reads).
            compute: Makes the value; it must not return ``None``.

        Returns:
            The cached or new value.
        """
        value = self.get(key)
        if value is None:
            value = compute()
            self.put(key, value)
        return value


class CachedReader:
    """Reads a provider's runs for many requests, with one versioned cache.

    A series is cached under its run, key, last step and last wall time, so it
    is read again only when it grew; a run's tag listing is reused for
    :data:`LISTING_TTL_S`. Payloads derived from series share the same cache
    through :meth:`memo`, keyed by the versions they were made from.

    Args:
        provider: A TensorBoard data provider, or ``None`` when TensorBoard gave
            none (every read then raises :class:`UnavailableError`).
        capacity: Entries the cache keeps. Defaults to :data:`CACHE_ENTRIES`.
    """

    def __init__(
        self, provider: tb_provider.DataProvider | None, capacity: int = CACHE_ENTRIES
    ):
        self._provider = provider
        self._cache = LRUCache(capacity)

    @property
    def provider(self) -> tb_provider.DataProvider:
        """The data provider.

        Raises:
            UnavailableError: When there is none.
        """
        if self._provider is None:
            raise UnavailableError("TensorBoard gave this plugin no data provider")
        return self._provider

    def memo(self, key: tuple, compute: Callable[[], Any]) -> Any:
        """Caches a value derived from series; see :meth:`LRUCache.memo`."""
        return self._cache.memo(key, compute)

    def list_runs(self, ctx, eid: str) -> list[str]:
        """Lists the runs with gradient-health data (:func:`list_runs`)."""
        return list_runs(self.provider, ctx, experiment_id=eid)

    def _listing(self, key: tuple, list_now: Callable[[], Any]) -> Any:
        now = time.monotonic()
        hit = self._cache.get(key)
        if hit is not None and now - hit[0] < LISTING_TTL_S:
            return hit[1]
        value = list_now()
        self._cache.put(key, (now, value))
        return value

    def tag_versions(
        self, ctx, eid: str, run: str, keys: Iterable[str] | None = None
    ) -> dict[str, TagVersion]:
        """Lists a run's series without reading them.

        Measured on the Rust data server (TensorBoard 2.21): a listing of one
        named scalar tag answers in ~1 ms, of all scalar tags of a run in
        ~40 ms, and any listing of tensor tags in ~45 ms however many it names.
        So a few named scalar tags are listed one by one, and the tensor tags
        of a run in one listing that every view shares.

        Args:
            ctx: The request context.
            eid: The experiment.
            run: The run.
            keys: Only these keys. Defaults to ``None``: all of them.

        Returns:
            Key -> :class:`TagVersion`; empty for an unknown run.
        """
        keys = None if keys is None else tuple(keys)
        scalars = None if keys is None else [k for k in keys if kind_of(k) == "scalar"]
        out: dict[str, TagVersion] = {}
        if keys is None or len(scalars) > 16:
            out.update(self._kind_listing(ctx, eid, run, "scalar"))
        else:
            for key in scalars:
                out.update(self._kind_listing(ctx, eid, run, "scalar", key))
        if keys is None or len(scalars) < len(keys):
            out.update(self._kind_listing(ctx, eid, run, "tensor"))
        return out if keys is None else {k: out[k] for k in keys if k in out}

    def _kind_listing(
        self, ctx, eid: str, run: str, kind: str, key: str | None = None
    ) -> dict[str, TagVersion]:
        """One listing of a run's tags of one kind (one tag when ``key`` is given)."""
        list_tags = {
            "scalar": self.provider.list_scalars,
            "tensor": self.provider.list_tensors,
        }[kind]
        tags = None if key is None else [metadata.TAG_PREFIX + key]

        def list_now():
            found = list_tags(
                ctx,
                experiment_id=eid,
                plugin_name=metadata.PLUGIN_NAME,
                run_tag_filter=tb_provider.RunTagFilter(runs=[run], tags=tags),
            ).get(run, {})
            return _versions_of(kind, found)

        return self._listing(("versions", eid, run, kind, key), list_now)

    def known_run(
        self, ctx, eid: str, run: str, keys: Iterable[str] | None = None
    ) -> dict[str, TagVersion]:
        """Like :meth:`tag_versions`, for a run that must exist.

        Returns:
            Key -> :class:`TagVersion`; empty when the run exists but holds none
            of ``keys``.

        Raises:
            tensorboard.errors.NotFoundError: When the run has no
                gradient-health data.
        """
        versions = self.tag_versions(ctx, eid, run, keys)
        if not versions and keys is not None and self.tag_versions(ctx, eid, run):
            return {}  # the run exists, the keys do not
        if not versions:
            raise errors.NotFoundError(f"unknown run: {run[:200]!r}")
        return versions

    def scalar_versions_of_runs(
        self, ctx, eid: str, runs: list[str]
    ) -> dict[str, dict[str, TagVersion]]:
        """Lists the scalar series of several runs in one listing.

        Args:
            ctx: The request context.
            eid: The experiment.
            runs: The runs.

        Returns:
            Run -> key -> :class:`TagVersion`.

        Raises:
            tensorboard.errors.NotFoundError: When a run has no gradient-health
                data.
        """

        def list_now():
            found = self.provider.list_scalars(
                ctx,
                experiment_id=eid,
                plugin_name=metadata.PLUGIN_NAME,
                run_tag_filter=tb_provider.RunTagFilter(runs=runs),
            )
            return {run: _versions_of("scalar", found.get(run, {})) for run in runs}

        out = self._listing(("scalar_versions", eid, tuple(runs)), list_now)
        for run, versions in out.items():
            if not versions:
                self.known_run(ctx, eid, run)  # a 404 unless it has tensors only
        return out

    def read_series(
        self,
        ctx,
        eid: str,
        run: str,
        keys: Iterable[str],
        versions: dict[str, TagVersion],
    ) -> dict[str, Series]:
        """Reads every point of some series of a run, through the cache.

        Args:
            ctx: The request context.
            eid: The experiment.
            run: The run.
            keys: The keys to read; those absent from ``versions`` are skipped.
            versions: The run's listing from :meth:`tag_versions`.

        Returns:
            The series found, by key.
        """
        found: dict[str, Series] = {}
        missing: list[str] = []
        for key in keys:
            if key not in versions:
                continue
            hit = self._cache.get(_series_key(eid, run, key, versions[key]))
            if hit is None:
                missing.append(key)
            else:
                found[key] = hit
        if missing:
            data = read_run(self.provider, run, ctx, experiment_id=eid, keys=missing)
            for key in missing:
                series = data.scalars.get(key) or data.tensors.get(key)
                if series is not None:
                    found[key] = series
                    self._cache.put(_series_key(eid, run, key, versions[key]), series)
        return found

    def read_run_data(
        self, ctx, eid: str, run: str, versions: dict[str, TagVersion] | None = None
    ) -> RunData:
        """Reads all of a run's series (for the diagnosis), through the cache.

        Args:
            ctx: The request context.
            eid: The experiment.
            run: The run.
            versions: The run's listing when already made. Defaults to
                ``None``: list it.

        Returns:
            The run's data.

        Raises:
            tensorboard.errors.NotFoundError: When the run has no
                gradient-health data.
        """
        if versions is None:
            versions = self.known_run(ctx, eid, run)
        data = RunData(run=run)
        for key, s in self.read_series(ctx, eid, run, versions, versions).items():
            target = data.scalars if versions[key].kind == "scalar" else data.tensors
            target[key] = s
        return data


def version_stamp(versions: dict[str, TagVersion]) -> tuple:
    """A hashable summary of listed series that changes whenever one grows.

    Args:
        versions: A listing from :meth:`CachedReader.tag_versions`.

    Returns:
        Sorted ``(key, max_step, max_wall_time)`` triples.
    """
    return tuple(sorted((k, v.max_step, v.max_wall_time) for k, v in versions.items()))


def _series_key(eid: str, run: str, key: str, version: TagVersion) -> tuple:
    return ("series", eid, run, key, version.max_step, version.max_wall_time)


def _versions_of(kind: str, found: dict) -> dict[str, TagVersion]:
    out = {}
    for tag, ts in found.items():
        key = _key(tag)
        if key is not None:
            out[key] = TagVersion(
                kind, ts.max_step, ts.max_wall_time, ts.plugin_content
            )
    return out


# --------------------------------------------------------------------------
# A one-shot Rust data server, for reading a whole log directory quickly.

DATA_SERVER_LOADED = "Finished load cycle"
"""The line the data server logs (with ``-v``) when a load cycle is done."""


@contextlib.contextmanager
def data_server_provider(
    logdir: str | os.PathLike, timeout_s: float = 3600.0
) -> Iterator[tb_provider.DataProvider]:
    """Loads a log directory once with TensorBoard's Rust data server.

    The ``tensorboard-data-server`` package ships the server that
    ``tensorboard --load_fast=true`` runs. It reads event files several times
    faster than TensorBoard's Python loader (:func:`provider_for_logdir`), and
    :func:`read_run` decodes its answers with numpy. The server loads the
    directory once (``--reload=once``), keeps every point, and is stopped when
    the block exits.

    Args:
        logdir: The log directory.
        timeout_s: Most seconds to wait for the load. Defaults to 3600.

    Yields:
        A data provider over the loaded runs.

    Raises:
        FileNotFoundError: When ``logdir`` is not a directory.
        tensorboard.data.server_ingester.NoDataServerError: When no data server
            binary is installed.
        TimeoutError: When the server does not finish loading in time.
        OSError: When the server exits before it finished loading.
    """
    path = os.fspath(logdir)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"log directory not found: {path}")
    binary = server_ingester.get_server_binary()
    with tempfile.TemporaryDirectory(prefix="gradient_health_") as tmp:
        port_file = os.path.join(tmp, "port")
        proc = subprocess.Popen(
            [
                binary.path,
                f"--logdir={path}",
                "--reload=once",
                "--samples-per-plugin=gradient_health=all",
                "--host=localhost",
                "--port=0",
                f"--port-file={port_file}",
                "--die-after-stdin",
                "--verbose",
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            _wait_loaded(proc, timeout_s)
            with open(port_file) as f:
                addr = f"localhost:{int(f.read())}"
            channel = grpc.insecure_channel(
                addr, options=[("grpc.max_receive_message_length", 256 << 20)]
            )
            with channel:
                yield grpc_provider.GrpcDataProvider(
                    addr, grpc_provider.make_stub(channel)
                )
        finally:
            proc.stdin.close()  # --die-after-stdin: the server exits
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            proc.stderr.close()


def _wait_loaded(proc: subprocess.Popen, timeout_s: float) -> None:
    """Reads the server's log until its load cycle is done."""
    done = threading.Event()
    lines: list[str] = []

    def watch():
        for line in proc.stderr:
            lines.append(line)
            if DATA_SERVER_LOADED in line:
                done.set()
                break
        done.set()

    threading.Thread(target=watch, daemon=True).start()
    if not done.wait(timeout_s):
        raise TimeoutError(f"the data server did not load in {timeout_s:.0f} s")
    if not any(DATA_SERVER_LOADED in line for line in lines):
        tail = "".join(lines[-3:]).strip()
        raise OSError(f"the data server stopped before loading: {tail[-300:]}")

"""Cached, versioned reading of runs, for a server that answers many requests.

:class:`CachedReader` keeps one least-recently-used cache (:class:`LRUCache`) of
tag listings, series and the payloads derived from them. A series is cached under
its last step and wall time, so it is read again only when it grew; derived
payloads are keyed by the versions of what they read (:func:`version_stamp`).
Imports no TensorFlow.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, NamedTuple

from tensorboard import errors
from tensorboard.data import provider as tb_provider

from tb_gradplugin import metadata
from tb_gradplugin.metadata import tag_key
from tb_gradplugin.reader import RunData, Series, list_runs, read_run, read_runs

LISTING_TTL_S = 5.0
"""Seconds a run's tag listing is reused. A listing costs 13-110 ms on the Rust
data server (measured, TensorBoard 2.21, 2-core machine) and the data changes at
most every ``--reload_interval`` (5 s by default). The background refresh of the
views a user looks at lists their runs afresh at each pass, every 2 s or more
(:func:`fresh_listings`), so their requests find a listing and list nothing."""

_FRESH = threading.local()


@contextlib.contextmanager
def fresh_listings() -> Iterator[None]:
    """Within the block, this thread reuses no listing made before it began.

    Yields:
        Nothing; a listing is made at most once per run and kind in the block.
    """
    _FRESH.after = time.monotonic()
    try:
        yield
    finally:
        _FRESH.after = None


def listing_is_fresh(listed_at: float, now: float) -> bool:
    """Whether a listing made at ``listed_at`` (``time.monotonic``) may be reused.

    Args:
        listed_at: When the listing was made.
        now: The time now.

    Returns:
        True within :data:`LISTING_TTL_S`, unless this thread is in a
        :func:`fresh_listings` block that began after it.
    """
    after = getattr(_FRESH, "after", None)
    if after is not None and listed_at < after:
        return False
    return now - listed_at < LISTING_TTL_S


CACHE_ENTRIES = 8192
"""Entries the reader's cache keeps: series, tag listings and the payloads
derived from them (the health table of 200 runs holds ~20 series a run)."""

CACHE_BYTES = 512 * 2**20
"""Bytes of series the reader's cache keeps: a scalar series of 100,000 steps is
2.4 MB (step, wall time and value a point), a 100-variable tensor ~100 MB."""


def kind_of(key: str) -> str:
    """Says whether a key is written as a ``"scalar"`` or a ``"tensor"``.

    Args:
        key: A tag without the prefix, e.g. ``"layer/grad_norm"``.

    Returns:
        ``"tensor"`` for the per-variable families, else ``"scalar"``.
    """
    return "tensor" if metadata.is_tensor_key(key) else "scalar"


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
        max_bytes: The most bytes of series (their arrays) kept; other
            values count as none. Defaults to :data:`CACHE_BYTES`.
    """

    def __init__(self, capacity: int = CACHE_ENTRIES, max_bytes: int = CACHE_BYTES):
        self._capacity = capacity
        self._max_bytes = max_bytes
        self._entries: collections.OrderedDict = collections.OrderedDict()
        self._sizes: dict[tuple, int] = {}
        self._bytes = 0
        self._pending: dict[tuple, concurrent.futures.Future] = {}
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
        size = _nbytes(value)
        with self._lock:
            self._bytes += size - self._sizes.get(key, 0)
            self._entries[key] = value
            self._sizes[key] = size
            self._entries.move_to_end(key)
            while len(self._entries) > 1 and (
                len(self._entries) > self._capacity or self._bytes > self._max_bytes
            ):
                old, _ = self._entries.popitem(last=False)
                self._bytes -= self._sizes.pop(old)

    def memo(self, key: tuple, compute: Callable[[], Any]) -> Any:
        """Returns the value under ``key``, computing and storing it when absent.

        Args:
            key: A hashable key that holds every input of ``compute`` (for data,
                the versions of the series it reads).
            compute: Makes the value; it must not return ``None``. A call for
                a key that another thread is computing waits for that
                computation instead of repeating it.

        Returns:
            The cached or new value.

        Raises:
            Exception: What ``compute`` raised (in every caller waiting for it).
        """
        with self._lock:
            value = self._entries.get(key)
            if value is not None:
                self._entries.move_to_end(key)
                return value
            pending = self._pending.get(key)
            owner = pending is None
            if owner:
                pending = self._pending[key] = concurrent.futures.Future()
        if not owner:
            # Another thread computes this key now (a background refresh, a
            # second view's request): wait for its value, or its error.
            return pending.result()
        try:
            value = compute()
        except BaseException as err:
            pending.set_exception(err)
            raise
        else:
            self.put(key, value)
            pending.set_result(value)
        finally:
            with self._lock:
                del self._pending[key]
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

    @property
    def provider_or_none(self) -> tb_provider.DataProvider | None:
        """The data provider, or ``None`` when TensorBoard gave none."""
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
        if hit is not None and listing_is_fresh(hit[0], now):
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
        tags = None if key is None else [metadata.TAG_PREFIX + key]

        def list_now():
            found = self._list_tags(ctx, eid, kind, [run], tags).get(run, {})
            return _versions_of(kind, found)

        return self._listing(("versions", eid, run, kind, key), list_now)

    def _list_tags(
        self, ctx, eid: str, kind: str, runs: list[str] | None, tags=None
    ) -> dict:
        """The provider's listing of this plugin's tags of one kind (uncached).

        Returns:
            Run -> tag -> the provider's time series of that kind.
        """
        list_tags = {
            "scalar": self.provider.list_scalars,
            "tensor": self.provider.list_tensors,
        }[kind]
        return list_tags(
            ctx,
            experiment_id=eid,
            plugin_name=metadata.PLUGIN_NAME,
            run_tag_filter=tb_provider.RunTagFilter(runs=runs, tags=tags),
        )

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

    def versions_of_runs(
        self, ctx, eid: str, runs: list[str] | None = None
    ) -> dict[str, dict[str, TagVersion]]:
        """Lists the series of several runs in one listing per kind.

        Cached as a run's listing is (:data:`LISTING_TTL_S`,
        :func:`fresh_listings`): a listing of 200 runs costs ~0.1 s.

        Args:
            ctx: The request context.
            eid: The experiment.
            runs: The runs. Defaults to ``None``: every run.

        Returns:
            Run -> key -> :class:`TagVersion`, for the runs that hold
            gradient-health data.
        """

        def list_now():
            out: dict[str, dict[str, TagVersion]] = {}
            for kind in ("scalar", "tensor"):
                for run, tags in self._list_tags(ctx, eid, kind, runs).items():
                    if versions := _versions_of(kind, tags):
                        out.setdefault(run, {}).update(versions)
            return out

        key = ("versions_of_runs", eid, None if runs is None else tuple(runs))
        return self._listing(key, list_now)

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
            found = self._list_tags(ctx, eid, "scalar", runs)
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
            listed = {k: (versions[k].kind, versions[k].content) for k in missing}
            data = read_run(self.provider, run, ctx, experiment_id=eid, listed=listed)
            for key in missing:
                series = data.scalars.get(key) or data.tensors.get(key)
                if series is not None:
                    found[key] = series
                    self._cache.put(_series_key(eid, run, key, versions[key]), series)
        return found

    def prefetch(self, ctx, eid: str, wanted: dict[str, dict[str, TagVersion]]) -> None:
        """Reads the series of several runs not yet cached, one call per kind.

        For the small series of many runs (scalars, block summaries), before
        each run's own reads, which then come from the cache
        (:func:`tb_gradplugin.reader.read_runs`).

        Args:
            ctx: The request context.
            eid: The experiment.
            wanted: Run -> key -> :class:`TagVersion` of the series to read.
        """
        missing = {
            run: {
                key: (version.kind, version.content)
                for key, version in versions.items()
                if self._cache.get(_series_key(eid, run, key, version)) is None
            }
            for run, versions in wanted.items()
        }
        missing = {run: keys for run, keys in missing.items() if keys}
        if not missing:
            return
        found = read_runs(self.provider, missing, ctx, experiment_id=eid)
        for run, data in found.items():
            for key, series in (*data.scalars.items(), *data.tensors.items()):
                self._cache.put(_series_key(eid, run, key, wanted[run][key]), series)

    def read_run_data(
        self, ctx, eid: str, run: str, versions: dict[str, TagVersion] | None = None
    ) -> RunData:
        """Reads the listed series of a run, through the cache.

        Args:
            ctx: The request context.
            eid: The experiment.
            run: The run.
            versions: The series to read: the run's listing, or the part of it
                a caller needs (the diagnosis: ``diagnosis.SERIES_KEYS``).
                Defaults to ``None``: list the run and read every series.

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


def _nbytes(value: Any) -> int:
    """The bytes of a series' arrays; 0 for any other value."""
    if isinstance(value, Series):
        return int(value.steps.nbytes + value.values.nbytes + value.wall_times.nbytes)
    return 0


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
        key = tag_key(tag)
        if key is not None:
            out[key] = TagVersion(
                kind, ts.max_step, ts.max_wall_time, ts.plugin_content
            )
    return out

"""Tests of tb_gradplugin.cached_reader: one versioned cache over real event files."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from tensorboard import context as tb_context
from tensorboard import errors
from tensorboard.backend.event_processing import data_provider as tb_data_provider
from tensorboard.backend.event_processing import plugin_event_multiplexer

from tb_gradplugin import cached_reader, metadata, reader
from tests import eventfiles


def _live_provider(logdir):
    """A provider whose multiplexer the test reloads after writing more steps."""
    multiplexer = plugin_event_multiplexer.EventMultiplexer(
        tensor_size_guidance={metadata.PLUGIN_NAME: 0}
    )
    multiplexer.AddRunsFromDirectory(str(logdir))
    multiplexer.Reload()
    return multiplexer, tb_data_provider.MultiplexerDataProvider(
        multiplexer, str(logdir)
    )


def _ten_step_run(tmp_path):
    """Run ``r`` of 10 steps: (its multiplexer, a CachedReader over it, a context)."""
    eventfiles.write_run(tmp_path, "r", steps=np.arange(1, 11), loss=np.ones(10))
    multiplexer, provider = _live_provider(tmp_path)
    cached = cached_reader.CachedReader(provider)
    return multiplexer, cached, tb_context.RequestContext()


def test_cached_reader_rereads_a_series_only_when_it_grows(tmp_path, monkeypatch):
    """A series comes from the cache until its last step changes, then is re-read."""
    monkeypatch.setattr(cached_reader, "LISTING_TTL_S", 0.0)
    multiplexer, cached, ctx = _ten_step_run(tmp_path)
    versions = cached.known_run(ctx, "", "r", keys=["step/loss"])
    first = cached.read_series(ctx, "", "r", ["step/loss"], versions)["step/loss"]
    again = cached.read_series(ctx, "", "r", ["step/loss"], versions)["step/loss"]
    assert again is first and len(first) == 10
    eventfiles.write_run(
        tmp_path, "r", steps=np.arange(11, 16), loss=np.ones(5), filename_suffix=".b"
    )
    multiplexer.Reload()
    versions = cached.known_run(ctx, "", "r", keys=["step/loss"])
    assert versions["step/loss"].max_step == 15
    grown = cached.read_series(ctx, "", "r", ["step/loss"], versions)["step/loss"]
    assert grown is not first and grown.steps.tolist() == list(range(1, 16))


def test_known_run_tells_unknown_run_from_unknown_key(tmp_path):
    """An unknown run raises NotFoundError; a known run without the key is empty."""
    eventfiles.write_run(tmp_path, "r", steps=[1, 2], loss=[1.0, 0.5])
    cached = cached_reader.CachedReader(reader.provider_for_logdir(tmp_path))
    ctx = tb_context.RequestContext()
    assert cached.known_run(ctx, "", "r", keys=["step/nope"]) == {}
    assert cached.known_run(ctx, "", "r")["step/loss"].kind == "scalar"
    with pytest.raises(errors.NotFoundError):
        cached.known_run(ctx, "", "nope")
    with pytest.raises(cached_reader.UnavailableError):
        cached_reader.CachedReader(None).list_runs(ctx, "")


def test_read_run_data_sorts_series_by_kind(tmp_path):
    """read_run_data puts scalars and tensors where RunData expects them."""
    eventfiles.write_run(
        tmp_path,
        "r",
        steps=[1, 2],
        loss=[1.0, 0.5],
        variables=["w"],
        layers={"grad_norm": np.ones((2, 1))},
    )
    cached = cached_reader.CachedReader(reader.provider_for_logdir(tmp_path))
    data = cached.read_run_data(tb_context.RequestContext(), "", "r")
    assert "step/loss" in data.scalars and "layer/grad_norm" in data.tensors
    assert data.last_step == 2


def test_lru_cache_forgets_the_least_recently_used():
    """Over capacity the entry read longest ago goes; memo computes once."""
    cache = cached_reader.LRUCache(2)
    cache.put(("a",), 1)
    cache.put(("b",), 2)
    assert cache.get(("a",)) == 1
    cache.put(("c",), 3)
    assert cache.get(("b",)) is None and len(cache) == 2
    calls = []
    assert cache.memo(("d",), lambda: calls.append(1) or 4) == 4
    assert cache.memo(("d",), lambda: calls.append(1) or 5) == 4
    assert calls == [1]


def test_version_stamp_changes_when_a_series_grows():
    """The stamp differs as soon as one series has a new last step."""
    before = {"step/loss": cached_reader.TagVersion("scalar", 10, 1.0, b"")}
    after = {"step/loss": cached_reader.TagVersion("scalar", 11, 1.0, b"")}
    assert cached_reader.version_stamp(before) != cached_reader.version_stamp(after)
    assert cached_reader.kind_of("layer/grad_norm") == "tensor"
    assert cached_reader.kind_of("step/loss") == "scalar"


def test_memo_computes_a_key_once_for_concurrent_callers():
    """A caller that asks for a key being computed waits and gets the same value."""
    cache = cached_reader.LRUCache()
    started, release = threading.Event(), threading.Event()
    calls = []

    def slow():
        calls.append(1)
        started.set()
        release.wait(10.0)
        return {"value": len(calls)}

    results = []
    first = threading.Thread(target=lambda: results.append(cache.memo(("k",), slow)))
    first.start()
    assert started.wait(10.0)
    second = threading.Thread(target=lambda: results.append(cache.memo(("k",), slow)))
    second.start()
    time.sleep(0.05)  # the second caller is waiting on the first's computation
    release.set()
    first.join(10.0)
    second.join(10.0)
    assert len(calls) == 1 and results[0] is results[1]


def test_memo_hands_the_error_to_every_waiting_caller_and_caches_nothing():
    """A failed computation raises in the waiting caller too; the next one retries."""
    cache = cached_reader.LRUCache()
    started, release = threading.Event(), threading.Event()

    def failing():
        started.set()
        release.wait(10.0)
        raise errors.NotFoundError("gone")

    outcome = []

    def call():
        try:
            cache.memo(("k",), failing)
        except errors.NotFoundError as err:
            outcome.append(str(err))

    first = threading.Thread(target=call)
    first.start()
    assert started.wait(10.0)
    second = threading.Thread(target=call)
    second.start()
    time.sleep(0.05)
    release.set()
    first.join(10.0)
    second.join(10.0)
    assert len(outcome) == 2
    assert cache.memo(("k",), lambda: "again") == "again"


class _CountingProvider:
    """A real provider whose read calls are counted (everything else delegated)."""

    def __init__(self, provider):
        self._provider = provider
        self.reads = 0

    def __getattr__(self, name):
        return getattr(self._provider, name)

    def read_scalars(self, *args, **kwargs):
        self.reads += 1
        return self._provider.read_scalars(*args, **kwargs)

    def read_tensors(self, *args, **kwargs):
        self.reads += 1
        return self._provider.read_tensors(*args, **kwargs)


def test_prefetch_reads_many_runs_in_one_call_and_later_reads_hit_the_cache(tmp_path):
    """After prefetch, every run's read_series is the cached series, no new call."""
    for i in range(5):
        eventfiles.write_run(
            tmp_path, f"r{i}", steps=np.arange(1, 21), loss=np.full(20, float(i))
        )
    _, provider = _live_provider(tmp_path)
    counting = _CountingProvider(provider)
    cached = cached_reader.CachedReader(counting)
    ctx = tb_context.RequestContext()
    versions = {f"r{i}": cached.known_run(ctx, "", f"r{i}") for i in range(5)}
    cached.prefetch(ctx, "", versions)
    assert counting.reads == 1  # scalars only: one call for the five runs
    for i in range(5):
        got = cached.read_series(ctx, "", f"r{i}", ["step/loss"], versions[f"r{i}"])
        assert got["step/loss"].values.tolist() == [float(i)] * 20
    assert counting.reads == 1
    cached.prefetch(ctx, "", versions)  # all cached: nothing read
    assert counting.reads == 1


def test_the_cache_keeps_series_within_its_byte_budget():
    """Series past the byte budget evict the oldest entries; payloads weigh none."""
    cache = cached_reader.LRUCache(capacity=100, max_bytes=3 * 24 * 1000)
    for i in range(5):
        n = 1000
        cache.put(
            ("s", i),
            reader.Series(
                steps=np.arange(n),
                values=np.zeros(n),
                wall_times=np.zeros(n),
                content={},
            ),
        )
        cache.put(("payload", i), {"small": i})
    assert [cache.get(("s", i)) is not None for i in range(5)] == [0, 0, 1, 1, 1]
    assert all(cache.get(("payload", i)) == {"small": i} for i in range(2, 5))
    assert len(cache) == 7  # 3 series and the payloads put after the evicted ones


def test_fresh_listings_lists_again_once_within_the_block(tmp_path, monkeypatch):
    """In the block a listing made before it is not reused; one made in it is."""
    monkeypatch.setattr(cached_reader, "LISTING_TTL_S", 600.0)
    multiplexer, cached, ctx = _ten_step_run(tmp_path)
    assert cached.known_run(ctx, "", "r")["step/loss"].max_step == 10
    time.sleep(1.1)  # the next file's name sorts after: TensorBoard reads in order
    eventfiles.write_run(
        tmp_path, "r", steps=np.arange(11, 16), loss=np.ones(5), filename_suffix=".b"
    )
    multiplexer.Reload()
    # Within the TTL the old listing is reused outside the block...
    assert cached.known_run(ctx, "", "r")["step/loss"].max_step == 10
    with cached_reader.fresh_listings():
        assert cached.known_run(ctx, "", "r")["step/loss"].max_step == 15
    # ...and the fresh one serves the requests after it.
    assert cached.known_run(ctx, "", "r")["step/loss"].max_step == 15

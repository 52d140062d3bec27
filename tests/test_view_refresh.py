"""Tests of tb_gradplugin.view_refresh: views kept current while a user looks."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from tensorboard import context as tb_context
from tensorboard import errors
from tensorboard.backend.event_processing import data_provider as tb_data_provider
from tensorboard.backend.event_processing import plugin_event_multiplexer
from tensorboard.plugins import base_plugin
from werkzeug import test as werkzeug_test

from tb_gradplugin import cached_reader, metadata, plugin, view_refresh
from tests import eventfiles


def test_run_once_recomputes_every_watched_view_most_recent_first():
    """A pass calls each watched view's recompute, the latest request first."""
    seen = []
    refresher = view_refresh.ViewRefresher(interval_s=3600.0)
    refresher.watch("a", lambda: seen.append("a"))
    refresher.watch("b", lambda: seen.append("b"))
    refresher.watch("a", lambda: seen.append("a2"))  # asked again: now the latest
    refresher.run_once()
    assert seen == ["a2", "b"]


def test_views_expire_and_the_oldest_go_over_the_cap():
    """A view not asked for within watch_s is dropped; past the cap the oldest go."""
    refresher = view_refresh.ViewRefresher(
        interval_s=3600.0, watch_s=0.05, max_watched=2
    )
    for key in ("a", "b", "c"):
        refresher.watch(key, lambda: None)
    assert refresher.watched() == ["b", "c"]
    time.sleep(0.1)
    assert refresher.watched() == []


def test_a_failing_view_does_not_stop_the_others():
    """An exception in one recompute is logged; the next view is still refreshed."""
    seen = []

    def fail():
        raise RuntimeError("run removed")

    refresher = view_refresh.ViewRefresher(interval_s=3600.0)
    refresher.watch("bad", fail)
    refresher.watch("good", lambda: seen.append("good"))
    refresher.run_once()
    refresher.run_once()
    assert seen == ["good", "good"] and refresher.watched() == ["bad", "good"]


def test_the_thread_refreshes_in_the_background_until_nothing_is_watched():
    """Once a view is watched, the daemon thread recomputes it every interval."""
    calls = []
    done = threading.Event()

    def recompute():
        calls.append(time.monotonic())
        if len(calls) >= 3:
            done.set()

    refresher = view_refresh.ViewRefresher(interval_s=0.01, watch_s=30.0)
    refresher.watch("v", recompute)
    assert done.wait(10.0), f"refreshed {len(calls)} times"
    assert all(b > a for a, b in zip(calls, calls[1:], strict=False))


def _live_plugin(logdir):
    """The plugin over a multiplexer that the test reloads after writing steps."""
    multiplexer = plugin_event_multiplexer.EventMultiplexer(
        tensor_size_guidance={metadata.PLUGIN_NAME: 0}
    )
    multiplexer.AddRunsFromDirectory(str(logdir))
    multiplexer.Reload()
    provider = tb_data_provider.MultiplexerDataProvider(multiplexer, str(logdir))
    context = base_plugin.TBContext(data_provider=provider, logdir=str(logdir))
    return multiplexer, plugin.GradientHealthPlugin(context)


def _get(gh_plugin, route: str, query: str):
    app = gh_plugin.get_plugin_apps()[route]
    return werkzeug_test.Client(app).get(f"{route}?{query}")


def test_a_watched_runs_report_is_ready_before_the_next_request(tmp_path, monkeypatch):
    """A pass lists afresh and computes the report the next request gets."""
    # Requests reuse listings for a long time here: only the pass lists anew.
    monkeypatch.setattr(cached_reader, "LISTING_TTL_S", 600.0)
    steps = np.arange(1, 201)
    eventfiles.write_run(
        tmp_path, "r", steps=steps, loss=np.exp(-steps / 50.0), grad_norm=np.ones(200)
    )
    multiplexer, gh_plugin = _live_plugin(tmp_path)
    first = _get(gh_plugin, "/flags", "run=r")
    assert first.status_code == 200 and first.json["last_step"] == 200

    more = np.arange(201, 301)
    time.sleep(1.1)  # the next file's name sorts after: TensorBoard reads in order
    eventfiles.write_run(
        tmp_path,
        "r",
        steps=more,
        loss=np.full(100, np.nan),  # the run broke: the new report says so
        grad_norm=np.full(100, np.nan),
        filename_suffix=".b",
    )
    multiplexer.Reload()
    assert _get(gh_plugin, "/flags", "run=r").json["last_step"] == 200  # stale
    reader = gh_plugin.data._reader
    with cached_reader.fresh_listings():
        ctx_versions = reader.known_run(tb_context.RequestContext(), "", "r")
    key = ("flags", "", "r", cached_reader.version_stamp(ctx_versions))
    assert reader._cache.get(key) is None
    gh_plugin._refresher.run_once()
    ready = reader._cache.get(key)
    assert ready is not None and ready["last_step"] == 300
    assert "non_finite" in [f["kind"] for f in ready["flags"]]
    second = _get(gh_plugin, "/flags", "run=r")
    assert second.json == ready


def test_a_request_for_an_unknown_run_is_not_watched(tmp_path):
    """A request that fails (TensorBoard answers it 404) is not kept current."""
    eventfiles.write_run(tmp_path, "r", steps=np.arange(1, 11), loss=np.ones(10))
    _, gh_plugin = _live_plugin(tmp_path)
    with pytest.raises(errors.NotFoundError):
        _get(gh_plugin, "/flags", "run=nope")
    assert gh_plugin._refresher.watched() == []
    assert _get(gh_plugin, "/flags", "run=r").status_code == 200
    assert gh_plugin._refresher.watched() == [("", "flags", "r")]


def test_the_health_table_is_kept_current_too(tmp_path, monkeypatch):
    """A pass after a run grew recomputes the health table's row of that run."""
    monkeypatch.setattr(cached_reader, "LISTING_TTL_S", 600.0)
    steps = np.arange(1, 101)
    for run in ("a", "b"):
        eventfiles.write_run(tmp_path, run, steps=steps, loss=np.ones(100))
    multiplexer, gh_plugin = _live_plugin(tmp_path)
    first = _get(gh_plugin, "/health", "").json
    assert [row["last_step"] for row in first["runs"]] == [100, 100]
    time.sleep(1.1)  # the next file's name sorts after: TensorBoard reads in order
    eventfiles.write_run(
        tmp_path, "b", steps=np.arange(101, 151), loss=np.ones(50), filename_suffix=".b"
    )
    multiplexer.Reload()
    table = gh_plugin.data._health
    with cached_reader.fresh_listings():
        b_versions = table.versions(tb_context.RequestContext(), "", ["b"])["b"]
    stamp = tuple(sorted((k, v[1], v[2]) for k, v in b_versions.items()))
    assert table._rows.get(("", "b", stamp)) is None
    gh_plugin._refresher.run_once()
    assert table._rows.get(("", "b", stamp))["last_step"] == 150
    rows = _get(gh_plugin, "/health", "").json["runs"]
    assert [row["last_step"] for row in rows] == [100, 150]

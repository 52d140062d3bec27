"""Reading runs through TensorBoard's own event loading."""

from __future__ import annotations

import numpy as np
import pytest
from tensorboard import context as tb_context
from tensorboard import errors
from tensorboard.backend.event_processing import data_provider as tb_data_provider
from tensorboard.backend.event_processing import plugin_event_multiplexer
from tensorboard.data import server_ingester

from tb_gradplugin import metadata, reader
from tests import eventfiles


def test_reads_every_point_of_scalars_and_tensors(tmp_path):
    """All 3,000 steps come back, beyond TensorBoard's default sampling."""
    steps = np.arange(1, 3001)
    eventfiles.write_run(
        tmp_path,
        "exp1",
        steps=steps,
        loss=np.linspace(2, 1, 3000),
        grad_norm=np.ones(3000),
        param_norm=np.full(3000, 5.0),
        variables=["d/kernel", "d/bias"],
        layers={"grad_norm": np.stack([steps, 2 * steps], axis=1)},
    )
    provider = reader.provider_for_logdir(tmp_path)
    assert reader.list_runs(provider) == ["exp1"]
    run = reader.read_run(provider, "exp1")
    assert run.last_step == 3000
    loss = run.scalar("step/loss")
    assert len(loss) == 3000 and loss.steps[0] == 1
    np.testing.assert_allclose(loss.values, np.linspace(2, 1, 3000), rtol=1e-6)
    layer = run.tensor("layer/grad_norm")
    assert layer.values.shape == (3000, 2)
    assert layer.names == ["d/kernel", "d/bias"]
    np.testing.assert_array_equal(layer.values[:, 1], 2 * steps)


def test_keys_limit_what_is_read(tmp_path):
    """keys= reads only the named series."""
    eventfiles.write_run(
        tmp_path,
        "r",
        steps=[1, 2],
        loss=[1.0, 0.5],
        grad_norm=[1, 1],
        param_norm=[2, 2],
    )
    run = reader.read_run(reader.provider_for_logdir(tmp_path), "r", keys=["step/loss"])
    assert list(run.scalars) == ["step/loss"]


def test_unknown_run_is_empty_and_missing_logdir_raises(tmp_path):
    """An unknown run reads as empty; a missing directory is FileNotFoundError."""
    eventfiles.write_run(tmp_path, "r", steps=[1], loss=[1.0])
    run = reader.read_run(reader.provider_for_logdir(tmp_path), "nope")
    assert run.last_step is None and not run.scalars
    with pytest.raises(FileNotFoundError):
        reader.provider_for_logdir(tmp_path / "missing")


def test_truncated_file_keeps_what_was_written(tmp_path):
    """A half-written last record loses only that record."""
    path = eventfiles.write_run(tmp_path, "r", steps=np.arange(1, 51), loss=np.ones(50))
    eventfiles.truncate_event_file(path)
    run = reader.read_run(reader.provider_for_logdir(tmp_path), "r")
    # The 7 bytes cut off end inside the last of the 50 loss records.
    assert len(run.scalar("step/loss")) == 49


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


def test_cached_reader_rereads_a_series_only_when_it_grows(tmp_path, monkeypatch):
    """A series comes from the cache until its last step changes, then is re-read."""
    monkeypatch.setattr(reader, "LISTING_TTL_S", 0.0)
    eventfiles.write_run(tmp_path, "r", steps=np.arange(1, 11), loss=np.ones(10))
    multiplexer, provider = _live_provider(tmp_path)
    cached = reader.CachedReader(provider)
    ctx = tb_context.RequestContext()
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
    cached = reader.CachedReader(reader.provider_for_logdir(tmp_path))
    ctx = tb_context.RequestContext()
    assert cached.known_run(ctx, "", "r", keys=["step/nope"]) == {}
    assert cached.known_run(ctx, "", "r")["step/loss"].kind == "scalar"
    with pytest.raises(errors.NotFoundError):
        cached.known_run(ctx, "", "nope")
    with pytest.raises(reader.UnavailableError):
        reader.CachedReader(None).list_runs(ctx, "")


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
    cached = reader.CachedReader(reader.provider_for_logdir(tmp_path))
    data = cached.read_run_data(tb_context.RequestContext(), "", "r")
    assert "step/loss" in data.scalars and "layer/grad_norm" in data.tensors
    assert data.last_step == 2


def test_lru_cache_forgets_the_least_recently_used():
    """Over capacity the entry read longest ago goes; memo computes once."""
    cache = reader.LRUCache(2)
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
    before = {"step/loss": reader.TagVersion("scalar", 10, 1.0, b"")}
    after = {"step/loss": reader.TagVersion("scalar", 11, 1.0, b"")}
    assert reader.version_stamp(before) != reader.version_stamp(after)
    assert reader.kind_of("layer/grad_norm") == "tensor"
    assert reader.kind_of("step/loss") == "scalar"


def test_data_server_reads_the_same_series_as_the_python_loader(tmp_path):
    """Through the Rust data server every point equals the Python loader's read."""
    steps = np.arange(1, 1501)
    grads = np.stack([steps, -0.5 * steps, np.sqrt(steps)], axis=1).astype(np.float64)
    grads[700, 1] = np.nan
    grads[900, 2] = np.inf
    loss = np.linspace(3, 1, 1500)
    loss[1000] = np.nan
    eventfiles.write_run(
        tmp_path,
        "r",
        steps=steps,
        loss=loss,
        grad_norm=np.ones(1500),
        variables=["a/kernel", "a/bias", "b/kernel"],
        layers={"grad_norm": grads, "update_ratio": grads * 1e-3},
    )
    want = reader.read_run(reader.provider_for_logdir(tmp_path), "r")
    try:
        with reader.data_server_provider(tmp_path) as provider:
            assert reader.list_runs(provider) == ["r"]
            got = reader.read_run(provider, "r")
    except server_ingester.NoDataServerError as err:
        pytest.skip(f"no Rust data server: {err}")
    assert sorted(got.scalars) == sorted(want.scalars)
    assert sorted(got.tensors) == ["layer/grad_norm", "layer/update_ratio"]
    for key in ("step/loss", "layer/grad_norm", "layer/update_ratio"):
        a = got.scalars.get(key) or got.tensors[key]
        b = want.scalars.get(key) or want.tensors[key]
        np.testing.assert_array_equal(a.steps, b.steps)
        np.testing.assert_array_equal(a.values, b.values)  # NaN equal to NaN
        np.testing.assert_array_equal(a.wall_times, b.wall_times)
        assert a.content == b.content
    assert got.tensor("layer/grad_norm").values.shape == (1500, 3)
    assert np.isnan(got.tensor("layer/grad_norm").values[700, 1])


def test_data_server_provider_rejects_a_missing_logdir(tmp_path):
    """A missing directory is a FileNotFoundError before any server starts."""
    with (
        pytest.raises(FileNotFoundError),
        reader.data_server_provider(tmp_path / "missing"),
    ):
        pass

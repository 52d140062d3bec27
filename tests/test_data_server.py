"""Tests of tb_gradplugin.data_server: reading through the Rust data server."""

from __future__ import annotations

import numpy as np
import pytest
from tensorboard.data import server_ingester

from tb_gradplugin import data_server, reader
from tests import eventfiles


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
    # One variable: its float32 [1] tensors are not packed as tensor_content.
    eventfiles.write_run(
        tmp_path,
        "one",
        steps=steps,
        loss=loss,
        variables=["w"],
        layers={"grad_norm": grads[:, :1]},
    )
    python = reader.provider_for_logdir(tmp_path)
    want, want_one = reader.read_run(python, "r"), reader.read_run(python, "one")
    try:
        with data_server.data_server_provider(tmp_path) as provider:
            assert reader.list_runs(provider) == ["one", "r"]
            got, got_one = (
                reader.read_run(provider, "r"),
                reader.read_run(provider, "one"),
            )
    except server_ingester.NoDataServerError as err:
        pytest.skip(f"no Rust data server: {err}")
    np.testing.assert_array_equal(
        got_one.tensor("layer/grad_norm").values,
        want_one.tensor("layer/grad_norm").values,
    )
    assert got_one.tensor("layer/grad_norm").values.shape == (1500, 1)
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
        data_server.data_server_provider(tmp_path / "missing"),
    ):
        pass


def _listed(provider, run: str) -> dict:
    """Key -> (kind, content) of a run's series, from its listing."""
    found = reader.listing(provider, run)
    return {key: (kind, content) for key, (kind, content, _) in found.items()}


def test_read_runs_reads_several_runs_as_read_run_does_on_both_paths(tmp_path):
    """One call per kind for several runs gives each run's read_run, point for point."""
    steps = np.arange(1, 301)
    for i, run in enumerate(("a", "b", "c")):
        loss = np.linspace(3, 1, 300) + i
        loss[50 * (i + 1)] = np.nan
        eventfiles.write_run(
            tmp_path,
            run,
            steps=steps[: 100 * (i + 1)],
            loss=loss[: 100 * (i + 1)],
            grad_norm=np.full(100 * (i + 1), float(i)),
            tensors={"block/step/loss": (steps[:2] * 100, np.ones((2, 11)) * i)},
        )
    python = reader.provider_for_logdir(tmp_path)
    want = {run: reader.read_run(python, run) for run in ("a", "b", "c")}
    listed = {run: _listed(python, run) for run in ("a", "b", "c")}
    got_python = reader.read_runs(python, listed)
    try:
        with data_server.data_server_provider(tmp_path) as provider:
            got_rust = reader.read_runs(provider, listed)
            fast = data_server.read_points_of_runs(
                provider, "scalar", "", ["a", "c"], {"gradient_health/step/loss"}, 10**9
            )
    except server_ingester.NoDataServerError as err:
        pytest.skip(f"no Rust data server: {err}")
    assert sorted(fast) == ["a", "c"]
    for got in (got_python, got_rust):
        assert sorted(got) == ["a", "b", "c"]
        for run, data in got.items():
            assert sorted(data.scalars) == sorted(want[run].scalars)
            assert sorted(data.tensors) == ["block/step/loss"]
            for key in ("step/loss", "step/grad_norm", "block/step/loss"):
                a = data.scalars.get(key) or data.tensors[key]
                b = want[run].scalars.get(key) or want[run].tensors[key]
                np.testing.assert_array_equal(a.steps, b.steps)
                np.testing.assert_array_equal(a.values, b.values)
                assert a.content == b.content

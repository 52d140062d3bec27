"""Tests of tb_gradplugin.health: the health table and the ``last_finite`` route.

The routes are driven with werkzeug's test client over real event files (written
with TensorBoard's own writer) read by TensorBoard's event loading; each row is
compared with the ``flags`` route and with the values written.
"""

from __future__ import annotations

import json
import math
import os
import time

import numpy as np
import pytest
from tensorboard.backend import application
from tensorboard.plugins import base_plugin
from werkzeug import test as werkzeug_test

from tb_gradplugin import health, plugin, reader
from tests import gh_logdirs
from tests.test_plugin import revive

PREFIX = "/data/plugin/gradient_health/"
NAN_AT = 120


def client_for(root: str) -> werkzeug_test.Client:
    provider = reader.provider_for_logdir(root)
    context = base_plugin.TBContext(data_provider=provider, logdir=root)
    gh = plugin.GradientHealthPlugin(context)
    return werkzeug_test.Client(application.TensorBoardWSGI([gh]))


def get_json(client, route: str):
    resp = client.get(PREFIX + route)
    assert resp.status_code == 200, (route, resp.status_code, resp.get_data()[:300])
    return revive(json.loads(resp.get_data()))


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("health"))
    written = {
        "calm": gh_logdirs.write_run(os.path.join(root, "calm"), n_steps=200),
        "broken": gh_logdirs.write_run(
            os.path.join(root, "broken"), n_steps=200, nan_at=NAN_AT, seed=1
        ),
    }
    return {"client": client_for(root), "written": written}


def test_stretches_count_consecutive_non_finite_points():
    """Each run of NaN/Inf points is one stretch with its first step and count."""
    steps = np.array([10, 20, 30, 40, 50, 60])
    values = np.array([1.0, np.nan, np.nan, 2.0, -np.inf, np.nan])
    found = health.nonfinite_stretches(steps, values)
    assert [(s["first_step"], s["last_step"], s["count"]) for s in found] == [
        (20, 30, 2),
        (50, 60, 2),
    ]
    assert math.isnan(found[0]["value"]) and found[1]["value"] == -math.inf
    assert health.nonfinite_stretches(steps, np.ones(6)) == []


def test_sparkline_keeps_spike_and_nan_of_a_long_series():
    """A 10,000-point series shrinks to the sparkline size and keeps its extremes."""
    n = 10_000
    values = np.linspace(1.0, 0.1, n)
    values[4321] = 1e6
    values[777] = np.nan
    series = reader.Series(np.arange(n), values, np.zeros(n), {})
    line = health.sparkline(series)
    assert len(line["steps"]) <= health.SPARKLINE_POINTS
    assert 4321 in line["steps"] and 777 in line["steps"]
    assert line["values"][line["steps"].index(4321)] == 1e6
    assert math.isnan(line["values"][line["steps"].index(777)])


def test_last_finite_row_skips_trailing_nan_rows():
    """The last row with every value finite is found; an all-NaN series has none."""
    values = np.array([[1.0, 2.0], [3.0, np.nan], [np.nan, np.nan]])
    series = reader.Series(np.array([5, 6, 7]), values, np.zeros(3), {})
    step, row = health.last_finite_row(series)
    assert step == 5 and row.tolist() == [1.0, 2.0]
    empty = reader.Series(np.array([1]), np.array([np.nan]), np.zeros(1), {})
    assert health.last_finite_row(empty) == (None, None)


def test_table_rows_match_the_flags_route_and_the_written_values(served):
    """Every run has a row whose severity, kinds and last loss are the backend's."""
    client = served["client"]
    table = get_json(client, "health")
    assert [row["run"] for row in table["runs"]] == ["broken", "calm"]
    for row in table["runs"]:
        report = get_json(client, f"flags?run={row['run']}")
        severities = {f["severity"] for f in report["flags"]}
        expect = next(
            (s for s in ("error", "warning", "info") if s in severities), None
        )
        assert row["worst"] == expect
        assert set(row["kinds"]) == {f["kind"] for f in report["flags"]}
        assert row["flag_count"] == len(report["flags"])
        assert row["last_step"] == report["last_step"] == 200
        loss = served["written"][row["run"]].scalars["step/loss"]
        assert row["last_loss"] == pytest.approx(float(loss[-1]))
        assert row["last_finite_loss"] == {"step": 200, "value": row["last_loss"]}
        assert len(row["grad_norm"]["steps"]) <= health.SPARKLINE_POINTS
    broken = table["runs"][0]
    assert broken["worst"] == "error" and "non_finite" in broken["kinds"]
    (stretch,) = broken["nonfinite"]["step/loss"]
    assert (stretch["first_step"], stretch["last_step"], stretch["count"]) == (
        NAN_AT,
        NAN_AT,
        1,
    )
    assert math.isnan(stretch["value"])
    assert NAN_AT in broken["grad_norm"]["steps"]
    assert table["runs"][1]["nonfinite"] == {}


def test_table_of_named_runs_and_errors(served):
    """`run=` picks rows in order; an unknown run is a 404, never a 500."""
    client = served["client"]
    table = get_json(client, "health?run=calm&run=broken")
    assert [row["run"] for row in table["runs"]] == ["calm", "broken"]
    resp = client.get(PREFIX + "health?run=nope")
    assert resp.status_code == 404 and b"nope" in resp.get_data()
    assert client.get(PREFIX + "health?run=").status_code == 400


def test_last_finite_route_gives_the_step_before_the_nan(served):
    """`last_finite` answers the last all-finite step and its values per variable."""
    client = served["client"]
    body = get_json(client, "last_finite?run=broken&key=step/loss")
    assert body["step"] == 200 and body["last_step"] == 200
    written = served["written"]["broken"]
    body = get_json(client, "last_finite?run=broken&key=layer/update_ratio")
    assert body["variables"] == written.variables
    np.testing.assert_allclose(
        body["values"], written.layers["layer/update_ratio"][-1], rtol=1e-6
    )
    assert client.get(PREFIX + "last_finite?run=broken").status_code == 400
    assert client.get(PREFIX + "last_finite?run=broken&key=x/y").status_code == 404
    assert client.get(PREFIX + "last_finite?key=step/loss").status_code == 400


def test_table_of_200_runs_is_fast(tmp_path):
    """200 runs: the first table in seconds, a repeated one well under a second."""
    for i in range(200):
        gh_logdirs.write_run(
            tmp_path / f"run{i:03d}",
            n_steps=60,
            n_vars=2,
            seed=i,
            nan_at=30 if i % 50 == 0 else None,
            layer_stats=("grad_norm", "update_ratio"),
            loss_components=(),
            slices=(),
        )
    client = client_for(str(tmp_path))
    t0 = time.perf_counter()
    table = get_json(client, "health")
    cold = time.perf_counter() - t0
    t0 = time.perf_counter()
    again = get_json(client, "health")
    warm = time.perf_counter() - t0
    assert len(table["runs"]) == len(again["runs"]) == 200
    assert sum(row["worst"] == "error" for row in table["runs"]) >= 4
    print(f"health table, 200 runs: first {cold:.2f} s, repeated {warm * 1000:.0f} ms")
    assert cold < 30 and warm < 1.0

"""Tests of tb_gradplugin.plugin over real event files and both TensorBoard data paths.

The log directory holds two real Keras trainings written by the callback (a healthy
one with slices and a loss component, and one that diverges to NaN), a synthetic run
of 3,000 steps with a known NaN and spike (more than the Rust server's default 1,000
scalars / 100 tensors per series), a run whose directory name is HTML, and a corrupt
event file. The plugin is served by werkzeug's test client over ``TensorBoardWSGI``,
with the data provider that TensorBoard itself builds from its flags after the
plugin's loader ran ``fix_flags``: the Python ingester and the Rust data server.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time

import numpy as np
import pytest
from tensorboard import context as tb_context
from tensorboard import default, program
from tensorboard.backend import application, json_util
from tensorboard.backend.event_processing import data_ingester
from tensorboard.data import server_ingester
from tensorboard.plugins import base_plugin
from werkzeug import test as werkzeug_test

from tb_gradplugin import diagnosis, metadata, plugin, reader
from tests import eventfiles, gh_logdirs

HOSTILE = gh_logdirs.HOSTILE
SYN_STEPS = gh_logdirs.SYN_STEPS
NAN_AT = gh_logdirs.NAN_AT
SPIKE_AT = gh_logdirs.SPIKE_AT
PREFIX = "/data/plugin/gradient_health/"


# -- the log directory --------------------------------------------------------


@pytest.fixture(scope="module")
def logdir(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("logs"))
    written = gh_logdirs.make_logdir(root)
    return root, written


def configured_flags(logdir: str, load_fast: str):
    """TensorBoard's flags after parsing a plain command line and the loader's fix."""
    tb = program.TensorBoard(
        plugins=default.get_static_plugins() + [plugin.GradientHealthLoader()]
    )
    tb.configure(
        argv=[
            None,
            "--logdir",
            logdir,
            f"--load_fast={load_fast}",
            "--reload_interval=0",
            "--reload_task=blocking",
        ]
    )
    return tb.flags


def wait_loaded(provider, runs: dict[str, int], timeout: float = 60.0) -> None:
    """Waits until every run's loss series reaches its last step (Rust loads async)."""
    deadline = time.time() + timeout
    while True:
        found = provider.list_scalars(
            tb_context.RequestContext(),
            experiment_id="",
            plugin_name=metadata.PLUGIN_NAME,
        )
        ok = all(
            metadata.step_tag("loss") in found.get(run, {})
            and found[run][metadata.step_tag("loss")].max_step >= last
            for run, last in runs.items()
        )
        if ok:
            return
        if time.time() > deadline:
            raise TimeoutError(f"data not loaded: {sorted(found)}")
        time.sleep(0.2)


@pytest.fixture(scope="module", params=["python", "rust"])
def served(request, logdir):
    root, written = logdir
    if request.param == "python":
        flags = configured_flags(root, "false")
        ingester = data_ingester.LocalDataIngester(flags)
    else:
        flags = configured_flags(root, "true")
        try:
            binary = server_ingester.get_server_binary()
        except server_ingester.NoDataServerError as err:
            pytest.skip(f"no Rust data server: {err}")
        ingester = server_ingester.SubprocessServerDataIngester(
            server_binary=binary,
            logdir=root,
            reload_interval=0,
            channel_creds_type=flags.grpc_creds_type,
            samples_per_plugin=flags.samples_per_plugin,
        )
    ingester.start()
    provider = ingester.data_provider
    wait_loaded(provider, {"synthetic": SYN_STEPS, "healthy": 40, "diverged": 40})
    context = base_plugin.TBContext(data_provider=provider, logdir=root, flags=flags)
    gh = plugin.GradientHealthLoader().load(context)
    client = werkzeug_test.Client(application.TensorBoardWSGI([gh]))
    return {"client": client, "root": root, "written": written, "kind": request.param}


def get(client, route: str):
    return client.get(PREFIX + route)


def get_json(client, route: str):
    resp = get(client, route)
    assert resp.status_code == 200, (route, resp.status_code, resp.get_data()[:300])
    return revive(json.loads(resp.get_data()))


def revive(obj):
    """Turns TensorBoard's "NaN"/"Infinity" strings back into floats."""
    special = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}
    if isinstance(obj, list):
        return [revive(v) for v in obj]
    if isinstance(obj, dict):
        return {k: revive(v) for k, v in obj.items()}
    if isinstance(obj, str) and obj in special:
        return special[obj]
    return obj


def raw_events(run_dir: str, tag: str) -> tuple[np.ndarray, np.ndarray]:
    """Reads a tag straight from the event files with TensorFlow (the reference)."""
    import tensorflow as tf

    steps, values = [], []
    for name in sorted(os.listdir(run_dir)):
        if ".tfevents." not in name or name.endswith("corrupt"):
            continue
        for event in tf.compat.v1.train.summary_iterator(os.path.join(run_dir, name)):
            for v in event.summary.value:
                if v.tag == tag:
                    steps.append(event.step)
                    values.append(tf.make_ndarray(v.tensor))
    return np.array(steps), np.array(values, dtype=np.float64)


# -- pure functions ------------------------------------------------------------


def test_loader_fix_flags_keeps_all_points_unless_user_says():
    """fix_flags adds gradient_health=0 (all) and keeps a user's own setting."""
    loader = plugin.GradientHealthLoader()

    class Flags:
        samples_per_plugin = {"scalars": 500}

    flags = Flags()
    loader.fix_flags(flags)
    assert flags.samples_per_plugin == {"scalars": 500, "gradient_health": 0}
    flags.samples_per_plugin = "gradient_health=50"
    loader.fix_flags(flags)
    assert flags.samples_per_plugin == {"gradient_health": 50}
    parsed = configured_flags("/nonexistent", "false")
    assert parsed.samples_per_plugin["gradient_health"] == 0


def test_plugin_module_imports_no_tensorflow():
    """Importing the plugin (as TensorBoard does) loads no TensorFlow or Keras."""
    code = (
        "import sys, tb_gradplugin.plugin; "
        "print(any(m.split('.')[0] in ('tensorflow', 'keras') for m in sys.modules))"
    )
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=root,
        env={**os.environ, "PYTHONPATH": root},
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == "False"


# -- routes over both data paths --------------------------------------------------


def test_runs_lists_every_run_with_data(served):
    """`runs` lists every run with gradient-health data, the HTML name verbatim."""
    runs = get_json(served["client"], "runs")
    assert runs == sorted([HOSTILE, "diverged", "healthy", "synthetic"])


def test_export_returns_every_point_beyond_default_sampling(served):
    """Export gives all 3,000 steps of a scalar and a tensor, as they were written."""
    syn = served["written"]["synthetic"]
    q = "export?run=synthetic&key=step/loss&format=json"
    body = get_json(served["client"], q)
    assert body["steps"] == list(range(1, SYN_STEPS + 1))
    assert len(body["wall_times"]) == SYN_STEPS
    np.testing.assert_array_equal(
        np.array(body["values"], dtype=np.float64),
        syn.scalars["step/loss"].astype(np.float64),
    )
    assert math.isnan(body["values"][NAN_AT - 1])
    q = "export?run=synthetic&key=layer/grad_norm&format=json"
    body = get_json(served["client"], q)
    assert len(body["steps"]) == SYN_STEPS
    assert body["variables"] == syn.variables
    np.testing.assert_array_equal(
        np.array(body["values"]), syn.layers["layer/grad_norm"].astype(np.float64)
    )


def test_export_csv_has_header_and_every_row(served):
    """CSV export has a header and one row per step, NaN written as nan."""
    resp = get(served["client"], "export?run=synthetic&key=step/grad_norm&format=csv")
    assert resp.status_code == 200
    assert resp.headers["Content-Type"].startswith("text/csv")
    assert "attachment" in resp.headers["Content-Disposition"]
    lines = resp.get_data(as_text=True).splitlines()
    assert lines[0] == "step,wall_time,value"
    assert len(lines) == SYN_STEPS + 1
    assert lines[NAN_AT].startswith(f"{NAN_AT},") and lines[NAN_AT].endswith(",nan")
    assert float(lines[SPIKE_AT].split(",")[2]) == 1e6


def test_downsampled_series_keeps_nan_and_spike(served):
    """A 100-point display series of 3,000 steps still holds the NaN and the spike."""
    body = get_json(
        served["client"], "series?run=synthetic&key=step/grad_norm&downsample=100"
    )
    assert body["total_points"] == SYN_STEPS and body["downsampled"]
    assert len(body["steps"]) <= 102
    got = dict(zip(body["steps"], body["values"], strict=True))
    assert math.isnan(got[NAN_AT])
    assert got[SPIKE_AT] == 1e6
    syn = served["written"]["synthetic"].scalars["step/grad_norm"]
    finite = syn[np.isfinite(syn)]
    assert min(v for v in body["values"] if math.isfinite(v)) == float(finite.min())


def test_overview_matches_event_files_of_real_training(served):
    """Overview loss and grad norm of a real fit equal the raw event-file values."""
    body = get_json(served["client"], "overview?run=healthy")
    run_dir = os.path.join(served["root"], "healthy")
    for key in ("step/loss", "step/grad_norm", "step/param_norm"):
        steps, values = raw_events(run_dir, metadata.TAG_PREFIX + key)
        assert body["series"][key]["steps"] == steps.tolist()
        np.testing.assert_array_equal(body["series"][key]["values"], values)
    assert body["last_step"] == 40
    _, grad = raw_events(run_dir, metadata.step_tag("grad_norm"))
    _, param = raw_events(run_dir, metadata.step_tag("param_norm"))
    np.testing.assert_array_equal(body["norms"]["y"], grad)
    np.testing.assert_array_equal(body["norms"]["x"], param)


def test_overview_sends_nan_as_tensorboard_does(served):
    """NaN of a diverged run travels as the string "NaN", like TensorBoard's JSON."""
    resp = get(served["client"], "overview?run=diverged")
    raw = json.loads(resp.get_data())
    values = raw["series"]["step/loss"]["values"]
    assert "NaN" in values or "Infinity" in values
    assert all(isinstance(v, float | str) for v in values)


def test_flags_route_equals_diagnosis_report(served):
    """`flags` returns diagnosis.run_report of the run; the diverged run has NaN."""
    body = get_json(served["client"], "flags?run=diverged")
    provider = reader.provider_for_logdir(served["root"])
    expect = diagnosis.run_report(reader.read_run(provider, "diverged"))
    assert body == revive(json.loads(json.dumps(json_util.Cleanse(expect))))
    assert body["run"] == "diverged" and body["last_step"] == 40
    assert "non_finite" in {f["kind"] for f in body["flags"]}
    healthy = get_json(served["client"], "flags?run=healthy")
    assert not [f for f in healthy["flags"] if f["severity"] in ("error", "warning")]


def test_layers_heatmap_of_real_training(served):
    """`layers` gives a heatmap row per variable: maxima of the raw per-step values."""
    body = get_json(served["client"], "layers?run=healthy&stat=grad_norm&buckets=8")
    steps, values = raw_events(
        os.path.join(served["root"], "healthy"), metadata.layer_tag("grad_norm")
    )
    heat = body["heatmap"]
    assert len(heat["variables"]) == values.shape[1] == 4
    assert heat["variables"][0] == "healthy/hidden/kernel"
    assert len(heat["steps"]) == 8
    for col, (lo, hi) in enumerate(heat["step_ranges"]):
        sel = (steps >= lo) & (steps <= hi)
        np.testing.assert_allclose(
            [row[col] for row in heat["values"]], values[sel].max(axis=0), rtol=0
        )
    assert "update_ratio" in body["stats"]
    ur = body["update_ratio"]
    _, ratio = raw_events(
        os.path.join(served["root"], "healthy"), metadata.layer_tag("update_ratio")
    )
    np.testing.assert_array_equal(ur["values"], ratio[-1])
    assert ur["step"] == 40


def test_slices_and_loss_components_across_runs(served):
    """Slices and loss components of several runs, volatility from every point."""
    client = served["client"]
    body = get_json(client, "slices?run=healthy&run=synthetic")
    assert sorted(body["runs"]) == ["healthy", "synthetic"]
    healthy = body["runs"]["healthy"]
    assert sorted(healthy["slices"]) == ["hi", "lo"]
    lo = healthy["slices"]["lo"]
    assert lo["content"]["variable"] == "healthy/hidden/kernel"
    _, ref = raw_events(
        os.path.join(served["root"], "healthy"),
        metadata.slice_tag("lo", "grad_mean_abs"),
    )
    np.testing.assert_array_equal(lo["grad_mean_abs"]["values"], ref)
    assert "grad_variance" in healthy["window"]
    body = get_json(client, "loss_components?run=synthetic&run=healthy")
    kl = body["runs"]["synthetic"]["kl_loss"]
    written = served["written"]["synthetic"].window["loss_component/kl_loss"]
    assert kl["volatility"] == pytest.approx(diagnosis.volatility(written), rel=1e-12)
    assert "mae" in body["runs"]["healthy"]


def test_curvature_and_trajectory(served):
    """Curvature pairs min ratio with probe loss; a run without it says unavailable."""
    client = served["client"]
    body = get_json(client, "curvature?run=synthetic")
    assert body["available"]
    pairs = body["min_ratio_vs_loss"]
    assert pairs["steps"] == list(range(50, SYN_STEPS + 1, 50))
    loss = served["written"]["synthetic"].scalars["step/loss"]
    np.testing.assert_array_equal(
        pairs["x"], loss[np.array(pairs["steps"]) - 1].astype(np.float64)
    )
    assert body["content"]["method"] == "exact"
    empty = get_json(client, f"curvature?run={HOSTILE}")
    assert not any(k.startswith("hessian/") for k in empty["series"])
    body = get_json(client, "trajectory?run=synthetic")
    assert body["available"] and "synthetic" in body["runs"]
    assert len(body["runs"]["synthetic"]["xy"]) == SYN_STEPS // 50
    none = get_json(client, "trajectory?run=healthy")
    assert none == {"available": False, "runs": {}, "explained_variance_ratio": []}


@pytest.mark.parametrize(
    "route, code",
    [
        ("flags", 400),
        ("flags?run=nope", 404),
        ("series?run=synthetic", 400),
        ("series?run=synthetic&key=step/nope", 404),
        ("flags?run=synthetic&run=healthy", 400),
        ("series?run=synthetic&key=step/loss&key=step/grad_norm", 400),
        ("series?run=synthetic&key=step/loss&downsample=x", 400),
        ("series?run=synthetic&key=step/loss&downsample=0", 400),
        ("series?run=synthetic&key=step/loss&downsample=99999999999", 400),
        ("overview?run=", 400),
        ("layers?run=synthetic&stat=bogus", 400),
        ("layers?run=synthetic&buckets=-3", 400),
        ("slices?run=nope", 404),
        ("loss_components?run=synthetic&run=nope", 404),
        ("curvature?run=%00", 404),
        ("export?run=synthetic&key=step/loss&format=xml", 400),
        ("export?run=synthetic&key=../../etc/passwd", 404),
        ("static/../plugin.py", 404),
        ("static/%2e%2e/plugin.py", 404),
        ("static/..%2fplugin.py", 404),
        ("static/", 404),
    ],
)
def test_bad_parameters_get_4xx_with_short_message(served, route, code):
    """Malformed or unknown parameters get a 4xx and a short text, never a 500."""
    resp = get(served["client"], route)
    assert resp.status_code == code, resp.get_data()[:200]
    body = resp.get_data(as_text=True)
    assert 0 < len(body) < 300 and "Traceback" not in body


def test_unknown_series_message_names_the_run_and_the_key(served):
    """A 404 for an unknown key says which run lacks which series."""
    for route in ("series", "export"):
        resp = get(served["client"], f"{route}?run=synthetic&key=step/nope")
        assert resp.status_code == 404
        body = resp.get_data(as_text=True)
        assert "'synthetic'" in body and "'step/nope'" in body, body


def test_index_js_served_as_javascript(served):
    """The bundle is served as text/javascript and is the committed file."""
    resp = get(served["client"], "index.js")
    assert resp.status_code == 200
    assert resp.headers["Content-Type"].startswith("text/javascript")
    with open(plugin.STATIC_DIR / "index.js", "rb") as f:
        assert resp.get_data() == f.read()
    assert get(served["client"], "static/index.js").status_code == 200


def test_is_active_when_a_run_holds_gradient_health_data(logdir, tmp_path):
    """is_active finds the data itself; an empty logdir or no provider is inactive."""
    root, _ = logdir
    flags = configured_flags(root, "false")
    ingester = data_ingester.LocalDataIngester(flags)
    ingester.start()
    provider = ingester.data_provider
    wait_loaded(provider, {"synthetic": SYN_STEPS})
    context = base_plugin.TBContext(data_provider=provider, logdir=root, flags=flags)
    assert plugin.GradientHealthLoader().load(context).is_active() is True
    empty = data_ingester.LocalDataIngester(configured_flags(str(tmp_path), "false"))
    empty.start()
    context = base_plugin.TBContext(data_provider=empty.data_provider)
    assert plugin.GradientHealthLoader().load(context).is_active() is False
    no_provider = base_plugin.TBContext(data_provider=None)
    assert plugin.GradientHealthPlugin(no_provider).is_active() is False


def test_frontend_metadata_names_the_tab():
    """The tab is titled "Gradient Health" and loads ./index.js as an ES module."""
    gh = plugin.GradientHealthPlugin(base_plugin.TBContext(data_provider=None))
    meta = gh.frontend_metadata()
    assert gh.plugin_name == "gradient_health"
    assert meta.tab_name == "Gradient Health"
    assert meta.es_module_path == "/index.js"
    assert gh.data_plugin_names() == ("gradient_health",)


# -- a real tensorboard process ----------------------------------------------------


@pytest.mark.parametrize("load_fast", ["false", "true"])
def test_tensorboard_process_serves_all_points(logdir, load_fast):
    """A real `tensorboard --logdir` process (both paths) serves every point."""
    import urllib.request

    root, _ = logdir
    port = gh_logdirs.free_port()
    proc = gh_logdirs.start_tensorboard(root, port, f"--load_fast={load_fast}")
    url = (
        f"http://127.0.0.1:{port}{PREFIX}"
        "export?run=synthetic&key=layer/grad_norm&format=json"
    )
    try:
        deadline = time.time() + 60
        body = None
        while time.time() < deadline:
            try:
                with urllib.request.urlopen(url, timeout=5) as resp:
                    body = json.loads(resp.read())
                if len(body["steps"]) == SYN_STEPS:
                    break
            except OSError:
                pass
            time.sleep(0.5)
        assert body is not None and len(body["steps"]) == SYN_STEPS
        listing_url = f"http://127.0.0.1:{port}/data/plugins_listing"
        with urllib.request.urlopen(listing_url, timeout=30) as resp:
            listing = json.loads(resp.read())
        # The dropdown's "INACTIVE" section lists the entries with enabled false.
        assert listing["gradient_health"]["enabled"] is True
        assert listing["gradient_health"]["tab_name"] == "Gradient Health"
    finally:
        proc.terminate()
        proc.wait(timeout=20)


@pytest.fixture(scope="module")
def density_served(tmp_path_factory):
    """A run with two logged spectral densities, served by the Python ingester."""
    root = str(tmp_path_factory.mktemp("density"))
    points = 8
    grid = np.linspace(-1.0, 3.0, points)
    rows = []
    for shift in (0.0, 1.0):
        density = np.exp(-0.5 * (grid - shift) ** 2)
        histogram = np.full(points, np.nan) if shift else np.eye(points)[2]
        rows.append(np.concatenate([[0.5 + shift], grid, density, histogram]))
    steps = np.arange(1, 21)
    eventfiles.write_run(
        root,
        "curved",
        steps=steps,
        loss=np.linspace(1.0, 0.5, 20),
        scalars={
            "hessian/min_ratio": ([10, 20], [0.25, 0.5]),
            "hessian/probe_loss": ([10, 20], [0.9, 0.6]),
        },
        tensors={
            "hessian_spectrum/density": (
                [10, 20],
                np.array(rows),
                {"points": points, "method": "exact"},
            )
        },
    )
    flags = configured_flags(root, "false")
    ingester = data_ingester.LocalDataIngester(flags)
    ingester.start()
    wait_loaded(ingester.data_provider, {"curved": 20})
    context = base_plugin.TBContext(
        data_provider=ingester.data_provider, logdir=root, flags=flags
    )
    gh = plugin.GradientHealthLoader().load(context)
    client = werkzeug_test.Client(application.TensorBoardWSGI([gh]))
    return {"client": client, "plugin": gh, "rows": rows, "points": points}


def test_curvature_route_serves_the_spectral_density(density_served):
    """The curvature route sends the latest density; a chosen step gets its own."""
    body = get_json(density_served["client"], "curvature?run=curved")
    shown = body["spectral_density"]
    points = density_served["points"]
    latest = density_served["rows"][1][1:].reshape(3, points)
    assert shown["step"] == 20 and shown["steps"] == [10, 20]
    assert shown["method"] == "exact" and shown["broadening"] == 1.5
    np.testing.assert_allclose(shown["grid"], latest[0], rtol=1e-6)
    np.testing.assert_allclose(shown["density"], latest[1], rtol=1e-6)
    assert shown["histogram"] is None  # all NaN: a Lanczos step
    assert "hessian_spectrum/density" not in body["series"]
    first = density_served["plugin"].data.curvature_impl(
        tb_context.RequestContext(), "", "curved", 100, step=15
    )["spectral_density"]
    assert first["step"] == 10 and first["broadening"] == 0.5
    np.testing.assert_allclose(first["histogram"], np.eye(points)[2])


@pytest.mark.parametrize("step, shown", [(10, 10), (15, 10), (0, 10), (20, 20)])
def test_curvature_route_step_parameter_picks_the_density(density_served, step, shown):
    """``step=S`` sends the density logged at S, or the latest one before it."""
    body = get_json(density_served["client"], f"curvature?run=curved&step={step}")
    density = body["spectral_density"]
    assert density["step"] == shown
    row = density_served["rows"][[10, 20].index(shown)]
    np.testing.assert_allclose(density["broadening"], row[0], rtol=1e-6)


@pytest.mark.parametrize("step", ["x", "1.5", "-1", "99999999999999999999"])
def test_curvature_route_rejects_a_bad_step(density_served, step):
    """A step that is not a non-negative int64 is a 400 with a short message."""
    resp = get(density_served["client"], f"curvature?run=curved&step={step}")
    assert resp.status_code == 400, resp.get_data()[:200]
    assert "step" in resp.get_data(as_text=True)

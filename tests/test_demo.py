"""End-to-end test of the demo: ``python -m demo --logdir TMP --quick``.

The demo runs once, as a user runs it (a subprocess), into a temporary folder.
The tests then read its event files with the package's reader (no TensorFlow),
judge them with the diagnosis, check the figures against what the experiments
imply by construction (the loss is ``causal_lm_loss + hrm · kl_loss``; SMRL's
first phase gives ω[96:192] no gradient at all), and drive the tab's routes with
werkzeug's test client over the same data.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import time

import numpy as np
import pytest
from tensorboard.backend import application
from tensorboard.plugins import base_plugin
from werkzeug import test as werkzeug_test

from demo import RUNS
from tb_gradplugin import diagnosis, plugin, reader

pytestmark = pytest.mark.slow

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PREFIX = "/data/plugin/gradient_health/"
ALL_RUNS = [name for names in RUNS.values() for name in names]
QUICK_TIMEOUT = 1200  # s: the quick demo takes ~2-6 min on 2 loaded cores


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return env


def run_demo(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """Runs ``python -m demo ARGS`` from the repository root."""
    return subprocess.run(
        [sys.executable, "-m", "demo", *args],
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    logdir = str(tmp_path_factory.mktemp("demo"))
    started = time.monotonic()
    proc = run_demo("--logdir", logdir, "--quick", timeout=QUICK_TIMEOUT)
    wall_s = time.monotonic() - started
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    provider = reader.provider_for_logdir(logdir)
    data = {run: reader.read_run(provider, run) for run in reader.list_runs(provider)}
    return {
        "logdir": logdir,
        "stdout": proc.stdout,
        "provider": provider,
        "data": data,
        "wall_s": wall_s,
    }


@pytest.fixture(scope="module")
def client(demo):
    context = base_plugin.TBContext(
        data_provider=demo["provider"], logdir=demo["logdir"]
    )
    gh = plugin.GradientHealthPlugin(context)
    return werkzeug_test.Client(application.TensorBoardWSGI([gh]))


def get_json(client, route: str):
    resp = client.get(PREFIX + route)
    assert resp.status_code == 200, (route, resp.status_code, resp.get_data()[:300])
    return json.loads(resp.get_data())


def number(x) -> float:
    """A JSON number, or TensorBoard's "NaN"/"Infinity" strings, as a float."""
    special = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}
    return special[x] if isinstance(x, str) else float(x)


def kinds(run: reader.RunData, severities=("error", "warning", "info")) -> set[str]:
    return {f.kind for f in diagnosis.diagnose(run) if f.severity in severities}


# -- the command -----------------------------------------------------------------


def test_every_run_is_written_under_its_own_folder(demo):
    """Each of the demo's 18 runs is a folder of DIR with gradient-health data."""
    assert len(ALL_RUNS) == 18
    assert sorted(demo["data"]) == sorted(ALL_RUNS)
    for run in ALL_RUNS:
        assert any(
            ".tfevents." in f for f in os.listdir(os.path.join(demo["logdir"], run))
        )
        assert demo["data"][run].last_step > 0


def test_summary_table_lists_each_run_and_the_time_taken(demo):
    """The demo ends with one table row per run (with its flags) and its duration."""
    out = demo["stdout"]
    table = out[out.index("Gradient health flags per run:") :]
    for run in ALL_RUNS:
        assert re.search(rf"^{re.escape(run)}\s+\d+\s", table, re.M), run
    exploding = re.search(r"^exploding\s.*$", table, re.M).group(0)
    assert "exploding_gradient (error" in exploding and "non_finite (error" in exploding
    assert re.search(r"^healthy\s+\d+\s+\d+\s+none$", table, re.M)
    took = float(re.search(r"Demo \(quick\) took (\d+) s", out).group(1))
    print(f"quick demo took {took:.0f} s")  # shown with pytest -s
    # The time it prints is its own run's: within the process's wall time, which
    # adds only the start (imports) and the exit.
    assert demo["wall_s"] - 120 <= took <= demo["wall_s"] + 1
    # Keras's own progress display, one line per epoch.
    assert re.search(r"^Epoch 1/\d+$", out, re.M)


def test_missing_logdir_is_a_usage_error():
    """Without --logdir the demo exits 2 with argparse's usage line."""
    proc = run_demo()
    assert proc.returncode == 2
    assert "--logdir" in proc.stderr and "Traceback" not in proc.stderr


def test_logdir_that_is_a_file_is_one_clear_line(tmp_path):
    """A --logdir that is a file gets one error line and exit 2, no traceback."""
    path = tmp_path / "file"
    path.write_text("x")
    proc = run_demo("--logdir", str(path), "--quick")
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0, proc.stderr
    assert "not a directory" in proc.stderr and "Traceback" not in proc.stderr


def test_existing_runs_are_not_overwritten_without_the_flag(tmp_path):
    """A logdir that already holds a demo run is refused (exit 2) and left as is."""
    (tmp_path / "healthy").mkdir()
    keep = tmp_path / "healthy" / "keep.txt"
    keep.write_text("mine")
    proc = run_demo("--logdir", str(tmp_path), "--quick")
    assert proc.returncode == 2
    assert "--overwrite" in proc.stderr and "Traceback" not in proc.stderr
    assert keep.read_text() == "mine"


def test_without_scikit_learn_the_demo_says_how_to_install_it(tmp_path):
    """Without scikit-learn the demo exits 2 with one line naming its extra."""
    code = (
        "import sys; sys.modules['sklearn'] = None; "
        "from demo.__main__ import main; sys.exit(main(sys.argv[1:]))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, "--logdir", str(tmp_path), "--quick"],
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0, proc.stderr
    assert ".[demo]" in proc.stderr and "Traceback" not in proc.stderr
    assert os.listdir(tmp_path) == []


# -- the real data ------------------------------------------------------------------


def test_digits_are_scikit_learns_scans_in_mnist_layout():
    """The digits are sklearn's scans resized to 20×20 in a blank 28×28 image."""
    from scipy import ndimage
    from sklearn.datasets import load_digits

    from demo import data

    scans = load_digits()
    x, y = data.handwritten_digits()
    assert x.shape == (1797, 784) and x.dtype == np.float32
    np.testing.assert_array_equal(y, scans.target)
    images = x.reshape(-1, 28, 28)
    box = images[:, 4:24, 4:24]
    assert images.sum() == pytest.approx(box.sum())  # the 4-pixel margin is blank
    # An independent bilinear resize (pixel centres aligned) of the scans, in [0, 1].
    reference = np.stack(
        [
            ndimage.zoom(scan / 16, 2.5, order=1, grid_mode=True, mode="nearest")
            for scan in scans.images
        ]
    )
    np.testing.assert_allclose(box, reference, atol=1e-6)


def test_seed003_trains_on_1000_distinct_digits_100_of_each():
    """Seed 003's training set: 1,000 distinct digit images, 100 per digit."""
    from demo import data, seed003

    every, labels = data.handwritten_digits()
    index = {row.tobytes(): label for row, label in zip(every, labels, strict=True)}
    x, y = seed003.make_digits()
    assert x.shape == (1000, 784)
    np.testing.assert_array_equal(np.bincount(y), np.full(10, 100))
    assert len({row.tobytes() for row in x}) == 1000
    assert [index[row.tobytes()] for row in x] == y.tolist()


def test_causal_lm_reads_python_documentation_text():
    """Seed 002's windows are 33-character stretches of Python's own docs."""
    from pydoc_data import topics

    from demo import causal_lm, data

    seq = causal_lm.make_corpus()
    assert seq.shape == (1024, 33) and seq.min() >= 0 and seq.max() < causal_lm.VOCAB
    text = data.python_documentation_text()
    assert "assert_stmt ::=" in text and len(text) > 100_000
    assert text.startswith(" ".join(topics.topics[min(topics.topics)].split())[:50])
    _, alphabet = data.character_tokens(text, causal_lm.VOCAB)
    for window in seq[:20]:
        pattern = "".join(
            re.escape(alphabet[i]) if i < len(alphabet) else "." for i in window
        )
        assert re.search(pattern, text, re.S), pattern


def test_seed004_task_is_balanced_odd_or_even_digits():
    """Seed 004's labels are 500 odd and 500 even digits, pixels standardised."""
    from demo import seed004

    x, y = seed004.make_data()
    assert x.shape == (1000, 784) and y.shape == (1000, 1)
    assert y.sum() == 500
    np.testing.assert_allclose(x.mean(axis=0), 0, atol=1e-5)
    noisy_x, noisy_y = seed004.make_data(label_noise=0.25)
    np.testing.assert_array_equal(noisy_x, x)
    assert 0.2 < np.mean(noisy_y != y) < 0.3


# -- seed 004: each pathology gets its own flag ------------------------------------

# The flags of severity warning or error each seed-004 pathology must raise, and
# no other: the run's own kind, plus the symptom the seed's log shows with it
# (the exploding run turns NaN; the vanishing run's loss sits at ln 2).
PATHOLOGY_KINDS = {
    "exploding": {"exploding_gradient", "non_finite"},
    "vanishing": {"vanishing_gradient", "loss_plateau"},
    "oscillating": {"oscillating_loss"},
}


def test_exploding_run_is_flagged_exploding_and_non_finite(demo):
    """The exploding run gets exploding_gradient and non_finite errors, no other."""
    run = demo["data"]["exploding"]
    assert kinds(run, ("error", "warning")) == PATHOLOGY_KINDS["exploding"]
    assert kinds(run, ("error",)) == PATHOLOGY_KINDS["exploding"]
    # The pathology itself (seed 004): the gradient norm far above ~100 and a
    # hundredfold jump over its starting level, then NaN.
    g = run.scalar("step/grad_norm").values
    finite = g[np.isfinite(g)]
    assert finite.max() > 100 and finite.max() > 100 * np.median(finite[:20])
    assert not np.all(np.isfinite(run.scalar("step/loss").values))
    (explode,) = [f for f in diagnosis.diagnose(run) if f.kind == "exploding_gradient"]
    (nan,) = [f for f in diagnosis.diagnose(run) if f.kind == "non_finite"]
    assert explode.first_step <= nan.first_step  # the blow-up comes first


def test_vanishing_run_is_flagged_vanishing_at_its_first_layer(demo):
    """The vanishing run gets a vanishing_gradient error at its first layer."""
    run = demo["data"]["vanishing"]
    assert kinds(run, ("error", "warning")) == PATHOLOGY_KINDS["vanishing"]
    (vanish,) = [f for f in diagnosis.diagnose(run) if f.kind == "vanishing_gradient"]
    assert vanish.severity == "error"
    assert vanish.layer == run.tensor("layer/grad_norm").names[0]
    loss = run.scalar("step/loss").values
    assert np.all(np.abs(loss - math.log(2)) < 0.01)  # the plateau at chance level
    first = run.tensor("layer/grad_norm").values[:, 0]
    assert np.median(first) < 1e-6  # the first layer gets practically nothing


def test_oscillating_run_is_flagged_oscillating_only(demo):
    """The oscillating run's loss swings without NaN and gets oscillating_loss only."""
    run = demo["data"]["oscillating"]
    assert kinds(run, ("error", "warning")) == PATHOLOGY_KINDS["oscillating"]
    loss = run.scalar("step/loss").values
    assert np.all(np.isfinite(loss))
    late = loss[len(loss) // 2 :]
    assert np.ptp(late) > 0.4 * np.median(late)  # swings, not settles


@pytest.mark.parametrize(
    "run", [r for r in ALL_RUNS if r not in PATHOLOGY_KINDS], ids=str
)
def test_every_other_run_gets_no_warning_or_error(demo, run):
    """Healthy baseline, seeds 000-003: no flag of severity warning or error."""
    found = [
        (f.kind, f.severity, f.message)
        for f in diagnosis.diagnose(demo["data"][run])
        if f.severity in ("error", "warning")
    ]
    assert found == [], found


# -- the data behind each view -------------------------------------------------------


def test_slices_of_the_embedding_have_real_values(demo):
    """mrl/smrl hold per-epoch average gradient and variance of ω[0:96], ω[96:192]."""
    for run in ("mrl", "smrl"):
        data = demo["data"][run]
        for name, (start, stop) in (("w_0_96", (0, 96)), ("w_96_192", (96, 192))):
            s = data.scalar(f"slice/{name}/grad_mean_abs")
            v = data.scalar(f"slice/{name}/grad_variance")
            assert s is not None and v is not None, (run, name)
            assert s.content["variable"].endswith("embeddings")
            assert (s.content["start"], s.content["stop"]) == (start, stop)
            assert len(s) >= 6 and np.all(np.isfinite(s.values))
            assert np.all(v.values >= 0)
    # By construction: SMRL's first phase trains only the 96-dim head, so the
    # embedding's dimensions 96..191 get an exactly zero gradient, MRL's do not.
    smrl = demo["data"]["smrl"]
    lo = smrl.scalar("slice/w_0_96/grad_mean_abs").values
    hi = smrl.scalar("slice/w_96_192/grad_mean_abs").values
    half = len(hi) // 2
    assert np.all(hi[:half] == 0) and np.all(lo[:half] > 0)
    assert np.all(hi[half:] > 0)
    assert np.all(demo["data"]["mrl"].scalar("slice/w_96_192/grad_mean_abs").values > 0)


def test_loss_components_add_up_to_the_loss(demo):
    """Per step, loss = causal_lm_loss + hrm · kl_loss, for each HRM run."""
    for run in RUNS["causal_lm"]:
        hrm = float(run.split("_", 1)[1])
        data = demo["data"][run]
        kl = data.scalar("loss_component/kl_loss")
        lm = data.scalar("loss_component/causal_lm_loss")
        loss = data.scalar("step/loss")
        assert kl is not None and lm is not None
        np.testing.assert_array_equal(kl.steps, loss.steps)  # one point per step
        assert np.all(np.isfinite(kl.values)) and np.all(kl.values >= 0)
        np.testing.assert_allclose(
            loss.values, lm.values + hrm * kl.values, rtol=1e-4, atol=1e-5
        )
    kl_mean = {
        run: np.mean(demo["data"][run].scalar("loss_component/kl_loss").values)
        for run in RUNS["causal_lm"]
    }
    # A heavier KL weight pushes the KL term down.
    assert kl_mean["hrm_10.0"] < kl_mean["hrm_0.5"] < kl_mean["hrm_0.001"]


def test_minimal_ratio_whole_model_and_per_layer(demo):
    """function_fit has exact whole-model ratios; MNIST runs per-layer ratios."""
    ff = demo["data"]["function_fit"]
    mr = ff.scalar("hessian/min_ratio")
    assert mr is not None and len(mr) >= 3
    assert mr.content["method"] == "exact" and mr.content["n_params"] == 1090
    total = (
        mr.values
        + ff.scalar("hessian/zero_ratio").values
        + ff.scalar("hessian/negative_ratio").values
    )
    np.testing.assert_allclose(total, 1.0, atol=1e-6)  # shares of one spectrum
    assert np.all((mr.values >= 0) & (mr.values <= 1))
    assert np.all(np.isfinite(ff.scalar("hessian/probe_loss").values))
    for run in RUNS["seed003"][:8]:
        layer = demo["data"][run].tensor("hessian_layer/min_ratio")
        assert layer is not None and len(layer) >= 1, run
        assert len(layer.names) == 8  # 4 kernels and 4 biases
        assert np.all((layer.values >= 0) & (layer.values <= 1))
        assert demo["data"][run].scalar("hessian/min_ratio").content["n_params"] == (
            16_750
        )


def test_trajectories_of_the_eight_mnist_runs_share_one_projection(demo):
    """Each MNIST run has a snapshot at step 0 and every epoch, same projection."""
    seeds = set()
    finals = []
    for run in RUNS["seed003"][:8]:
        t = demo["data"][run].tensor("trajectory/projection")
        assert t is not None, run
        epochs = demo["data"][run].last_step // 5  # 1,000 examples / batch 200
        np.testing.assert_array_equal(t.steps, np.arange(epochs + 1) * 5)
        assert np.all(np.isfinite(t.values))
        seeds.add((t.content["seed"], t.content["dim"], t.content["n_params"]))
        finals.append(t.values[-1])
    assert len(seeds) == 1 and next(iter(seeds))[2] == 16_750
    # Different seeds: different end points.
    assert np.std(np.stack(finals), axis=0).max() > 0


# -- the tab's routes serve it -------------------------------------------------------


def test_route_runs_lists_every_demo_run(client):
    """/runs lists the 18 runs."""
    assert sorted(get_json(client, "runs")) == sorted(ALL_RUNS)


def test_route_flags_match_the_diagnosis(client, demo):
    """/flags gives each seed-004 run exactly its flags, as run_report does."""
    for run, wanted in PATHOLOGY_KINDS.items():
        body = get_json(client, f"flags?run={run}")
        assert body == json.loads(json.dumps(diagnosis.run_report(demo["data"][run])))
        got = {f["kind"] for f in body["flags"] if f["severity"] != "info"}
        assert got == wanted, run
    healthy = get_json(client, "flags?run=healthy")
    assert not [f for f in healthy["flags"] if f["severity"] in ("error", "warning")]


def test_route_slices_serves_both_slices_of_both_runs(client, demo):
    """/slices?run=mrl&run=smrl serves every point of each slice series."""
    body = get_json(client, "slices?run=mrl&run=smrl")
    for run in ("mrl", "smrl"):
        slices = body["runs"][run]["slices"]
        assert set(slices) == {"w_0_96", "w_96_192"}
        for name, entry in slices.items():
            ref = demo["data"][run].scalar(f"slice/{name}/grad_mean_abs")
            got = entry["grad_mean_abs"]
            assert got["steps"] == ref.steps.tolist()
            np.testing.assert_allclose([number(v) for v in got["values"]], ref.values)
            assert entry["content"]["variable"] == ref.content["variable"]


def test_route_loss_components_serves_kl_and_lm(client):
    """/loss_components serves both components of the three HRM runs."""
    q = "&".join(f"run={r}" for r in RUNS["causal_lm"])
    body = get_json(client, f"loss_components?{q}")
    for run in RUNS["causal_lm"]:
        comps = body["runs"][run]
        assert set(comps) == {"kl_loss", "causal_lm_loss"}
        assert comps["causal_lm_loss"]["total_points"] > 100
        assert all(math.isfinite(number(v)) for v in comps["kl_loss"]["values"])


def test_route_curvature_serves_min_ratio_against_loss(client, demo):
    """/curvature?run=function_fit pairs each probe's loss with its minimal ratio."""
    body = get_json(client, "curvature?run=function_fit")
    assert body["available"] is True
    pairs = body["min_ratio_vs_loss"]
    ff = demo["data"]["function_fit"]
    assert pairs["steps"] == ff.scalar("hessian/min_ratio").steps.tolist()
    np.testing.assert_allclose(
        [number(v) for v in pairs["y"]], ff.scalar("hessian/min_ratio").values
    )
    np.testing.assert_allclose(
        [number(v) for v in pairs["x"]], ff.scalar("hessian/probe_loss").values
    )
    layer = get_json(client, "curvature?run=mnist_run0")
    assert layer["available"] is True and "hessian/min_ratio" in layer["series"]


def test_route_trajectory_projects_the_mnist_runs_together(client, demo):
    """/trajectory over the eight MNIST runs gives each its 2-D path in one PCA."""
    q = "&".join(f"run={r}" for r in RUNS["seed003"][:8])
    body = get_json(client, f"trajectory?{q}")
    assert body["available"] is True
    assert sorted(body["runs"]) == sorted(RUNS["seed003"][:8])
    for run, path in body["runs"].items():
        n = len(demo["data"][run].tensor("trajectory/projection"))
        assert len(path["xy"]) == n and len(path["steps"]) == n
        assert all(len(p) == 2 for p in path["xy"])
    ratio = [number(r) for r in body["explained_variance_ratio"]]
    assert len(ratio) == 2 and 0 < ratio[1] <= ratio[0] <= 1


def test_route_overview_and_layers_serve_seed004(client):
    """/overview and /layers serve the exploding run's NaN and per-layer norms."""
    body = get_json(client, "overview?run=exploding")
    values = body["series"]["step/loss"]["values"]
    assert "NaN" in values  # the NaN is sent, not dropped
    layers = get_json(client, "layers?run=vanishing&stat=grad_norm")
    assert len(layers["update_ratio"]["variables"]) == 14  # 7 dense layers


# Each view of the tab with the demo run that shows it best.
VIEW_RUNS = [
    ("health", None),
    ("overview", "exploding"),
    ("layers", "vanishing"),
    ("slices", "smrl"),
    ("loss_components", "hrm_0.5"),
    ("curvature", "mnist_run0"),
    ("flags", "exploding"),
]


def _drawn_points(frame) -> int:
    """Counts the data points of every chart the tab has drawn."""
    return frame.evaluate(
        """() => Object.values(window.__gradHealth.charts).reduce((n, c) => {
             if (!c || c.isDisposed && c.isDisposed()) return n;
             const series = (c.getOption() || {}).series || [];
             return n + series.reduce((m, s) => m + ((s.data || []).length), 0);
           }, 0)"""
    )


def _drawn_series(frame, chart: str) -> dict[str, list]:
    """The drawn series of a chart, by name."""
    return {
        s["name"]: s["data"]
        for s in frame.evaluate(
            "(k) => window.__gradHealth.charts[k].getOption().series", chart
        )
    }


def _assert_line_is(drawn: list, series: dict) -> None:
    """A drawn line ([step, shown, logged]) holds exactly a route's series S."""
    assert [p[0] for p in drawn] == series["steps"]
    for point, value in zip(drawn, series["values"], strict=True):
        if isinstance(value, str):  # "NaN", "Infinity": drawn as a marker
            assert point[2] is None
        else:
            assert point[2] == value


def _assert_views_draw_the_routes(frame, view: str, run: str, get) -> None:
    """Compares each chart of a view with the values of the route it draws."""
    if view == "health":
        table = {row["run"]: row for row in get("health")["runs"]}
        shown = frame.evaluate(
            """() => [...document.querySelectorAll('#gh-health tbody tr')]
              .map((tr) => [tr.dataset.run, tr.dataset.worst || null])"""
        )
        expect = [[r, row["worst"]] for r, row in table.items()]
        assert sorted(shown, key=str) == sorted(expect, key=str)
    elif view == "overview":
        body = get("overview", run=run)
        charts = {"overview": ("loss", "grad norm"), "update": ("update ratio",)}
        keys = {
            "loss": "step/loss",
            "grad norm": "step/grad_norm",
            "update ratio": "step/update_ratio",
        }
        for chart, names in charts.items():
            drawn = _drawn_series(frame, chart)
            for name in names:
                _assert_line_is(drawn[name], body["series"][keys[name]])
    elif view == "layers":
        body = get("layers", run=run)
        cells = {
            (c[0], c[1]): c[3] for c in _drawn_series(frame, "heatmap")[body["stat"]]
        }
        for yi, row in enumerate(body["heatmap"]["values"]):
            for xi, value in enumerate(row):
                assert cells[(xi, yi)] == value
        ratio = body["update_ratio"]["values"]
        if any(isinstance(v, str) for v in ratio):
            ratio = get("last_finite", run=run, key="layer/update_ratio")["values"]
        dots = _drawn_series(frame, "update_ratio")["update ratio"]
        assert [p[0] for p in dots] == [v if v > 0 else None for v in ratio]
    elif view == "slices":
        drawn = _drawn_series(frame, "slices")
        body = get("slices", run=ALL_RUNS)["runs"]
        with_slices = {r for r, d in body.items() if d["slices"]}
        assert {name.split(" · ")[0] for name in drawn} == with_slices
        for r in with_slices:
            for name, sl in body[r]["slices"].items():
                _assert_line_is(drawn[f"{r} · {name} average |g|"], sl["grad_mean_abs"])
                _assert_line_is(drawn[f"{r} · {name} variance"], sl["grad_variance"])
    elif view == "loss_components":
        body = get("loss_components", run=ALL_RUNS)["runs"]
        for r, components in body.items():
            for name, series in components.items():
                _assert_line_is(_drawn_series(frame, f"loss_{name}")[r], series)
    elif view == "curvature":
        body = get("curvature", run=run)["series"]
        drawn = _drawn_series(frame, "curv_time")
        for name, key in (
            ("min ratio", "hessian/min_ratio"),
            ("negative ratio", "hessian/negative_ratio"),
            ("top eigenvalue (sharpness)", "hessian/top_eigenvalue"),
        ):
            if key in body:
                _assert_line_is(drawn[name], body[key])
        # The view says which curvature steps' minimal ratio is undetermined
        # (its [low, high] range half of [0, 1] or wider), as the route gives them.
        low, high = body["hessian/min_ratio_low"], body["hessian/min_ratio_high"]
        wide = [
            step
            for step, lo, hi in zip(
                low["steps"], low["values"], high["values"], strict=True
            )
            if not isinstance(lo, str) and not isinstance(hi, str) and hi - lo >= 0.5
        ]
        shown = frame.evaluate(
            """() => { const p = document.querySelector('[data-undetermined-steps]');
              return p ? p.dataset.undeterminedSteps : ''; }"""
        )
        assert shown == ",".join(str(step) for step in wide)
        _assert_line_is(
            _drawn_series(frame, "noise_scale")["noise scale"],
            body["window/noise_scale"],
        )
        traj = get("trajectory", run=ALL_RUNS)
        drawn = _drawn_series(frame, "trajectory")
        assert set(drawn) == set(traj["runs"])
        for r, t in traj["runs"].items():
            assert [[p[0], p[1]] for p in drawn[r]] == t["xy"]
    elif view == "flags":
        report = get("flags", run=run)
        kinds = frame.evaluate(
            "() => [...document.querySelectorAll('#gh-flags li')]"
            ".map((li) => li.dataset.kind)"
        )
        assert kinds == [f["kind"] for f in report["flags"]] and len(kinds) >= 2


@pytest.mark.browser
def test_every_view_shows_the_demo_in_a_real_tab(demo, tmp_path):
    """A real TensorBoard on the demo draws each view's route values; screenshots."""
    import shutil
    import time
    import urllib.parse
    import urllib.request

    from tests import gh_logdirs

    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("chromium is not installed")
    sync_api = pytest.importorskip("playwright.sync_api")
    port = gh_logdirs.free_port()
    proc = gh_logdirs.start_tensorboard(demo["logdir"], port)
    base = f"http://127.0.0.1:{port}"

    def get(route: str, **params):
        query = urllib.parse.urlencode(params, doseq=True)
        with urllib.request.urlopen(f"{base}{PREFIX}{route}?{query}", timeout=60) as r:
            return json.loads(r.read())

    try:
        deadline = time.time() + 120
        while True:
            try:
                if len(get("runs")) == len(ALL_RUNS):
                    break
            except OSError:
                pass
            assert time.time() < deadline and proc.poll() is None, "no tensorboard"
            time.sleep(0.5)
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(
                executable_path=chromium,
                headless=True,
                args=[
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-background-networking",
                ],
            )
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(f"{base}/#gradient_health")
            frame = page.wait_for_selector("iframe", timeout=60000).content_frame()
            frame.wait_for_function(
                "() => window.__gradHealth && window.__gradHealth.renders > 0",
                timeout=120000,
            )
            for view, run in VIEW_RUNS:
                if run is not None:  # open the run from the run list, as a user does
                    n = frame.evaluate("() => window.__gradHealth.renders")
                    frame.evaluate(
                        """(run) => [...document.querySelectorAll('#gh-runs li')]
                          .find((li) => li.dataset.run === run)
                          .querySelector('.gh-run-name').click()""",
                        run,
                    )
                    frame.wait_for_function(
                        """([n, run]) => window.__gradHealth.renders > n
                          && window.__gradHealth.lastRender.run === run""",
                        arg=[n, run],
                        timeout=120000,
                    )
                n = frame.evaluate("() => window.__gradHealth.renders")
                frame.click(f"button[data-view={view}]")
                frame.wait_for_function(
                    """([n, view, run]) => {
                      const d = window.__gradHealth;
                      return d.renders > n && d.lastRender && d.lastRender.view === view
                        && (run === null || d.lastRender.run === run);
                    }""",
                    arg=[n, view, run],
                    timeout=120000,
                )
                if view not in ("health", "flags"):
                    assert _drawn_points(frame) > 0, view
                _assert_views_draw_the_routes(frame, view, run, get)
                page.screenshot(path=str(tmp_path / f"screenshot-{view}.png"))
            assert frame.evaluate("() => window.__gradHealth.errors") == []
            browser.close()
    finally:
        proc.terminate()
        proc.wait(timeout=30)

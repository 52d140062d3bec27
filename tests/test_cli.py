"""Tests of ``tb-gradhealth check`` as a real subprocess on real event files."""

from __future__ import annotations

import json
import math
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.summary.writer.event_file_writer import EventFileWriter

from tests import eventfiles

ROOT = pathlib.Path(__file__).resolve().parents[1]
N = 300
STEPS = np.arange(1, N + 1)


# Makes TensorBoard find no data server binary, as on a platform without one.
NO_DATA_SERVER = {"TENSORBOARD_DATA_SERVER_BINARY": os.devnull + "-missing"}


def cli(
    *args: str, timeout: float = 120, env_extra: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    env = dict(os.environ, **(env_extra or {}))
    env["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT), *filter(None, [env.get("PYTHONPATH")])]
    )
    return subprocess.run(
        [sys.executable, "-m", "tb_gradplugin.cli", *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        cwd=ROOT,
    )


def strict_json(text: str):
    def reject(name):
        raise ValueError(f"non-standard JSON constant {name}")

    return json.loads(text, parse_constant=reject)


def healthy(logdir, run="healthy"):
    loss = 2.3 * np.exp(-STEPS / 60) + 0.1
    grad = 2.0 * np.exp(-STEPS / 200)
    return eventfiles.write_run(
        logdir,
        run,
        steps=STEPS,
        loss=loss,
        grad_norm=grad,
        param_norm=np.full(N, 10.0),
        variables=["dense/kernel", "dense/bias"],
        layers={"grad_norm": np.tile([1.0, 0.1], (N, 1))},
    )


def diverging(logdir, run="diverging"):
    loss = 2.3 * np.exp(-STEPS / 60) + 0.1
    grad = np.ones(N)
    grad[150:] = np.logspace(0, 8, N - 150)
    loss[150:] = loss[149] * np.logspace(0, 6, N - 150)
    loss[250:] = np.nan
    grad[250:] = np.inf
    return eventfiles.write_run(
        logdir,
        run,
        steps=STEPS,
        loss=loss,
        grad_norm=grad,
        param_norm=np.full(N, 10.0),
        nonfinite_loss=np.r_[np.zeros(250), np.ones(N - 250)],
    )


def oscillating(logdir, run="oscillating"):
    loss = np.where(STEPS % 2, 0.56, 0.9)
    loss[:3] = 0.69
    return eventfiles.write_run(
        logdir,
        run,
        steps=STEPS,
        loss=loss,
        grad_norm=np.where(STEPS % 2, 19.0, 45.0),
        param_norm=np.full(N, 13.0),
    )


def assert_one_clean_error_line(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, proc
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("tb-gradhealth: error: ")
    assert "Traceback" not in proc.stderr
    return lines[0]


def test_healthy_run_exits_0_and_says_healthy(tmp_path):
    """A healthy run: exit 0 and a human line naming the run as healthy."""
    healthy(tmp_path)
    proc = cli("check", tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "healthy (last step 300): healthy, no flags" in proc.stdout
    assert proc.stderr == ""


def test_error_flag_exits_1_and_is_printed(tmp_path):
    """A diverging run fails by default and lists its errors with advice."""
    diverging(tmp_path)
    proc = cli("check", tmp_path)
    assert proc.returncode == 1, proc.stderr
    assert "ERROR   non_finite" in proc.stdout
    assert "ERROR   exploding_gradient" in proc.stdout
    assert "Advice:" in proc.stdout


def test_fail_on_levels(tmp_path):
    """--fail-on picks the severity that fails: warning-only runs pass at error."""
    oscillating(tmp_path)
    assert cli("check", tmp_path).returncode == 0
    assert cli("check", tmp_path, "--fail-on", "error").returncode == 0
    assert cli("check", tmp_path, "--fail-on", "warning").returncode == 1
    diverging(tmp_path)
    assert cli("check", tmp_path, "--fail-on", "never").returncode == 0


def test_json_is_one_strict_object_matching_the_contract(tmp_path):
    """--json prints exactly one strict-JSON object with the contract's shape."""
    healthy(tmp_path)
    diverging(tmp_path)
    proc = cli("check", tmp_path, "--json")
    assert proc.returncode == 1
    assert proc.stdout.count("\n") == 1
    data = strict_json(proc.stdout)
    assert list(data) == ["runs"]
    runs = {r["run"]: r for r in data["runs"]}
    assert sorted(runs) == ["diverging", "healthy"]
    assert runs["healthy"] == {"run": "healthy", "last_step": 300, "flags": []}
    flags = runs["diverging"]["flags"]
    assert {f["kind"] for f in flags} >= {"non_finite", "exploding_gradient"}
    contract = {"kind", "severity", "first_step", "last_step", "layer"}
    for flag in flags:
        assert contract | {"message", "advice"} <= set(flag)
        assert isinstance(flag["first_step"], int)
    nf = next(f for f in flags if f["kind"] == "non_finite")
    assert nf["first_step"] == 251 and nf["last_step"] == 300


def test_json_encodes_non_finite_evidence_as_strings(tmp_path):
    """Evidence that is NaN comes out as the string "NaN", never a bare NaN."""
    # No loss series: the explosion's loss evidence is NaN.
    grad = np.ones(N)
    grad[100:250] = np.logspace(0, 9, 150)
    grad[250:] = np.nan
    eventfiles.write_run(
        tmp_path, "noloss", steps=STEPS, grad_norm=grad, param_norm=np.full(N, 10.0)
    )
    proc = cli("check", tmp_path, "--json")
    data = strict_json(proc.stdout)
    (flag,) = [f for f in data["runs"][0]["flags"] if f["kind"] == "exploding_gradient"]
    assert flag["evidence"]["loss_at_onset"] == "NaN"
    assert flag["evidence"]["growth"] > 1e8


def test_missing_logdir_is_one_error_line(tmp_path):
    """A LOGDIR that does not exist: exit 2, one line, no traceback."""
    line = assert_one_clean_error_line(cli("check", tmp_path / "nope"))
    assert "not found" in line


def test_logdir_that_is_a_file_is_one_error_line(tmp_path):
    """A LOGDIR that is a file: exit 2, one line."""
    f = tmp_path / "file.txt"
    f.write_text("x")
    assert "not a directory" in assert_one_clean_error_line(cli("check", f))


def test_logdir_without_gradient_health_runs_is_an_error(tmp_path):
    """Event files of other plugins only: exit 2 'no gradient-health runs'."""
    writer = EventFileWriter(str(tmp_path / "other"))
    value = summary_pb2.Summary.Value(tag="loss", simple_value=1.0)
    writer.add_event(
        event_pb2.Event(
            step=1, wall_time=1.0, summary=summary_pb2.Summary(value=[value])
        )
    )
    writer.close()
    line = assert_one_clean_error_line(cli("check", tmp_path))
    assert "no gradient-health runs" in line
    assert "no gradient-health runs" in assert_one_clean_error_line(
        cli("check", tmp_path / "other")
    )


@pytest.mark.parametrize(
    "args",
    [(), ("check",), ("check", ".", "--fail-on", "bogus"), ("frobnicate", ".")],
)
def test_usage_errors_are_one_line_exit_2(args):
    """Bad command lines exit 2 with one line on stderr."""
    assert_one_clean_error_line(cli(*args))


def test_help_exits_0():
    """--help prints the usage and exits 0."""
    proc = cli("check", "--help")
    assert proc.returncode == 0
    assert "--fail-on" in proc.stdout


def damaged_logdir(logdir):
    """A healthy run beside a garbage event file, and a diverging run cut short."""
    healthy(logdir, "good")
    eventfiles.write_garbage_event_file(logdir / "good")
    cut = diverging(logdir, "cut")
    eventfiles.truncate_event_file(cut, 5)


def test_corrupt_file_next_to_good_ones_warns_and_uses_the_data(tmp_path):
    """Garbage and a truncated file give warnings; the good data still counts."""
    damaged_logdir(tmp_path)
    proc = cli("check", tmp_path, "--json")
    assert proc.returncode == 1, proc.stderr
    data = strict_json(proc.stdout)
    runs = {r["run"]: r for r in data["runs"]}
    assert runs["good"]["flags"] == [] and runs["good"]["last_step"] == N
    assert any(f["kind"] == "non_finite" for f in runs["cut"]["flags"])
    warnings = proc.stderr.strip().splitlines()
    assert len(warnings) == 2, proc.stderr
    assert all(w.startswith("tb-gradhealth: warning: ") for w in warnings)
    assert any("corrupt" in w for w in warnings)
    assert any("partial record" in w for w in warnings)
    assert "Traceback" not in proc.stderr


def test_corrupt_and_cut_files_warn_the_same_without_a_data_server(tmp_path):
    """The Python loader's fallback says so once and reports the same damage."""
    damaged_logdir(tmp_path)
    fast = cli("check", tmp_path, "--json")
    slow = cli("check", tmp_path, "--json", env_extra=NO_DATA_SERVER)
    assert slow.returncode == fast.returncode == 1, slow.stderr
    assert strict_json(slow.stdout) == strict_json(fast.stdout)
    warnings = slow.stderr.strip().splitlines()
    assert len(warnings) == 3, slow.stderr
    assert all(w.startswith("tb-gradhealth: warning: ") for w in warnings)
    assert sum("Python loader" in w for w in warnings) == 1
    assert any("corrupt" in w for w in warnings)
    assert any("partial record" in w for w in warnings)
    assert "Traceback" not in slow.stderr


def test_fallback_keeps_exit_status_and_output(tmp_path):
    """Without a data server the text output and exit status are unchanged."""
    diverging(tmp_path)
    oscillating(tmp_path)
    fast = cli("check", tmp_path)
    slow = cli("check", tmp_path, env_extra=NO_DATA_SERVER)
    assert fast.stderr == ""
    assert slow.returncode == fast.returncode == 1
    assert slow.stdout == fast.stdout
    assert len(slow.stderr.strip().splitlines()) == 1, slow.stderr
    assert "Python loader" in slow.stderr


def test_hostile_run_names_survive_text_and_json(tmp_path):
    """Run names with quotes, markup, spaces, unicode and a newline stay intact."""
    names = ['a "quoted" <script>alert(1)</script>', "ünï cødé ✓", "line\nbreak"]
    for name in names:
        oscillating(tmp_path, name)
    proc = cli("check", tmp_path, "--json")
    assert proc.returncode == 0, proc.stderr
    data = strict_json(proc.stdout)
    assert sorted(r["run"] for r in data["runs"]) == sorted(names)
    text = cli("check", tmp_path)
    assert text.returncode == 0
    assert "line\\nbreak (last step 300)" in text.stdout
    assert "<script>" in text.stdout  # printed verbatim, it is plain text


def test_run_in_logdir_root_is_named_dot(tmp_path):
    """Event files directly in LOGDIR form the run '.'."""
    healthy(tmp_path, "")
    data = strict_json(cli("check", tmp_path, "--json").stdout)
    assert [r["run"] for r in data["runs"]] == ["."]


def test_cli_does_not_import_tensorflow(tmp_path):
    """The command reads event files without importing TensorFlow."""
    healthy(tmp_path)
    code = (
        "import sys, tb_gradplugin.cli as c; rc = c.main(['check', sys.argv[1]]); "
        "print('TF', 'tensorflow' in sys.modules, file=sys.stderr); sys.exit(rc)"
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "TF False" in proc.stderr


def test_flags_match_the_library_on_the_same_files(tmp_path):
    """The CLI's JSON equals run_report over the same run read back in-process."""
    from tb_gradplugin import diagnosis, reader

    diverging(tmp_path)
    data = strict_json(cli("check", tmp_path, "--json").stdout)
    provider = reader.provider_for_logdir(tmp_path)
    want = diagnosis.run_report(reader.read_run(provider, "diverging"))
    assert data["runs"] == [json.loads(json.dumps(want))]
    assert not any(
        isinstance(v, float) and not math.isfinite(v)
        for f in want["flags"]
        for v in f["evidence"].values()
    )

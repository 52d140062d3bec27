"""The host side of the shim: flight recorder, row order, step offsets."""

from __future__ import annotations

import numpy as np

from tb_gradplugin import reader, reducer, ring, stats, summary
from tb_gradplugin.event_writer import EventWriter


def _rows(packing, steps, grad_sq, loss=None):
    """Step rows with one variable: its Σg² per step, everything else benign."""
    out = np.zeros([len(steps), packing.width], np.float32)
    idx = packing.index
    out[:, idx["grad_sq"]] = np.asarray(grad_sq, np.float32)[:, None]
    out[:, idx["param_sq"]] = 1.0
    out[:, idx["loss"]] = 1.0 if loss is None else np.asarray(loss)[:, None]
    out[:, idx["loss_known"]] = 1.0
    words = np.asarray(steps, np.int64)[:, None].view(np.float32)
    out[:, idx["step"]] = words
    return out


def _reducer(tmp_path, update_freq, flight=4):
    layout = stats.Layout(["w"], [(3,)])
    packing = ring.row_packing(1, 0, 0)
    red = reducer.BlockReducer(
        layout, packing, [], update_freq, "epoch", False, flight_steps=flight
    )
    writer = EventWriter(tmp_path / "run")
    red.set_writer(
        writer, lambda: summary.tag_metadata(layout, update_freq, "epoch", [], [])
    )
    return red, packing, writer


def _logged_steps(tmp_path, writer):
    writer.flush()
    run = reader.read_run(reader.provider_for_logdir(str(tmp_path)), "run")
    return run.scalars["step/grad_norm"]


def test_gradient_norm_jump_writes_the_steps_around_it(tmp_path):
    """A 10x jump over the recent median logs ±flight steps, in step order."""
    red, packing, writer = _reducer(tmp_path, 10)
    grad_sq = np.ones(40)
    grad_sq[24] = 400.0  # step 25: norm 20 against a median of 1
    steps = np.arange(1, 41)
    # Two blocks, the jump in the second: the held rows of the first are used.
    red.add_rows(_rows(packing, steps[:23], grad_sq[:23]))
    red.add_rows(_rows(packing, steps[23:], grad_sq[23:]))
    red.release(final=True)
    series = _logged_steps(tmp_path, writer)
    assert series.steps.tolist() == [
        1,
        10,
        20,
        21,
        22,
        23,
        24,
        25,
        26,
        27,
        28,
        29,
        30,
        40,
    ]
    assert series.values[series.steps.tolist().index(25)] == 20.0


def test_first_nonfinite_step_only_triggers_the_recorder(tmp_path):
    """A run of NaN steps is one anomaly (its start), not one per step."""
    red, packing, writer = _reducer(tmp_path, 10, flight=2)
    loss = np.ones(30)
    loss[14:] = np.nan  # from step 15 on
    red.add_rows(_rows(packing, np.arange(1, 31), np.ones(30), loss))
    assert red.anomalies == [15]
    red.release(final=True)
    steps = _logged_steps(tmp_path, writer).steps.tolist()
    assert steps == [1, 10, 13, 14, 15, 16, 17, 20, 30]


def test_unknown_loss_writes_no_loss_point_and_no_anomaly(tmp_path):
    """Rows whose loss is unknown write no loss point and are no NaN anomaly."""
    red, packing, writer = _reducer(tmp_path, 1)
    rows = _rows(packing, np.arange(1, 11), np.ones(10))
    rows[4:, packing.index["loss_known"]] = 0.0  # from step 5 on
    rows[4:, packing.index["loss"]] = np.nan
    red.add_rows(rows)
    red.release(final=True)
    writer.flush()
    run = reader.read_run(reader.provider_for_logdir(str(tmp_path)), "run")
    assert run.scalars["step/loss"].steps.tolist() == [1, 2, 3, 4]
    assert run.scalars["step/grad_norm"].steps.tolist() == list(range(1, 11))
    assert not red.anomalies


def test_steps_restarting_at_one_continue_from_the_runs_last_step(tmp_path):
    """A reducer after a recompile writes its steps after the run's last one."""
    red, packing, writer = _reducer(tmp_path, 1)
    red.run_last_step = 7
    red.add_rows(_rows(packing, np.arange(1, 4), np.ones(3)))
    red.release(final=True)
    assert _logged_steps(tmp_path, writer).steps.tolist() == [8, 9, 10]

"""The flight recorder: which held steps around an anomaly are written."""

from __future__ import annotations

import numpy as np

from tb_gradplugin import flight_recorder
from tb_gradplugin.flight_recorder import FlightRecorder, Held


def _held(step, arrived=None):
    return Held(step, True, np.zeros(3), None, None, arrived or 1e12)


def _feed(recorder, norms, finite=None):
    """Holds and watches one step per norm, steps 1, 2, ..."""
    out = []
    for i, norm in enumerate(norms):
        held = _held(i + 1)
        held.full = recorder.in_range(held.step)
        recorder.watch(held, norm, True if finite is None else finite[i])
        recorder.hold(held)
        out.append(held)
    return out


def test_a_jump_over_the_recent_median_marks_the_steps_around_it():
    """A 10x jump: the steps within flight_steps before and after it are full."""
    recorder = FlightRecorder(flight_steps=3)
    norms = [1.0] * 12 + [flight_recorder.JUMP_FACTOR * 1.0] + [1.0] * 5
    held = _feed(recorder, norms)
    assert recorder.anomalies == [13]
    assert [h.step for h in held if h.full] == [10, 11, 12, 13, 14, 15, 16]


def test_just_below_the_jump_factor_is_no_anomaly():
    """9.9x the median is ordinary; fewer than 8 steps of history judge nothing."""
    recorder = FlightRecorder(flight_steps=3)
    _feed(recorder, [1.0] * 10 + [9.9])
    assert recorder.anomalies == []
    early = FlightRecorder(flight_steps=3)
    _feed(early, [1.0] * 5 + [100.0])
    assert early.anomalies == []


def test_only_the_first_of_a_non_finite_stretch_is_an_anomaly():
    """NaN at steps 4-6, finite again, NaN at 9: anomalies at 4 and 9."""
    recorder = FlightRecorder(flight_steps=0)
    finite = [True] * 3 + [False] * 3 + [True] * 2 + [False]
    _feed(recorder, [1.0] * 9, finite)
    assert recorder.anomalies == [4, 9]


def test_take_releases_rows_no_later_anomaly_can_ask_for():
    """Rows older than the last minus flight_steps go; final takes all, in order."""
    recorder = FlightRecorder(flight_steps=4)
    _feed(recorder, [1.0] * 10)
    taken = recorder.take(final=False, keep_last=False)
    assert [h.step for h in taken] == list(range(1, 7))
    taken = recorder.take(final=True, keep_last=True)
    assert [h.step for h in taken] == list(range(7, 11))
    assert recorder.take(final=True, keep_last=False) == []


def test_a_row_held_too_long_is_released():
    """A row older than MAX_HOLD_S goes even when the flight range holds it."""
    recorder = FlightRecorder(flight_steps=100)
    recorder.hold(_held(1, arrived=1.0))  # monotonic time long ago
    recorder.hold(_held(2))
    assert [h.step for h in recorder.take(final=False, keep_last=False)] == [1]
    assert recorder.holds(recorder.held[0])


def test_recent_median_and_jumps_equal_numpy_over_the_last_norms():
    """The kept median is np.median of the last JUMP_HISTORY finite norms, each step."""
    rng = np.random.default_rng(3)
    norms = rng.lognormal(0.0, 0.5, 900)
    norms[rng.choice(900, 12, replace=False)] *= 30.0  # jumps to find
    norms[[100, 101, 400]] = np.nan  # non-finite steps are not in the history
    recorder = FlightRecorder(flight_steps=0)
    history: list[float] = []
    expected = []
    for step, norm in enumerate(norms, start=1):
        finite = bool(np.isfinite(norm))
        if finite and len(history) >= 8:
            median = np.median(history[-flight_recorder.JUMP_HISTORY :])
            assert recorder.recent_median() == median
            if norm >= flight_recorder.JUMP_FACTOR * median > 0:
                expected.append(step)
        elif not finite and (step == 1 or np.isfinite(norms[step - 2])):
            expected.append(step)  # a first non-finite step
        recorder.watch(_held(step), float(norm), finite)
        if finite:
            history.append(float(norm))
    assert recorder.anomalies == expected
    assert len(expected) > 3

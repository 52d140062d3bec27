"""The adaptive default of update_freq."""

from __future__ import annotations

from tb_gradplugin import update_freq


def test_adaptive_update_freq_keeps_events_and_disk_in_budget():
    """The default frequency is the smallest 1-2-5 step within both budgets."""
    # 17 events of 4 µs against 1 % of a 1 ms step: 6.8 steps -> 10.
    assert update_freq.adaptive_update_freq(0.001, 17, 500.0) == 10
    # A 1 s step: events are cheap; 4.2 KB per logged step: every 5 steps.
    assert update_freq.adaptive_update_freq(1.0, 17, 4200.0) == 5
    assert update_freq.adaptive_update_freq(1.0, 17, 900.0) == 1
    assert update_freq.adaptive_update_freq(None, 17, 2500.0) == 5
    assert update_freq.adaptive_update_freq(1e-5, 17, 100.0) == 1000

"""Tests of rule exploding_gradient, spikes (diagnosis.gradient_spikes)."""

from __future__ import annotations

import numpy as np

from tb_gradplugin.diagnosis import (
    diagnose,
)
from tests.diagnosis_runs import (
    N,
    healthy_grad,
    healthy_loss,
    kinds,
    only,
    rng,
    run_of,
)


def test_recovered_spike_is_info_only():
    """A 50x spike over three steps that comes back is info, never worse."""
    g = healthy_grad()
    g[250:253] *= 50
    flags = diagnose(run_of(loss=healthy_loss(), grad_norm=g))
    (flag,) = only(flags, "exploding_gradient")
    assert flag.severity == "info"
    assert (flag.first_step, flag.last_step) == (251, 253)


def test_huge_recovered_spike_is_a_warning_not_an_error():
    """A 1000x spike that comes back is a warning (seed 004: beyond 100x)."""
    g = healthy_grad()
    g[250] *= 1000
    flags = diagnose(run_of(loss=healthy_loss(), grad_norm=g))
    (flag,) = only(flags, "exploding_gradient")
    assert flag.severity == "warning"
    assert flag.evidence["worst_step"] == 251


def test_batch_size_one_spread_is_not_a_spike():
    """Gradients that swing over decades from example to example are no spikes."""
    g = 10 ** rng(4).uniform(-8, 1, N)
    flags = diagnose(run_of(loss=healthy_loss(), grad_norm=g))
    assert "exploding_gradient" not in kinds(flags, "warning")


def test_rolling_minimum_screen_never_hides_a_spike():
    """Where a point clears its window's q90 (numpy), the screen lets it through."""
    from tb_gradplugin.diagnosis.gradient_spikes import _may_spike

    rng = np.random.default_rng(4)
    window, threshold = 20, 1.0
    caught = 0
    for _ in range(300):
        n = int(rng.integers(12, 120))
        x = rng.normal(scale=float(rng.choice([0.01, 0.3, 0.6])), size=n)
        # Rises near the threshold over a narrow range: the bound is tight there.
        x[rng.random(n) < 0.05] += rng.uniform(0.95, 1.1)
        judged = np.arange(n) >= 10
        q90 = np.array(
            [
                np.quantile(x[max(0, i - window) : i], 0.9) if i else np.nan
                for i in range(n)
            ]
        )
        spiked = bool(np.any(judged & (x - q90 >= threshold)))
        caught += spiked
        if spiked:
            assert _may_spike(x, window, judged, threshold)
    assert caught > 10  # the draws hold spikes to check

"""Tests of rule exploding_gradient, spikes (diagnosis.gradient_spikes)."""

from __future__ import annotations

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

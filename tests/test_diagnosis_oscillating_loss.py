"""Tests of rule oscillating_loss (diagnosis.oscillating_loss)."""

from __future__ import annotations

import numpy as np

from tb_gradplugin.diagnosis import (
    Thresholds,
    diagnose,
)
from tests.diagnosis_runs import (
    kinds,
    only,
    rng,
    run_of,
)


def test_seed_004_style_alternation_is_oscillating():
    """A loss alternating 0.55/0.9 around its start without settling is flagged."""
    s = np.arange(1, 61)
    loss = np.where(s % 2, 0.56, 0.86) + 0.02 * rng(8).standard_normal(60)
    loss[:3] = 0.69
    grad = np.where(s % 2, 19.0, 45.0)
    flags = diagnose(
        run_of(steps=s, loss=loss, grad_norm=grad, param_norm=np.full(60, 13.5))
    )
    (flag,) = only(flags, "oscillating_loss")
    assert flag.severity == "warning"
    assert flag.evidence["lag1_autocorrelation"] < -0.5
    assert "loss_plateau" not in kinds(flags)


def test_slow_waves_of_the_block_means_are_oscillating():
    """Per-batch noise on top of waves that never settle is flagged (block means)."""
    s = np.arange(1, 4001)
    wave = 0.4 + 0.3 * np.sin(2 * np.pi * s / 400)
    loss = np.abs(wave + 0.3 * rng(9).standard_normal(4000))
    loss[:100] = 0.69 + 0.05 * rng(10).standard_normal(100)
    flags = diagnose(run_of(steps=s, loss=loss, grad_norm=np.ones(4000)))
    (flag,) = only(flags, "oscillating_loss")
    assert flag.evidence["measured_on"].startswith("means of blocks")


def test_noisy_but_converging_loss_is_not_oscillating():
    """Heavy per-batch noise on a falling loss does not count as oscillation."""
    s = np.arange(1, 4001)
    loss = (0.7 * np.exp(-s / 800) + 0.05) * rng(11).exponential(1.0, 4000)
    flags = diagnose(run_of(steps=s, loss=loss, grad_norm=np.ones(4000)))
    assert kinds(flags, "warning") == set()


def test_epoch_periodic_zigzag_on_a_falling_loss_is_not_oscillating():
    """A loss that zig-zags with the data order while falling 5x is learning."""
    s = np.arange(1, 401)
    loss = 2.5 * np.exp(-s / 150) + 0.3 + 0.35 * (((s - 1) // 10) % 2)
    flags = diagnose(run_of(steps=s, loss=loss, grad_norm=np.ones(400)))
    assert kinds(flags, "warning") == set()


def test_swings_that_grow_back_above_the_start_are_oscillating():
    """Block means swinging from 0.01 up to 3x the initial loss, no NaN: flagged."""
    s = np.arange(1, 881)
    r = rng(23)
    blocks = np.r_[np.full(10, 0.8), r.choice([0.02, 0.3, 1.5, 3.0], 30)]
    loss = np.repeat(blocks, 22) * r.exponential(1.0, 880)
    flags = diagnose(run_of(steps=s, loss=loss, grad_norm=np.ones(880)))
    (flag,) = only(flags, "oscillating_loss")
    assert flag.evidence["rebound"] > 1


def test_batch_noise_around_a_falling_loss_is_not_oscillating():
    """Block means as noisy as batch-2 losses, around a falling trend: no flag."""
    s = np.arange(1, 451)
    wrong = 0.12 + 0.18 * np.exp(-s / 150)  # the share of examples still missed
    r = rng(30)
    loss = 1.5 * r.binomial(2, wrong) / 2 + 0.02 * r.random(450)
    run = run_of(steps=s, loss=loss, grad_norm=np.ones(450))
    assert only(diagnose(run), "oscillating_loss") == []
    # The series passes every other test of a swing: only the comparison with
    # batch noise (variance ratio, progress from the start) tells it apart.
    without = Thresholds(oscillation_variance_ratio=0.0)
    (flag,) = only(diagnose(run, without), "oscillating_loss")
    assert flag.evidence["variance_ratio"] < 3
    assert flag.evidence["improvement"] > 0.1


def test_step_to_step_alternation_with_rare_spikes_is_oscillating_not_a_plateau():
    """A loss alternating around chance level, spikes and all, is an oscillation."""
    s = np.arange(1, 601)
    loss = np.where(s % 2, 0.53, 0.9) + 0.03 * rng(31).standard_normal(600)
    loss[20::47] = 11.0
    flags = diagnose(run_of(steps=s, loss=loss, grad_norm=np.ones(600)))
    (flag,) = only(flags, "oscillating_loss")
    assert flag.severity == "warning"
    assert "loss_plateau" not in kinds(flags)
    # Without the spikes the block means are flat: the points show the swing.
    plain = np.where(s % 2, 0.53, 0.9) + 0.03 * rng(31).standard_normal(600)
    flags = diagnose(run_of(steps=s, loss=plain, grad_norm=np.ones(600)))
    (flag,) = only(flags, "oscillating_loss")
    assert flag.evidence["measured_on"] == "logged steps"
    assert flag.evidence["lag1_autocorrelation"] < -0.5

"""Tests of rule loss_plateau (diagnosis.loss_plateau)."""

from __future__ import annotations

import math

import numpy as np

from tb_gradplugin.diagnosis import (
    diagnose,
)
from tests.diagnosis_runs import (
    STEPS,
    N,
    healthy_grad,
    only,
    rng,
    run_of,
)


def test_loss_stuck_at_ln2_is_a_plateau_error():
    """A loss at ln 2 from the start is stuck at chance level (cs231n)."""
    loss = math.log(2) + 1e-4 * rng(12).standard_normal(N)
    flags = diagnose(run_of(loss=loss, grad_norm=np.ones(N)))
    (flag,) = only(flags, "loss_plateau")
    assert flag.severity == "error"
    assert flag.evidence["chance_classes"] == 2
    assert flag.first_step == 1


def test_loss_that_drops_to_chance_level_and_stays_is_a_plateau():
    """A loss that falls from 4 to ln 10 and stays there is flagged at the drop."""
    loss = np.full(N, math.log(10)) + 1e-3 * rng(13).standard_normal(N)
    loss[:40] = np.linspace(4.0, math.log(10), 40)
    flags = diagnose(run_of(loss=loss, grad_norm=np.ones(N)))
    (flag,) = only(flags, "loss_plateau")
    assert flag.evidence["chance_classes"] == 10
    assert 30 <= flag.first_step <= 80


def test_loss_that_plateaus_after_learning_is_not_flagged():
    """A loss that fell 80 % and then levels off is a converged run."""
    loss = 2.0 * np.exp(-STEPS / 50) + 0.4 + 0.01 * rng(14).standard_normal(N)
    flags = diagnose(run_of(loss=loss, grad_norm=healthy_grad()))
    assert flags == []

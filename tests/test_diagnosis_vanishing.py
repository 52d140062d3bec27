"""Tests of rule vanishing_gradient (diagnosis.vanishing)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tb_gradplugin.diagnosis import (
    diagnose,
)
from tests.diagnosis_runs import (
    VARS,
    N,
    healthy_loss,
    kinds,
    layer_block,
    layers_run,
    only,
    rng,
    run_of,
)


def test_vanishing_first_layer_with_stuck_loss_is_an_error():
    """‖g_first‖/‖g_last‖ ~ 1e-9 with the loss at ln 2 is an error (AutoTrainer)."""
    loss = math.log(2) + 1e-3 * rng(5).standard_normal(N)
    layers = layer_block(grad=(1e-10, 1e-10, 0.1, 0.05))
    flags = diagnose(
        run_of(loss=loss, grad_norm=np.full(N, 0.1), variables=VARS, layers=layers)
    )
    (flag,) = only(flags, "vanishing_gradient")
    assert flag.severity == "error"
    assert flag.layer == "seq/dense/kernel"
    assert flag.evidence["median_ratio_first_to_last"] == pytest.approx(1e-9, rel=1e-3)
    assert "loss_plateau" in kinds(flags, "error")


def test_vanishing_with_one_point_per_epoch_is_still_an_error():
    """Eight per-epoch points at ln 2 with a 1e-12 first-layer ratio: an error."""
    steps = np.arange(16, 129, 16)
    layers = layer_block(8, grad=(1e-13, 1e-13, 0.1, 0.05))
    flags = diagnose(
        run_of(
            steps=steps,
            loss=np.full(8, math.log(2)),
            grad_norm=np.full(8, 0.1),
            variables=VARS,
            layers=layers,
        )
    )
    (flag,) = only(flags, "vanishing_gradient")
    assert flag.severity == "error"


def test_small_first_layer_ratio_with_learning_loss_is_info():
    """The same ratio while the loss improves is info only."""
    layers = layer_block(grad=(1e-10, 1e-10, 0.1, 0.05))
    flags = diagnose(layers_run(layers))
    (flag,) = only(flags, "vanishing_gradient")
    assert flag.severity == "info"


def test_tiny_whole_model_gradient_with_flat_loss_is_vanishing():
    """‖g‖/‖w‖ ≈ 5e-4 with a flat loss (seed 004's stuck run) is vanishing."""
    loss = math.log(2) + 1e-4 * rng(6).standard_normal(N)
    flags = diagnose(
        run_of(loss=loss, grad_norm=np.full(N, 0.0015), param_norm=np.full(N, 3.1))
    )
    (flag,) = only(flags, "vanishing_gradient")
    assert flag.severity == "error" and flag.layer is None
    assert flag.evidence["median_grad_to_param_norm"] == pytest.approx(
        0.0015 / 3.1, rel=1e-3
    )


def test_converged_run_with_tiny_gradients_is_not_vanishing():
    """Tiny gradients after the loss fell 20x are convergence, not vanishing."""
    g = 1e-6 * np.ones(N)
    g[:50] = 1.0
    flags = diagnose(run_of(loss=healthy_loss(), grad_norm=g))
    assert "vanishing_gradient" not in kinds(flags)

"""Tests of rule saddle_point (diagnosis.saddle_point)."""

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
    only,
    rng,
    run_of,
)


def saddle_run(grad_at_probe: float, loss: np.ndarray):
    hs = np.array([100, 200, 300, 400, 500, 600])
    neg = np.array([0.02, 0.3, 0.35, 0.3, 0.32, 0.3])
    content = {"method": "exact", "tolerance": 1e-6, "probe_size": 64, "n_params": 90}
    return run_of(
        loss=loss,
        grad_norm=np.r_[np.ones(100), np.full(N - 100, grad_at_probe)],
        scalars={
            "hessian/negative_ratio": (hs, neg, content),
            "hessian/min_ratio": (hs, 1 - neg, content),
        },
    )


def test_small_gradient_and_negative_curvature_with_stuck_loss_is_a_saddle():
    """Near-zero gradient, 30 % negative eigenvalues and a flat loss: a warning."""
    loss = np.full(N, 1.2) + 1e-4 * rng(15).standard_normal(N)
    flags = diagnose(saddle_run(1e-3, loss))
    (flag,) = only(flags, "saddle_point")
    assert flag.severity == "warning"
    assert flag.first_step == 200
    assert flag.evidence["negative_ratio"] == pytest.approx(0.35)


def test_saddle_while_learning_is_info():
    """The same curvature while the loss still falls is info only."""
    flags = diagnose(saddle_run(1e-3, healthy_loss()))
    (flag,) = only(flags, "saddle_point")
    assert flag.severity == "info"


def test_large_gradient_while_learning_is_no_saddle():
    """Negative curvature with a normal gradient and a falling loss is no saddle."""
    assert "saddle_point" not in kinds(diagnose(saddle_run(0.5, healthy_loss())))


def test_stuck_loss_with_noisy_gradient_and_negative_curvature_is_a_saddle():
    """A flat loss counts as zero expected gradient even if batch noise is not 0."""
    loss = np.full(N, 1.2) + 1e-4 * rng(19).standard_normal(N)
    (flag,) = only(diagnose(saddle_run(0.5, loss)), "saddle_point")
    assert flag.severity == "warning" and flag.evidence["loss_stuck"] is True


def test_missing_hessian_is_no_saddle_flag():
    """Without hessian/* data the saddle rule stays silent."""
    loss = np.full(N, 1.2)
    assert "saddle_point" not in kinds(diagnose(run_of(loss=loss, grad_norm=loss)))


def test_zero_initialised_network_is_a_saddle_not_dead_layers():
    """All-zero weights: zero kernel gradients are no dead units; it is a saddle."""
    hs = np.arange(50, N + 1, 50)
    neg = np.full(hs.size, 0.2)
    layers = {
        "grad_norm": np.tile([0.0, 0.0, 0.0, 0.1], (N, 1)),
        "zero_fraction": np.tile([1.0, 1.0, 1.0, 0.0], (N, 1)),
        "param_norm": np.tile([0.0, 0.0, 0.0, 0.1], (N, 1)),
    }
    loss = math.log(3) + 1e-3 * rng(20).standard_normal(N)
    flags = diagnose(
        run_of(
            loss=loss,
            grad_norm=np.full(N, 0.1),
            param_norm=np.full(N, 0.1),
            variables=VARS,
            layers=layers,
            scalars={"hessian/negative_ratio": (hs, neg)},
        )
    )
    assert kinds(flags) == {"saddle_point", "loss_plateau"}

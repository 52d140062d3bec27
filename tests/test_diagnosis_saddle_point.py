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

HS = np.array([100, 200, 300, 400, 500, 600])
BAND_NEG = np.array([0.02, 0.3, 0.35, 0.3, 0.32, 0.3])
CONTENT = {
    "method": "exact",
    "tolerance": 0.0,
    "resolution": 1e-3,
    "probe_size": 64,
    "n_params": 90,
}


def saddle_run(grad_at_probe: float, loss: np.ndarray, band_neg=BAND_NEG):
    # negative_ratio also counts tiny negatives of the flat bulk (machine
    # precision): it is higher than the band share, so a test reading it fails.
    neg = np.minimum(band_neg + 0.25, 1.0)
    near_zero = np.full(HS.size, 0.4)
    return run_of(
        loss=loss,
        grad_norm=np.r_[np.ones(100), np.full(N - 100, grad_at_probe)],
        scalars={
            "hessian/negative_ratio": (HS, neg, CONTENT),
            "hessian/band_negative_ratio": (HS, band_neg, CONTENT),
            "hessian/near_zero_ratio": (HS, near_zero, CONTENT),
            "hessian/band_min_ratio": (HS, 1 - band_neg / 0.6, CONTENT),
            "hessian/min_ratio": (HS, 1 - neg, CONTENT),
            "hessian/min_ratio_low": (HS, 1 - neg, CONTENT),
            "hessian/min_ratio_high": (HS, 1 - neg, CONTENT),
        },
    )


def test_small_gradient_and_negative_curvature_with_stuck_loss_is_a_saddle():
    """Near-zero gradient, 30 % negative eigenvalues and a flat loss: a warning."""
    loss = np.full(N, 1.2) + 1e-4 * rng(15).standard_normal(N)
    flags = diagnose(saddle_run(1e-3, loss))
    (flag,) = only(flags, "saddle_point")
    assert flag.severity == "warning"
    assert flag.first_step == 200
    assert "35% of the Hessian eigenvalues were below -0.001 x max|" in flag.message
    ev = flag.evidence
    assert ev["band_negative_ratio"] == pytest.approx(0.35)
    assert "negative_ratio" not in ev
    assert ev["resolution"] == pytest.approx(1e-3)
    assert ev["near_zero_ratio"] == pytest.approx(0.4)
    assert ev["band_min_ratio"] == pytest.approx(1 - 0.35 / 0.6, rel=1e-4)
    assert ev["min_ratio_low"] == pytest.approx(0.4, rel=1e-4)
    assert ev["min_ratio_high"] == pytest.approx(0.4, rel=1e-4)


def test_tiny_negatives_below_the_band_are_no_saddle():
    """Negatives at machine precision (negative_ratio 27 %) with none in the band."""
    loss = np.full(N, 1.2) + 1e-4 * rng(15).standard_normal(N)
    run = saddle_run(1e-3, loss, band_neg=np.full(HS.size, 0.02))
    assert "saddle_point" not in kinds(diagnose(run))


def test_old_logs_without_the_band_fall_back_to_negative_ratio():
    """A log with only hessian/negative_ratio is still read, and says so."""
    loss = np.full(N, 1.2) + 1e-4 * rng(15).standard_normal(N)
    content = {"method": "exact", "tolerance": 1e-6}
    run = run_of(
        loss=loss,
        grad_norm=np.r_[np.ones(100), np.full(N - 100, 1e-3)],
        scalars={"hessian/negative_ratio": (HS, BAND_NEG, content)},
    )
    (flag,) = only(diagnose(run), "saddle_point")
    assert flag.evidence["negative_ratio"] == pytest.approx(0.35)
    assert "eigenvalues were negative (step 300)" in flag.message
    assert "band_negative_ratio" not in flag.evidence
    assert "resolution" not in flag.evidence


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

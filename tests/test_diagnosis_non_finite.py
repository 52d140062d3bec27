"""Tests of rule non_finite (diagnosis.non_finite)."""

from __future__ import annotations

import numpy as np

from tb_gradplugin.diagnosis import (
    diagnose,
)
from tests.diagnosis_runs import (
    VARS,
    N,
    healthy_grad,
    healthy_loss,
    kinds,
    only,
    run_of,
)


def test_nan_loss_is_an_error_from_its_first_step():
    """A loss that turns NaN at step 301 is flagged there, until the end."""
    loss = healthy_loss()
    loss[300:] = np.nan
    flags = diagnose(run_of(loss=loss, grad_norm=healthy_grad()))
    (flag,) = only(flags, "non_finite")
    assert flag.severity == "error"
    assert (flag.first_step, flag.last_step) == (301, N)
    assert "loss" in flag.evidence["what"]


def test_nan_between_logged_steps_is_seen_through_the_counts():
    """With update_freq=10, a NaN counted between logs flags the next logged step."""
    steps = np.arange(10, 2001, 10)
    counts = np.zeros(steps.size)
    counts[50] = 3  # three NaN losses among the steps 501..510
    flags = diagnose(
        run_of(
            steps=steps,
            loss=healthy_loss(n=steps.size),
            grad_norm=healthy_grad(n=steps.size),
            nonfinite_loss=counts,
        )
    )
    (flag,) = only(flags, "non_finite")
    assert flag.first_step == 510
    assert flag.evidence["previous_logged_step"] == 500


def test_skipped_loss_scale_steps_are_not_divergence():
    """Non-finite gradients in steps the loss scale skipped raise no flag."""
    nf = np.zeros(N)
    skipped = np.zeros(N)
    g = healthy_grad()
    for i in (5, 40, 200):
        nf[i], skipped[i], g[i] = 1000, 1, np.inf
    flags = diagnose(
        run_of(
            loss=healthy_loss(),
            grad_norm=g,
            nonfinite_grads=nf,
            skipped_steps=skipped,
            loss_scale=np.full(N, 2.0**15),
        )
    )
    assert kinds(flags, "warning") == set()


def test_loss_scale_that_keeps_failing_is_an_error():
    """Skipping most of the last steps for overflow is a non_finite error."""
    skipped = np.zeros(N)
    skipped[-50:] = 1
    g = healthy_grad()
    g[-50:] = np.inf
    flags = diagnose(run_of(loss=healthy_loss(), grad_norm=g, skipped_steps=skipped))
    (flag,) = only(flags, "non_finite")
    assert flag.severity == "error"
    assert flag.evidence["skipped_fraction"] >= 0.5


def test_non_finite_layer_is_the_deepest_bad_variable():
    """When only some variables have NaN gradients, the flag names the deepest."""
    nf = np.zeros((N, 4))
    nf[400:, :3] = 5
    counts = nf.sum(axis=1)
    flags = diagnose(
        run_of(
            loss=healthy_loss(),
            grad_norm=healthy_grad(),
            nonfinite_grads=counts,
            variables=VARS,
            layers={"nonfinite_grads": nf},
        )
    )
    (flag,) = only(flags, "non_finite")
    assert flag.layer == "seq/dense_1/kernel"
    assert flag.first_step == 401

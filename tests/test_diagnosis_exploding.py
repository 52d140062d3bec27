"""Tests of rule exploding_gradient, lasting (diagnosis.exploding)."""

from __future__ import annotations

import numpy as np

from tb_gradplugin.diagnosis import (
    diagnose,
)
from tests.diagnosis_runs import (
    STEPS,
    N,
    exploding_run,
    healthy_grad,
    healthy_loss,
    kinds,
    only,
    rng,
    run_of,
)


def test_sustained_explosion_is_an_error_at_its_onset():
    """A gradient norm that grows 1e6x with the loss is an error from its onset."""
    flags = diagnose(exploding_run())
    (flag,) = [f for f in only(flags, "exploding_gradient") if f.severity == "error"]
    assert 295 <= flag.first_step <= 330  # 2x above the level: step ~321
    assert flag.last_step == N
    assert flag.layer == "seq/dense_1/kernel"
    assert flag.evidence["growth"] > 1e5
    assert "loss_plateau" not in kinds(flags)
    assert "oscillating_loss" not in kinds(flags)


def test_explosion_then_nan_gives_both_errors():
    """Growth that ends in NaN is an exploding error and a non_finite error."""
    flags = diagnose(exploding_run(nan_from=450))
    got = {(f.kind, f.severity) for f in flags}
    assert ("exploding_gradient", "error") in got
    assert ("non_finite", "error") in got
    nf = only(flags, "non_finite")[0]
    assert nf.first_step == 451


def test_large_early_gradient_under_warm_up_is_normal():
    """A gradient norm 100x larger in the first steps, then falling, is no flag."""
    g = healthy_grad()
    g[:60] *= np.logspace(2, 0, 60)
    lr = np.minimum(1.0, STEPS / 60) * 1e-3
    flags = diagnose(run_of(loss=healthy_loss(), grad_norm=g, learning_rate=lr))
    assert "exploding_gradient" not in kinds(flags)


def test_gradient_growing_while_loss_falls_is_not_an_explosion():
    """A gradient norm that grows 30x while the loss keeps falling is learning."""
    g = np.logspace(-2, np.log10(0.3), N) * np.exp(0.1 * rng(3).standard_normal(N))
    flags = diagnose(run_of(loss=healthy_loss(), grad_norm=g))
    assert kinds(flags, "warning") == set()


def test_saturated_batches_are_no_baseline_for_an_explosion():
    """Batches with a 1e-15 gradient (all examples right) make no explosion."""
    g = np.exp(0.5 * rng(21).standard_normal(N))
    g[rng(22).random(N) < 0.2] = 1e-15
    flags = diagnose(run_of(loss=healthy_loss(), grad_norm=g))
    assert "exploding_gradient" not in kinds(flags, "warning")

"""Tests of the series the rules read (diagnosis.run_view)."""

from __future__ import annotations

import numpy as np

from tb_gradplugin.diagnosis.run_view import RunView, is_weight
from tests.diagnosis_runs import VARS, healthy_grad, healthy_loss, layer_block, run_of


def test_before_cuts_every_judged_series_but_keeps_the_loss():
    """The view before a divergence holds only earlier steps; the loss stays whole."""
    view = RunView.of(
        run_of(
            loss=healthy_loss(),
            grad_norm=healthy_grad(),
            variables=VARS,
            layers=layer_block(),
        )
    )
    cut = view.before(101)
    assert cut.healthy_until == 101 and view.healthy_until is None
    assert cut.grad.steps[-1] == 100 and len(cut.layer_zero) == 100
    assert len(cut.loss) == len(view.loss) == 600
    # 100 of 600 loss points come before: too few to judge a trend on.
    assert len(cut.finite_loss()[0]) == 0
    assert view.before(None) is view
    assert view.before(1).grad is None


def test_finite_loss_is_empty_when_the_run_diverged_early():
    """Less than half the points before the divergence: no trend to judge."""
    loss = healthy_loss()
    loss[3] = np.nan
    view = RunView.of(run_of(loss=loss))
    steps, values = view.finite_loss()
    assert len(steps) == 599 and np.isfinite(values).all()
    assert len(view.before(200).finite_loss()[0]) == 0
    assert len(view.before(400).finite_loss()[0]) == 398


def test_value_at_aligns_by_step_with_nan_where_missing():
    """Values are looked up by step number, NaN where the series has none."""
    view = RunView.of(run_of(steps=[2, 4, 6], loss=[1.0, 2.0, 3.0]))
    got = view.value_at(view.loss, np.array([1, 2, 6, 7]))
    np.testing.assert_array_equal(got, [np.nan, 1.0, 3.0, np.nan])
    assert np.isnan(view.value_at(None, np.array([1]))).all()


def test_skipped_steps_and_weights_are_recognised():
    """Steps with a skipped count are recorded; kernels are weights, biases not."""
    view = RunView.of(run_of(steps=[1, 2, 3], loss=[1, 1, 1], skipped_steps=[0, 2, 0]))
    assert view.skipped_at == frozenset({2})
    assert is_weight("d/kernel") and is_weight("emb/embeddings")
    assert not is_weight("d/bias")

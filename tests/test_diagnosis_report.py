"""Tests of the order of the rules and the run's report (diagnosis.report)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tb_gradplugin import diagnosis
from tb_gradplugin.diagnosis import (
    diagnose,
    run_report,
)
from tests.diagnosis_runs import (
    STEPS,
    VARS,
    N,
    exploding_run,
    healthy_grad,
    healthy_loss,
    kinds,
    layer_block,
    run_of,
)


def test_healthy_run_has_no_flags():
    """A decaying loss with noisy, slowly falling gradients raises nothing."""
    flags = diagnose(
        run_of(
            loss=healthy_loss(),
            grad_norm=healthy_grad(),
            update_ratio=np.full(N, 1e-3),
            variables=VARS,
            layers=layer_block(),
        )
    )
    assert flags == []


@pytest.mark.parametrize("seed", range(5))
def test_healthy_runs_with_other_seeds_get_no_warning(seed):
    """Across noise draws a healthy run never gets a warning or an error."""
    flags = diagnose(run_of(loss=healthy_loss(seed), grad_norm=healthy_grad(seed + 10)))
    assert kinds(flags, "warning") == set()


def test_one_step_run_does_not_crash():
    """A run of a single logged step yields no flags and no exception."""
    run = run_of(
        steps=[1],
        loss=[0.7],
        grad_norm=[1.0],
        param_norm=[3.0],
        variables=VARS,
        layers=layer_block(1),
    )
    assert diagnose(run) == []
    assert run_report(run)["last_step"] == 1


def test_empty_run_does_not_crash():
    """A run with no series yields no flags and a null last step."""
    run = diagnosis.RunData(run="empty")
    assert diagnose(run) == []
    assert run_report(run) == {"run": "empty", "last_step": None, "flags": []}


def test_constant_loss_is_a_plateau_and_nothing_else():
    """A loss that never moves is a plateau, never an explosion or oscillation."""
    flags = diagnose(run_of(loss=np.full(N, 0.5), grad_norm=np.ones(N)))
    assert kinds(flags) == {"loss_plateau"}
    (flag,) = flags
    assert flag.first_step == 1 and flag.last_step == N
    assert flag.evidence["improvement"] == 0


def test_all_nan_series_give_one_non_finite_error():
    """All-NaN series give a non_finite error from step 1 and nothing else."""
    nan = np.full(N, np.nan)
    flags = diagnose(
        run_of(
            loss=nan,
            grad_norm=nan,
            param_norm=nan,
            variables=VARS,
            layers={"grad_norm": np.full((N, 4), np.nan)},
        )
    )
    assert [(f.kind, f.severity) for f in flags] == [("non_finite", "error")]
    assert flags[0].first_step == 1 and flags[0].last_step == N


def test_too_short_run_gets_no_trend_flags():
    """Fewer points than min_trend_points: no plateau even for a constant loss."""
    flags = diagnose(run_of(steps=STEPS[:10], loss=np.full(10, 0.69)))
    assert flags == []


def test_flags_come_most_severe_first():
    """Errors come before warnings and warnings before info, whatever rule ran first."""
    # A spike (info), a partly dead layer (warning) and a NaN late in the run
    # (error): the rules produce them in the opposite order.
    grad = healthy_grad()
    grad[250:253] *= 50
    loss = healthy_loss()
    loss[560:] = np.nan
    layers = layer_block(zero=(0.6, 0.8, 0.1, 0.0), grad=(0.5, 0.2, 0.5, 0.3))
    flags = diagnose(run_of(loss=loss, grad_norm=grad, variables=VARS, layers=layers))
    severities = [f.severity for f in flags]
    assert set(severities) == {"error", "warning", "info"}, flags
    ranks = [diagnosis.SEVERITIES.index(s) for s in severities]
    assert ranks == sorted(ranks, reverse=True)
    assert flags[0].kind == "non_finite"


def test_run_report_is_strict_json_with_the_contract_keys():
    """run_report has the contract's keys and survives strict JSON encoding."""
    report = run_report(exploding_run(nan_from=450))
    text = json.dumps(report, allow_nan=False)

    def reject(name):
        raise ValueError(name)

    back = json.loads(text, parse_constant=reject)
    assert set(back) == {"run", "last_step", "flags"}
    assert back["last_step"] == N
    for flag in back["flags"]:
        assert set(flag) == {
            "kind",
            "severity",
            "first_step",
            "last_step",
            "layer",
            "message",
            "advice",
            "evidence",
        }
        assert flag["kind"] in diagnosis.KINDS
        assert flag["severity"] in diagnosis.SEVERITIES
        assert flag["message"] and flag["advice"]

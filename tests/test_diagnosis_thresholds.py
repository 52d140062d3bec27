"""Tests of the thresholds (diagnosis.thresholds)."""

from __future__ import annotations

import dataclasses

import numpy as np

from tb_gradplugin.diagnosis import (
    Thresholds,
    diagnose,
)
from tests.diagnosis_runs import (
    N,
    healthy_loss,
    kinds,
    rng,
    run_of,
)


def test_thresholds_are_overridable():
    """A stricter explode_factor turns a 5x spike into a flag; the default does not."""
    g = np.ones(N) * np.exp(0.02 * rng(16).standard_normal(N))
    g[300] = 5.0
    run = run_of(loss=healthy_loss(), grad_norm=g)
    assert "exploding_gradient" not in kinds(diagnose(run))
    strict = dataclasses.replace(Thresholds(), explode_factor=3.0)
    assert "exploding_gradient" in kinds(diagnose(run, strict))


def test_every_threshold_has_a_documented_source():
    """Each Thresholds field is described in the class docstring."""
    doc = Thresholds.__doc__
    for field in dataclasses.fields(Thresholds):
        assert f"{field.name}:" in doc, field.name

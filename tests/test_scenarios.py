"""The labelled scenario suite: real trainings get exactly their flags."""

from __future__ import annotations

import pytest

from tests.scenarios import SCENARIOS, run_scenario


@pytest.mark.slow
@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.name)
def test_scenario_gets_its_flags(tmp_path, scenario):
    """Each pathology raises its kind (and only allowed ones); healthy runs none."""
    report = run_scenario(scenario, str(tmp_path), seed=0)
    serious = set(report["serious"])
    if scenario.healthy:
        assert serious == set(), report["flags"]
    else:
        assert scenario.expected <= serious, report["flags"]
        assert serious <= scenario.expected | scenario.allowed, report["flags"]

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


BY_NAME = {s.name: s for s in SCENARIOS}


@pytest.mark.slow
def test_a_layer_that_blocks_the_gradient_is_reported_with_the_starved_one(tmp_path):
    """One dead_layer error on the blocking layer; the starved layer is evidence."""
    report = run_scenario(BY_NAME["dead_blocking"], str(tmp_path), seed=0)
    dead = [f for f in report["flags"] if f["kind"] == "dead_layer"]
    assert [f["layer"].rsplit("/", 2)[-2:] for f in dead] == [["blocker", "kernel"]]
    assert dead[0]["severity"] == "error"
    starved = dead[0]["evidence"]["starved_layers"]
    assert [name.rsplit("/", 2)[-2:] for name in starved] == [["hidden", "kernel"]]

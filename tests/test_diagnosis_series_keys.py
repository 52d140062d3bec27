"""diagnosis.SERIES_KEYS: a run read with only those keys gets the same flags."""

from __future__ import annotations

import pytest

from tb_gradplugin import diagnosis, reader
from tests.scenarios import SCENARIOS, run_scenario

# One scenario per rule family that reads a different part of the run: the
# explosion and its NaN, dead units (zero shares), the Hessian probes, the loss.
NAMES = ("exploding", "dead_relu", "saddle", "nan_input", "oscillating")
BY_NAME = {s.name: s for s in SCENARIOS}


@pytest.fixture(scope="module")
def provider(tmp_path_factory):
    """Trains the scenarios into one log directory and loads it."""
    logdir = str(tmp_path_factory.mktemp("series_keys"))
    for name in NAMES:
        run_scenario(BY_NAME[name], logdir, seed=0)
    return reader.provider_for_logdir(logdir)


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_a_run_read_with_only_the_series_keys_gets_the_same_flags(provider, name):
    """Flags, messages and last step are identical to those of the whole run."""
    full = reader.read_run(provider, name)
    part = reader.read_run(provider, name, keys=diagnosis.SERIES_KEYS)
    left_out = {*full.scalars, *full.tensors} - {*part.scalars, *part.tensors}
    assert left_out, "the restricted read should leave series unread"
    assert "layer/grad_mean_abs" in left_out
    flags = diagnosis.diagnose(full)
    assert flags, f"scenario {name} should raise flags to compare"
    assert diagnosis.diagnose(part) == flags
    assert diagnosis.run_report(
        part, last_step=reader.last_step(provider, name)
    ) == diagnosis.run_report(full)


def test_series_keys_hold_the_keys_of_every_rule():
    """The per-step, per-layer and Hessian keys the rules read are all named."""
    for key in (
        "step/loss",
        "step/grad_norm",
        "layer/zero_fraction",
        "window_layer/zero_fraction",
        "hessian/band_negative_ratio",
        "hessian/grad_norm",
    ):
        assert key in diagnosis.SERIES_KEYS
    assert "layer/update_norm" not in diagnosis.SERIES_KEYS

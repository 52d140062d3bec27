"""Reading runs through TensorBoard's own event loading."""

from __future__ import annotations

import numpy as np
import pytest

from tb_gradplugin import reader
from tests import eventfiles


def test_reads_every_point_of_scalars_and_tensors(tmp_path):
    """All 3,000 steps come back, beyond TensorBoard's default sampling."""
    steps = np.arange(1, 3001)
    eventfiles.write_run(
        tmp_path,
        "exp1",
        steps=steps,
        loss=np.linspace(2, 1, 3000),
        grad_norm=np.ones(3000),
        param_norm=np.full(3000, 5.0),
        variables=["d/kernel", "d/bias"],
        layers={"grad_norm": np.stack([steps, 2 * steps], axis=1)},
    )
    provider = reader.provider_for_logdir(tmp_path)
    assert reader.list_runs(provider) == ["exp1"]
    run = reader.read_run(provider, "exp1")
    assert run.last_step == 3000
    loss = run.scalar("step/loss")
    assert len(loss) == 3000 and loss.steps[0] == 1
    np.testing.assert_allclose(loss.values, np.linspace(2, 1, 3000), rtol=1e-6)
    layer = run.tensor("layer/grad_norm")
    assert layer.values.shape == (3000, 2)
    assert layer.names == ["d/kernel", "d/bias"]
    np.testing.assert_array_equal(layer.values[:, 1], 2 * steps)


def test_keys_limit_what_is_read(tmp_path):
    """keys= reads only the named series."""
    eventfiles.write_run(
        tmp_path,
        "r",
        steps=[1, 2],
        loss=[1.0, 0.5],
        grad_norm=[1, 1],
        param_norm=[2, 2],
    )
    run = reader.read_run(reader.provider_for_logdir(tmp_path), "r", keys=["step/loss"])
    assert list(run.scalars) == ["step/loss"]


def test_listed_series_are_read_as_with_keys_and_last_step_needs_no_read(tmp_path):
    """listed= reads the same series as keys=; last_step is the largest listed."""
    eventfiles.write_run(
        tmp_path,
        "r",
        steps=[1, 2, 3],
        loss=[1.0, 0.5, 0.4],
        grad_norm=[1, 1, 1],
        param_norm=[2, 2, 2],
    )
    provider = reader.provider_for_logdir(tmp_path)
    full = reader.read_run(provider, "r")
    listed = {
        key: ("scalar", b"") for key in ("step/loss", "step/grad_norm", "step/nope")
    }
    run = reader.read_run(provider, "r", listed=listed)
    assert sorted(run.scalars) == ["step/grad_norm", "step/loss"]
    for key, series in run.scalars.items():
        np.testing.assert_array_equal(series.steps, full.scalars[key].steps)
        np.testing.assert_array_equal(series.values, full.scalars[key].values)
    assert reader.last_step(provider, "r") == full.last_step == 3
    assert reader.last_step(provider, "nope") is None


def test_unknown_run_is_empty_and_missing_logdir_raises(tmp_path):
    """An unknown run reads as empty; a missing directory is FileNotFoundError."""
    eventfiles.write_run(tmp_path, "r", steps=[1], loss=[1.0])
    run = reader.read_run(reader.provider_for_logdir(tmp_path), "nope")
    assert run.last_step is None and not run.scalars
    with pytest.raises(FileNotFoundError):
        reader.provider_for_logdir(tmp_path / "missing")


def test_truncated_file_keeps_what_was_written(tmp_path):
    """A half-written last record loses only that record."""
    path = eventfiles.write_run(tmp_path, "r", steps=np.arange(1, 51), loss=np.ones(50))
    eventfiles.truncate_event_file(path)
    run = reader.read_run(reader.provider_for_logdir(tmp_path), "r")
    # The 7 bytes cut off end inside the last of the 50 loss records.
    assert len(run.scalar("step/loss")) == 49

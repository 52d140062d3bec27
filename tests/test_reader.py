"""Reading runs through TensorBoard's own event loading."""

from __future__ import annotations

import numpy as np
import pytest

from tb_gradplugin import metadata, reader
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
    assert 45 <= len(run.scalar("step/loss")) <= 50


def _packed(keys):
    return metadata.packed_content([(k, w, k, c) for k, w, c in keys])


def test_packed_tags_split_into_their_keys(tmp_path):
    """Packed vectors read back as the scalar and per-variable keys they hold."""
    steps = np.arange(1, 6)
    vec = np.stack([steps * 1.0, steps * 2.0, steps * 4.0], axis=1)
    step_content = _packed(
        [("step/loss", 1, {"update_freq": 1}), ("", 1, {}), ("step/grad_norm", 1, {})]
    )
    layer_content = _packed([("layer/grad_norm", 2, {"variables": ["a", "b"]})])
    eventfiles.write_run(
        tmp_path,
        "r",
        steps=steps,
        tensors={
            "packed/step": (steps, vec, step_content),
            "packed/layer": (steps, vec[:, 1:], layer_content),
        },
    )
    provider = reader.provider_for_logdir(tmp_path)
    run = reader.read_run(provider, "r")
    assert sorted(run.scalars) == ["step/grad_norm", "step/loss"]
    np.testing.assert_array_equal(run.scalar("step/loss").values, steps)
    np.testing.assert_array_equal(run.scalar("step/grad_norm").values, 4 * steps)
    layer = run.tensor("layer/grad_norm")
    assert layer.names == ["a", "b"] and layer.values.shape == (5, 2)
    np.testing.assert_array_equal(layer.values[:, 1], 4 * steps)
    assert run.scalar("step/loss").content == {"update_freq": 1}
    only = reader.read_run(provider, "r", keys=["step/grad_norm"])
    assert list(only.scalars) == ["step/grad_norm"] and not only.tensors


def test_malformed_packed_tag_is_skipped_and_the_rest_kept(tmp_path, caplog):
    """A packed tag with bad columns is ignored with a warning; other tags survive."""
    steps = np.arange(1, 4)
    bad = {"columns": [{"key": "step/loss", "start": "x", "width": 1}]}
    eventfiles.write_run(
        tmp_path,
        "r",
        steps=steps,
        loss=[3.0, 2.0, 1.0],
        tensors={"packed/step": (steps, np.ones([3, 2]), bad)},
    )
    with caplog.at_level("WARNING"):
        run = reader.read_run(reader.provider_for_logdir(tmp_path), "r")
    assert "malformed packed column" in caplog.text
    np.testing.assert_array_equal(run.scalar("step/loss").values, [3, 2, 1])


def test_a_key_in_the_wrong_packed_tag_is_ignored(tmp_path, caplog):
    """packed/step may not hold a layer key: it is dropped with a warning."""
    content = _packed([("layer/grad_norm", 1, {}), ("step/loss", 1, {})])
    eventfiles.write_run(
        tmp_path,
        "r",
        steps=[1],
        tensors={"packed/step": ([1], np.array([[7.0, 2.0]]), content)},
    )
    with caplog.at_level("WARNING"):
        run = reader.read_run(reader.provider_for_logdir(tmp_path), "r")
    assert "layer/grad_norm" in caplog.text and not run.tensors
    assert run.scalar("step/loss").values.tolist() == [2.0]


def test_a_key_both_packed_and_own_tag_is_joined_by_step(tmp_path):
    """Steps from an older per-tag file and a packed one merge in step order."""
    content = _packed([("step/loss", 1, {})])
    eventfiles.write_run(
        tmp_path,
        "r",
        steps=[1, 2],
        loss=[5.0, 4.0],
        tensors={"packed/step": ([3, 4], np.array([[3.0], [2.0]]), content)},
    )
    run = reader.read_run(reader.provider_for_logdir(tmp_path), "r")
    loss = run.scalar("step/loss")
    assert loss.steps.tolist() == [1, 2, 3, 4]
    assert loss.values.tolist() == [5.0, 4.0, 3.0, 2.0]

"""Host-side trajectory summaries, read back through TensorBoard."""

from __future__ import annotations

import keras
import numpy as np

from tb_gradplugin import reader, summary, trajectory
from tb_gradplugin.event_writer import EventWriter


def test_trajectory_round_trip(tmp_path):
    """A real projection is written and read back intact."""
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    vector = trajectory.project_parameters(model.trainable_variables, dim=16, seed=1)
    writer = EventWriter(tmp_path / "run")
    summary.write_trajectory(writer, vector, step=7, seed=1, n_params=8)
    writer.close()
    run = reader.read_run(reader.provider_for_logdir(tmp_path), "run")
    traj = run.tensor("trajectory/projection")
    assert traj.steps.tolist() == [7]
    np.testing.assert_allclose(traj.values[0], vector, rtol=1e-6)
    assert traj.content == {"version": 1, "seed": 1, "dim": 16, "n_params": 8}

"""Host-side curvature and trajectory summaries, read back through TensorBoard."""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from tb_gradplugin import curvature, reader, summary


def test_curvature_and_trajectory_round_trip(tmp_path):
    """A real curvature result and projection are written and read back intact."""
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile(optimizer="sgd", loss="mse")
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(8, 3)), rng.normal(size=(8, 2))
    result = curvature.compute_curvature(model, x, y)
    vector = curvature.project_parameters(model.trainable_variables, dim=16, seed=1)
    writer = tf.summary.create_file_writer(str(tmp_path / "run"))
    with writer.as_default():
        summary.write_curvature(result, step=7, probe_size=8)
        summary.write_trajectory(vector, step=7, seed=1, n_params=8)
    writer.close()
    run = reader.read_run(reader.provider_for_logdir(tmp_path), "run")
    ratio = run.scalar("hessian/min_ratio")
    assert ratio.steps.tolist() == [7]
    np.testing.assert_allclose(ratio.values[0], result.min_ratio, rtol=1e-6)
    assert ratio.content["method"] == result.method
    assert ratio.content["probe_size"] == 8
    layer = run.tensor("hessian_layer/min_ratio")
    np.testing.assert_allclose(layer.values[0], result.layer_min_ratio, rtol=1e-6)
    assert layer.names == list(result.variables)
    traj = run.tensor("trajectory/projection")
    np.testing.assert_allclose(traj.values[0], vector, rtol=1e-6)
    assert traj.content == {"version": 1, "seed": 1, "dim": 16, "n_params": 8}

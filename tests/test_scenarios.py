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


def _recommender(seed):
    """Dot-product recommender with a per-item offset read by a gather."""
    import keras
    import numpy as np

    class ItemOffset(keras.layers.Layer):
        def __init__(self, items, **kwargs):
            super().__init__(**kwargs)
            self.offsets = self.add_weight(
                shape=(items,), initializer="zeros", name="offsets"
            )

        def call(self, ids):
            return keras.ops.take(self.offsets, ids, axis=0)  # a gather: rows only

    keras.utils.set_random_seed(seed)
    rng = np.random.default_rng(seed)
    users, items, n = 50, 400, 3000
    u = rng.integers(0, users, n).astype("int32")
    i = rng.integers(0, items, n).astype("int32")
    taste = rng.normal(size=(users, 4)) @ rng.normal(size=(4, items))
    y = (taste[u, i] + rng.normal(size=items)[i] > 0).astype("float32")
    user_in = keras.Input((), dtype="int32")
    item_in = keras.Input((), dtype="int32")
    user_vec = keras.layers.Embedding(users, 8)(user_in)
    item_vec = keras.layers.Embedding(items, 8)(item_in)
    score = keras.ops.sum(user_vec * item_vec, axis=-1)
    score = score + ItemOffset(items, name="item_offset")(item_in)
    model = keras.Model([user_in, item_in], score)
    model.compile(
        keras.optimizers.Adam(1e-2), keras.losses.BinaryCrossentropy(from_logits=True)
    )
    return model, [u, i], y


@pytest.mark.slow
def test_a_per_item_offset_read_by_gather_is_not_a_dead_layer(tmp_path):
    """Rows of a table touched only when their item is in the batch are not dead."""
    from tb_gradplugin import GradientHealthCallback, diagnosis, reader

    model, x, y = _recommender(0)
    cb = GradientHealthCallback(str(tmp_path / "rec"), on_flag=None)
    model.fit(x, y, epochs=2, batch_size=32, verbose=0, callbacks=[cb])
    cb.close()
    run = reader.read_run(reader.provider_for_logdir(str(tmp_path)), "rec")
    layer = run.tensor("layer/zero_fraction")
    offsets = [n for n in layer.names if n.endswith("item_offset/offsets")]
    assert len(offsets) == 1
    # Per step, nearly every row of the table gets no gradient: 32 of 400.
    column = layer.names.index(offsets[0])
    assert float(layer.values[-1, column]) > 0.9
    assert offsets[0] in layer.content["sparse_variables"]
    flags = diagnosis.diagnose(run)
    assert [f for f in flags if f.kind == "dead_layer"] == [], flags


@pytest.mark.slow
def test_step_to_step_oscillation_is_not_reported_as_dead_layers_and_a_plateau(
    tmp_path,
):
    """Momentum SGD bouncing between alternating classes is oscillating_loss."""
    # Seed 1 is the run that per-step judging called a plateau with dead layers.
    report = run_scenario(BY_NAME["oscillating_alternating"], str(tmp_path), seed=1)
    kinds = {f["kind"]: f for f in report["flags"]}
    assert kinds["oscillating_loss"]["severity"] == "warning"
    assert "loss_plateau" not in kinds
    assert all(
        f["severity"] != "error" for f in report["flags"] if f["kind"] == "dead_layer"
    )


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 2])
def test_batch_two_noise_around_a_falling_loss_is_no_oscillation(tmp_path, seed):
    """A network that learns at batch size 2 gets no oscillating_loss flag."""
    report = run_scenario(BY_NAME["healthy_sgd_batch2"], str(tmp_path), seed=seed)
    assert report["serious"] == [], report["flags"]

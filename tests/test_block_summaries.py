"""The block summaries the callback writes, against blocks.summarize of the steps."""

from __future__ import annotations

import os

import keras
import numpy as np

from tb_gradplugin import GradientHealthCallback, blocks, reader
from tb_gradplugin.block_summaries import BLOCK_STEPS, BlockSummaries


def test_rows_are_cut_into_blocks_and_the_rest_is_flushed():
    """Blocks of B rows across calls; a key with a flag skips unflagged rows."""
    rng = np.random.default_rng(0)
    rows = rng.normal(size=(8, 4)).astype(np.float32)
    rows[:, 3] = [1, 1, 0, 1, 1, 1, 0, 0]  # the flag of column 0
    steps = np.arange(10, 18)
    collect = BlockSummaries({"a": 0, "v": slice(1, 3)}, {"a": 3}, block_steps=3)
    done = collect.add(rows[:2], steps[:2]) + collect.add(rows[2:], steps[2:])
    done += collect.flush()
    assert collect.flush() == []
    got = [(key, step) for key, step, _ in done]
    # Blocks [10, 11, 12], [13, 14, 15], [16, 17]; "a" is absent at 12, 16, 17.
    assert got == [("a", 11), ("v", 12), ("a", 15), ("v", 15), ("v", 17)]
    by = {(key, step): value for key, step, value in done}
    np.testing.assert_array_equal(
        by[("a", 11)], blocks.summarize(steps[:2], rows[:2, 0])
    )
    np.testing.assert_array_equal(
        by[("v", 17)], blocks.summarize(steps[6:], rows[6:, 1:3])
    )
    assert by[("v", 12)].shape == (len(blocks.BLOCK_ROWS), 2)


def _read(logdir):
    provider = reader.provider_for_logdir(os.path.dirname(logdir))
    return reader.read_run(provider, os.path.basename(logdir))


def test_a_long_fit_writes_every_block_as_summarize_of_its_steps(tmp_path):
    """320 logged steps: each block/<key> equals summarize of the steps read back."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=(320 * 16, 5)).astype("float32")  # one epoch, 320 steps
    y = rng.integers(0, 2, len(x))
    nan_step = 317
    x[(nan_step - 1) * 16] = np.nan  # in the batch of step 317 only
    keras.utils.set_random_seed(3)
    model = keras.Sequential(
        [
            keras.Input((5,)),
            keras.layers.Dense(4, activation="tanh"),
            keras.layers.Dense(2),
        ]
    )
    model.compile(
        optimizer=keras.optimizers.SGD(0.01),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    log_dir = str(tmp_path / "run")
    cb = GradientHealthCallback(log_dir, update_freq=1, on_flag=None)
    model.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0, callbacks=[cb])
    cb.close()
    run = _read(log_dir)
    keys = [k for k in run.scalars if k.startswith("step/")]
    keys += [k for k in run.tensors if k.startswith("layer/")]
    assert "step/loss" in keys and "layer/grad_norm" in keys
    written = {k for k in run.tensors if k.startswith(blocks.BLOCK_FAMILY)}
    assert written == {blocks.block_key(k) for k in keys}
    loss = run.scalars["step/loss"]
    assert loss.steps.tolist() == list(range(1, 321))
    ends = [100, 200, 300, 320]  # the unfinished last block is flushed at the end
    assert BLOCK_STEPS == 100
    for key in keys:
        series = run.scalars[key] if key in run.scalars else run.tensors[key]
        summary = run.tensors[blocks.block_key(key)]
        assert summary.steps.tolist() == ends, key
        got = summary.values.reshape(len(ends), len(blocks.BLOCK_ROWS), -1)
        for i, (start, end) in enumerate(zip([0, *ends[:-1]], ends, strict=True)):
            chosen = (series.steps > start) & (series.steps <= end)
            expected = blocks.summarize(series.steps[chosen], series.values[chosen])
            np.testing.assert_array_equal(
                got[i], expected.reshape(len(blocks.BLOCK_ROWS), -1), err_msg=key
            )
    rows = {name: i for i, name in enumerate(blocks.BLOCK_ROWS)}
    nan_block = run.tensors["block/step/loss"].values[-1]
    assert nan_block[rows["nonfinite"]] == 320 - nan_step + 1
    assert nan_block[rows["nonfinite_back"]] == 320 - nan_step
    assert np.isnan(nan_block[rows["nonfinite_value"]])
    assert run.tensors["block/step/loss"].values[-2][rows["nonfinite"]] == 0
    # The reading side draws them: per-variable blocks keep the variables' labels.
    heatmap = blocks.heatmap_json(run.tensors["block/layer/grad_norm"], 4)
    assert heatmap["variables"] == [v.path for v in model.trainable_variables]

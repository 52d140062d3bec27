"""The live diagnosis's series: grown in place, read from the new records only."""

from __future__ import annotations

import glob
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from tb_gradplugin import GradientHealthCallback, blocks, diagnosis, reader
from tb_gradplugin.live_series import GrowingSeries, RunSeries, kept_keys


def test_growing_series_equals_the_concatenation_of_its_chunks():
    """Chunks of any size appended give the concatenated points; views stay put."""
    rng = np.random.default_rng(0)
    grown = GrowingSeries(np.float32)
    chunks, views = [], []
    step = 0
    for size in (1, 3, 64, 0, 200, 7, 1000):
        values = rng.normal(size=(size, 5)).astype(np.float32)
        steps = np.arange(step, step + size)
        step += size
        grown.extend(steps, steps * 0.5, values)
        chunks.append(values)
        views.append((grown.series({}), np.concatenate(chunks).astype(np.float32)))
    for view, expected in views:
        # A view taken before later appends (and regrowths) keeps its points.
        np.testing.assert_array_equal(view.values, expected)
        np.testing.assert_array_equal(view.steps, np.arange(len(expected)))
        np.testing.assert_array_equal(view.wall_times, np.arange(len(expected)) * 0.5)
    assert grown.series({}, np.float64).values.dtype == np.float64


def test_growing_series_pads_rows_of_another_width_with_nan():
    """Narrower rows are padded, wider ones widen the rows held, as stack_rows."""
    grown = GrowingSeries()
    rows = [np.array([[1.0, 2.0]]), np.array([[3.0]]), np.array([[4.0, 5.0, 6.0]])]
    for i, row in enumerate(rows):
        grown.extend([i], [0.0], row)
    expected = reader.stack_rows([r[0] for r in rows])
    np.testing.assert_array_equal(grown.series({}).values, expected)


def _fit(model, logdir, epochs):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(512, 20)).astype("float32")
    y = (x[:, 0] > 0).astype("int64")
    model.fit(
        x,
        y,
        batch_size=16,
        epochs=epochs,
        verbose=0,
        callbacks=[GradientHealthCallback(logdir, update_freq=1, on_flag=None)],
    )


def _model():
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.Input((20,)), keras.layers.Dense(16, "relu"), keras.layers.Dense(2)]
    )
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def _records(logdir) -> int:
    """Records in the run's event files, counted by TensorFlow's reader."""
    files = glob.glob(os.path.join(logdir, "events.out.tfevents.*"))
    return sum(1 for f in files for _ in tf.data.TFRecordDataset(f))


def test_run_series_equals_the_data_providers_read_and_reads_only_new_records(
    tmp_path,
):
    """Updates read only the appended records; the series equal TensorBoard's read."""
    logdir = str(tmp_path / "run")
    model = _model()
    series = RunSeries(logdir)
    read = 0
    for fit in range(2):
        _fit(model, logdir, epochs=2)
        new = series.update()
        # Only what was appended: the files' records minus those read before.
        assert new == _records(logdir) - read > 0
        read += new
        assert series.update() == 0
        data, deferred = series.run_data()
        checked = set()
        full = reader.read_run(reader.provider_for_logdir(str(tmp_path)), "run")
        assert full.scalars["step/loss"].steps.tolist() == list(range(1, 64 * fit + 65))
        kept = set(full.scalars) & kept_keys()
        assert kept and set(data.scalars) == kept
        assert set(deferred) == set(full.tensors) & set(diagnosis.TENSOR_KEYS)
        assert "layer/grad_norm" in deferred
        for key in kept:
            _assert_same(data.scalars[key], full.scalars[key], key)
        for key, tensor in deferred.items():
            _assert_same(tensor.get(), full.tensors[key], key)
            assert tensor.get().values.dtype == np.float64
            # The tensor's block summaries, where written, go to the rules.
            summary = full.tensors.get(blocks.block_key(key))
            if summary is None:
                assert tensor.blocks is None, key
                continue
            np.testing.assert_array_equal(
                tensor.blocks["max"], blocks.row(summary, "max"), err_msg=key
            )
            checked.add(key)
        assert "layer/grad_norm" in checked
    assert series.last_step == full.last_step


def _assert_same(mine, series, key):
    np.testing.assert_array_equal(mine.steps, series.steps, err_msg=key)
    np.testing.assert_array_equal(mine.values, series.values, err_msg=key)
    np.testing.assert_array_equal(mine.wall_times, series.wall_times, err_msg=key)
    assert mine.content == series.content, key


def test_run_series_keeps_no_series_the_rules_do_not_read(tmp_path):
    """Update norms, means and windows are written but not held in memory."""
    logdir = str(tmp_path / "run")
    _fit(_model(), logdir, epochs=1)
    series = RunSeries(logdir)
    series.update()
    full = reader.read_run(reader.provider_for_logdir(str(tmp_path)), "run")
    dropped = (set(full.scalars) | set(full.tensors)) - kept_keys()
    assert "layer/update_norm" in dropped and "step/update_norm" in dropped
    assert not dropped & set(series._points)


def test_run_series_of_a_removed_directory_raises(tmp_path):
    """A directory removed under it is an error the caller sees, not an empty run."""
    from tensorboard.backend.event_processing import directory_watcher

    logdir = tmp_path / "run"
    _fit(_model(), str(logdir), epochs=1)
    series = RunSeries(str(logdir))
    series.update()
    for f in logdir.iterdir():
        f.unlink()
    logdir.rmdir()
    with pytest.raises(directory_watcher.DirectoryDeletedError):
        series.update()


def test_run_series_reads_other_writers_events_as_tensorboard_does(tmp_path):
    """Scalars as one ``float_val``, float64 tensors and rows of changing width."""
    from tb_gradplugin import metadata
    from tests import gh_logdirs

    logdir = str(tmp_path / "run")
    # TensorBoard's own proto maker: a scalar as float_val, rows of 2, 3, 1 entries.
    writer = gh_logdirs.Writer(logdir)
    names = {"variables": ["a", "b", "c"]}
    for step, width in enumerate((2, 2, 3, 1), start=1):
        row = np.arange(width, dtype=np.float32) + step
        writer.write(
            step,
            {
                metadata.key_tag("step/loss"): (1.5 / step, {}, False),
                metadata.key_tag("layer/grad_norm"): (row, names, True),
            },
        )
    writer.close()
    # tf.summary with a float64 tensor (read through TensorBoard's converter).
    meta = metadata.create_summary_metadata("zeros", names, tensor=True)
    with tf.summary.create_file_writer(logdir).as_default():
        for step in (5, 6):
            tf.summary.write(
                metadata.key_tag("layer/zero_fraction"),
                tf.constant([0.25, 0.5, 1.0 / step], tf.float64),
                step=step,
                metadata=meta.SerializeToString() if step == 5 else None,
            )
    series = RunSeries(logdir)
    assert series.update() > 0
    data, deferred = series.run_data()
    full = reader.read_run(reader.provider_for_logdir(str(tmp_path)), "run")
    _assert_same(data.scalars["step/loss"], full.scalars["step/loss"], "loss")
    for key in ("layer/grad_norm", "layer/zero_fraction"):
        _assert_same(deferred[key].get(), full.tensors[key], key)
    assert np.isnan(deferred["layer/grad_norm"].get().values[3, 1:]).all()


def test_run_series_skips_an_undecodable_record_and_keeps_the_others(tmp_path, caplog):
    """A framed record that is no event is skipped; the steps around it are read."""
    from tensorboard.compat.proto import event_pb2

    from tb_gradplugin import event_writer, metadata

    meta = metadata.create_summary_metadata("loss").SerializeToString()
    path = tmp_path / "run" / "events.out.tfevents.1.host"
    path.parent.mkdir()
    with tf.io.TFRecordWriter(str(path)) as records:
        records.write(event_pb2.Event(file_version="brain.Event:2").SerializeToString())
        for step in (1, 2, 3):
            if step == 2:
                records.write(b"\xff\x00 not an event")
            event = event_pb2.Event(step=step, wall_time=float(step))
            tag = metadata.key_tag("step/loss")
            first = meta if step == 1 else b""
            event.summary.MergeFromString(
                event_writer.tensor_value(tag, 0.5 * step, first)
            )
            records.write(event.SerializeToString())
    series = RunSeries(str(path.parent))
    assert series.update() == 5
    loss = series.run_data()[0].scalars["step/loss"]
    assert loss.steps.tolist() == [1, 2, 3]
    assert loss.values.tolist() == [0.5, 1.0, 1.5]
    assert "undecodable" in caplog.text

"""The event writer's files read back exactly as ``tf.summary``'s, by both loaders."""

from __future__ import annotations

import glob
import os
import threading

import numpy as np
import pytest
import tensorflow as tf
from tensorboard import context as tb_context
from tensorboard.backend.event_processing import plugin_event_accumulator
from tensorboard.compat.proto import event_pb2
from tensorboard.data import server_ingester
from tensorboard.util import tensor_util

from tb_gradplugin import (
    GradientHealthCallback,
    data_server,
    metadata,
    reader,
    stats,
    summary,
)
from tb_gradplugin.event_writer import EventWriter, TensorTag, tensor_value
from tests.test_callback import BATCH, compiled, data, read, tiny

_CTX = tb_context.RequestContext()


def _meta(text: str, tensor: bool = False) -> bytes:
    return metadata.create_summary_metadata(
        text, {"variables": ["a", "b", "c"]}, tensor=tensor
    ).SerializeToString()


# (step, tag, value, metadata): scalars and tensors with their metadata on the
# first value only, NaN and infinities, an empty tensor, steps 0 and 2**40.
_VALUES = [
    (0, "gradient_health/step/loss", 2.5, _meta("loss")),
    (0, "gradient_health/layer/grad_norm", [1.0, 2.0, 3.0], _meta("norm", True)),
    (0, "gradient_health/block/x", np.arange(6.0).reshape(2, 3), _meta("b", True)),
    (0, "gradient_health/empty", np.zeros([0]), _meta("e", True)),
    (3, "gradient_health/step/loss", np.nan, b""),
    (3, "gradient_health/layer/grad_norm", [np.inf, -np.inf, 1e-30], b""),
    (2**40, "gradient_health/step/loss", 1.0 / 3.0, b""),
    (2**40, "gradient_health/layer/grad_norm", [0.1, 0.2, 0.3], b""),
]


def _write_both(root) -> None:
    """Writes :data:`_VALUES` as run ``tf`` with ``tf.summary``, ``ours`` with ours."""
    tf_writer = tf.summary.create_file_writer(str(root / "tf"))
    with tf_writer.as_default():
        for step, tag, value, meta in _VALUES:
            tf.summary.write(tag, tf.constant(value, tf.float32), step, metadata=meta)
    tf_writer.close()
    ours = EventWriter(root / "ours")
    for step in sorted({v[0] for v in _VALUES}):
        ours.write(
            step,
            [tensor_value(tag, v, meta) for s, tag, v, meta in _VALUES if s == step],
        )
    ours.close()


def _values_by_step_and_tag(run_dir) -> dict:
    """``{(step, tag): (TensorProto, SummaryMetadata)}`` parsed from a run's files."""
    out = {}
    for path in glob.glob(os.path.join(run_dir, "*tfevents*")):
        for record in tf.compat.v1.io.tf_record_iterator(path):
            event = event_pb2.Event.FromString(record)
            for value in event.summary.value:
                out[(event.step, value.tag)] = (value.tensor, value.metadata)
    return out


def test_values_encode_as_tf_summary_encodes_them(tmp_path):
    """Every value's tensor proto and metadata equal tf.summary's, field by field."""
    _write_both(tmp_path)
    want = _values_by_step_and_tag(tmp_path / "tf")
    got = _values_by_step_and_tag(tmp_path / "ours")
    assert got.keys() == want.keys() and len(got) == len(_VALUES)
    for key, (tensor, meta) in want.items():
        assert got[key][0] == tensor, key
        assert got[key][1] == meta, key


def test_a_tensor_tag_encodes_as_tensor_value():
    """The fixed-shape encoder gives tensor_value's bytes, metadata first only."""
    values = np.array([[1.0, np.nan], [3.0, 4.0]], np.float32)
    tag = TensorTag("t", values.shape, b"\x0a\x00")
    assert tag.value(values.tobytes()) == tensor_value("t", values, b"\x0a\x00")
    assert tag.described
    assert tag.value(values.tobytes()) == tensor_value("t", values)


def test_the_python_loader_reads_the_same_tags_steps_values_and_metadata(tmp_path):
    """TensorBoard's Python event accumulator reads both runs alike."""
    _write_both(tmp_path)
    runs = {}
    for run in ("tf", "ours"):
        acc = plugin_event_accumulator.EventAccumulator(
            str(tmp_path / run), size_guidance={"tensors": 0}
        )
        acc.Reload()
        tags = acc.Tags()["tensors"]
        runs[run] = {
            tag: (
                acc.SummaryMetadata(tag),
                [
                    (
                        e.step,
                        e.tensor_proto.dtype,
                        tensor_util.make_ndarray(e.tensor_proto),
                    )
                    for e in acc.Tensors(tag)
                ],
            )
            for tag in tags
        }
    assert sorted(runs["ours"]) == sorted(runs["tf"]) and len(runs["tf"]) == 4
    for tag, (meta, points) in runs["tf"].items():
        got_meta, got_points = runs["ours"][tag]
        assert got_meta == meta, tag
        assert [(s, d) for s, d, _ in got_points] == [(s, d) for s, d, _ in points]
        for (_, _, a), (_, _, b) in zip(got_points, points, strict=True):
            assert a.dtype == b.dtype == np.float32 and a.shape == b.shape
            np.testing.assert_array_equal(a, b)


def _provider_reads(provider) -> dict:
    """Every scalar and tensor series of the plugin, as a data provider reads it."""
    out = {}
    plugin = metadata.PLUGIN_NAME
    for kind in ("scalars", "tensors"):
        listed = getattr(provider, f"list_{kind}")(
            _CTX, experiment_id="", plugin_name=plugin
        )
        read = getattr(provider, f"read_{kind}")(
            _CTX,
            experiment_id="",
            plugin_name=plugin,
            downsample=reader.ALL_POINTS,
            run_tag_filter=None,
        )
        for run, tags in listed.items():
            for tag, info in tags.items():
                points = read[run][tag]
                out[(kind, run, tag)] = (
                    info.max_step,
                    info.plugin_content,
                    [p.step for p in points],
                    [np.asarray(p.numpy) for p in points]
                    if kind == "tensors"
                    else [np.float32(p.value) for p in points],
                )
    return out


def _compare_runs(reads: dict) -> None:
    """Asserts that run ``ours`` reads as run ``tf``, series by series."""
    tf_keys = {(k, tag) for k, run, tag in reads if run == "tf"}
    our_keys = {(k, tag) for k, run, tag in reads if run == "ours"}
    assert our_keys == tf_keys and tf_keys
    for kind, tag in tf_keys:
        want, got = reads[(kind, "tf", tag)], reads[(kind, "ours", tag)]
        assert got[:3] == want[:3], (kind, tag)
        for a, b in zip(got[3], want[3], strict=True):
            assert a.dtype == b.dtype and a.shape == b.shape, (kind, tag)
            np.testing.assert_array_equal(a, b)


def test_both_loaders_read_the_same_series_through_the_data_providers(tmp_path):
    """Through the Python and the Rust data providers, ours reads as tf.summary's."""
    _write_both(tmp_path)
    _compare_runs(_provider_reads(reader.provider_for_logdir(tmp_path)))
    try:
        with data_server.data_server_provider(tmp_path) as provider:
            rust = _provider_reads(provider)
    except server_ingester.NoDataServerError as err:
        pytest.skip(f"no Rust data server: {err}")
    _compare_runs(rust)


def _expected_values(out, layout, rows, row_steps, windows, window_steps) -> list:
    """What the old per-tag ``tf.summary`` writes wrote: ``(step, tag, value)``.

    Spelled out from the packings, independently of the writer's byte plans.
    """
    expected = []
    ri, wi = out.rows.index, out.windows.index
    for row, step in zip(rows, row_steps, strict=True):
        for stat in summary.STEP_STATS:
            if stat in summary.MIXED_PRECISION_ONLY:
                continue
            if stat == "loss" and not row[ri["loss_known"]][0] > 0:
                continue
            expected.append((step, metadata.step_tag(stat), row[ri[stat]][0]))
        for i, name in enumerate(out.components):
            value = row[ri["components"]][i]
            expected.append((step, metadata.loss_component_tag(name), value))
        for stat in summary.LAYER_STATS:
            expected.append((step, metadata.layer_tag(stat), row[ri["v_" + stat]]))
        for stat in summary.OPTIMIZER_STATS:
            for i, name in enumerate(out.optimizers):
                value = row[ri["o_" + stat]][i]
                expected.append((step, metadata.optimizer_tag(name, stat), value))
    for row, step in zip(windows, window_steps, strict=True):
        for stat in metadata.WINDOW_SCALARS:
            expected.append((step, metadata.window_tag(stat), row[wi[stat]][0]))
        for stat in summary.WINDOW_LAYER_STATS:
            value = row[wi["layer_" + stat]]
            expected.append((step, metadata.window_layer_tag(stat), value))
        for stat in metadata.SLICE_STATS:
            for i, s in enumerate(layout.slices):
                value = row[wi["slice_" + stat]][i]
                expected.append((step, metadata.slice_tag(s.name, stat), value))
    return expected


def test_logged_rows_read_as_the_same_values_written_with_tf_summary(tmp_path):
    """Rows, windows and blocks through the step writer read as tf.summary's.

    The reference run writes each expected value with its own ``tf.summary``
    event; the step writer's run must read back the same through both loaders.
    """
    layout = stats.Layout(
        ["d/kernel", "d/bias"], [(4, 3), (3,)], {"lo": ("d/kernel", (0, 2))}
    )
    out = summary.StepSummaryWriter(layout, ["kl"], mixed_precision=False)
    out.set_optimizers(["g_opt", "d_opt"])
    out.blocks.block_steps = 4
    tags = summary.tag_metadata(
        layout, 1, 2, ["kl"], ["kl"], optimizers={"g_opt": ["d/kernel"], "d_opt": []}
    )
    ours = EventWriter(tmp_path / "ours")
    out.set_writer(ours, lambda: tags)
    rng = np.random.default_rng(0)
    rows = rng.normal(size=[6, out.rows.width]).astype(np.float32)
    rows[:, out.rows.index["loss_known"]] = 1.0
    rows[2, out.rows.index["loss_known"]] = 0.0  # no loss at step 3
    rows[4, out.rows.index["v_grad_norm"]] = np.nan
    windows = rng.normal(size=[3, out.windows.width]).astype(np.float32)
    row_steps, window_steps = np.arange(1, 7), np.array([2, 4, 6])
    out.write(rows[:3], row_steps[:3], windows[:1], window_steps[:1])
    out.write(rows[3:], row_steps[3:], windows[1:], window_steps[1:])
    out.flush_blocks()
    blocks_written = out.blocks.block_steps
    ours.close()

    reference = summary.StepSummaryWriter(layout, ["kl"], mixed_precision=False)
    reference.set_optimizers(["g_opt", "d_opt"])
    reference.blocks.block_steps = blocks_written
    tf_writer = tf.summary.create_file_writer(str(tmp_path / "tf"))
    with tf_writer.as_default():
        for step, tag, value in _expected_values(
            out, layout, rows, row_steps, windows, window_steps
        ):
            tf.summary.write(tag, tf.constant(value), int(step), metadata=tags[tag])
        done = reference.blocks.add(rows[:3], row_steps[:3])
        done += reference.blocks.add(rows[3:], row_steps[3:]) + reference.blocks.flush()
        for key, step, value in done:
            tag = metadata.key_tag("block/" + key)
            meta = reference._block_metadata(key)
            tf.summary.write(tag, tf.constant(value), step, metadata=meta)
    tf_writer.close()

    python = reader.provider_for_logdir(tmp_path)
    _same_runs(*(reader.read_run(python, run) for run in ("tf", "ours")))
    try:
        with data_server.data_server_provider(tmp_path) as provider:
            rust = [reader.read_run(provider, run) for run in ("tf", "ours")]
    except server_ingester.NoDataServerError as err:
        pytest.skip(f"no Rust data server: {err}")
    _same_runs(*rust)


def _same_runs(want: reader.RunData, got: reader.RunData) -> None:
    """Asserts that two runs hold the same series: steps, values and content."""
    assert sorted(got.scalars) == sorted(want.scalars)
    assert sorted(got.tensors) == sorted(want.tensors)
    assert "block/layer/grad_norm" in got.tensors and "step/loss" in got.scalars
    assert got.scalars["step/loss"].steps.tolist() == [1, 2, 4, 5, 6]
    for key in list(want.scalars) + list(want.tensors):
        a = got.scalars.get(key) or got.tensors[key]
        b = want.scalars.get(key) or want.tensors[key]
        np.testing.assert_array_equal(a.steps, b.steps)
        np.testing.assert_array_equal(a.values, b.values)
        assert a.content == b.content, key


def test_concurrent_writes_keep_every_event_whole(tmp_path):
    """Two threads writing at once leave every event whole and readable."""
    writer = EventWriter(tmp_path / "run")

    def write(tag):
        for step in range(1, 301):
            writer.write(step, [tensor_value(tag, [float(step)] * 50)])

    threads = [threading.Thread(target=write, args=(t,)) for t in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    writer.close()
    values = _values_by_step_and_tag(tmp_path / "run")
    assert len(values) == 600
    for (step, _), (tensor, _) in values.items():
        assert tensor_util.make_ndarray(tensor).tolist() == [float(step)] * 50
    with pytest.raises(ValueError, match="closed"):
        writer.write(1, [])


def test_a_fit_writes_every_family_into_one_event_file(tmp_path):
    """Steps, windows, blocks, curvature and trajectory of a fit share one file."""
    x, y = data()
    model = compiled(tiny)
    logdir = tmp_path / "run"
    cb = GradientHealthCallback(
        str(logdir),
        update_freq=1,
        hessian_freq=1,
        trajectory_freq=1,
        variance_window=2,
        on_flag=None,
    )
    model.fit(
        x, y, batch_size=BATCH, epochs=2, shuffle=False, verbose=0, callbacks=[cb]
    )
    assert len(os.listdir(logdir)) == 1
    run = read(str(logdir))
    for key in (
        "step/loss",
        "window/grad_variance",
        "hessian/min_ratio",
    ):
        assert len(run.scalars[key]), key
    for key in ("layer/grad_norm", "block/layer/grad_norm", "trajectory/projection"):
        assert len(run.tensors[key]), key
    assert run.tensors["trajectory/projection"].steps.tolist() == [0, 4, 8]


def test_writers_of_one_process_sort_in_the_order_they_were_made(tmp_path, monkeypatch):
    """The files' names sort as the writers were made, across 9 -> 10 and beyond."""
    import itertools

    from tb_gradplugin import event_writer

    monkeypatch.setattr(event_writer, "_uid", itertools.count(8))
    writers = [event_writer.EventWriter(tmp_path) for _ in range(4)]
    paths = [w.path for w in writers]
    for w in writers:
        w.close()
    assert sorted(paths) == paths

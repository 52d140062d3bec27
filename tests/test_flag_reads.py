"""Tests of reading a run for the diagnosis with deferred per-variable steps."""

from __future__ import annotations

import importlib.util
import pathlib

import numpy as np
import pytest

from tb_gradplugin import blocks, diagnosis, flag_reads, reader

_LATENCY = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "latency.py"


def _latency_module():
    spec = importlib.util.spec_from_file_location("latency_benchmark", _LATENCY)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def provider(tmp_path_factory):
    """A 1,200-step run with blocks of 100 steps, by the Python loader."""
    root = tmp_path_factory.mktemp("flag_reads")
    _latency_module().write_run(str(root / "big"), 1, 1200, 6, 100, block=100)
    return reader.provider_for_logdir(root)


def test_report_equals_the_report_of_every_step(provider):
    """Deferred reading gives the report of reading every series whole."""
    whole = reader.read_run(provider, "big", keys=diagnosis.SERIES_KEYS)
    expected = diagnosis.run_report(whole, last_step=reader.last_step(provider, "big"))
    assert flag_reads.run_report(provider, "big") == expected
    assert expected["last_step"] == 1200


def test_blocks_are_handed_on_only_when_they_cover_every_row(provider):
    """A tensor's blocks are used when they end at its last step and count its rows."""
    listing = reader.listing(provider, "big")
    _, tensors, block_keys = flag_reads.split_keys(listing)
    assert tensors and len(block_keys) == len(
        [k for k in tensors if k.startswith("layer/")]
    )
    data = reader.read_run(
        provider, "big", listed={k: listing[k][:2] for k in [flag_reads.GRAD_KEY]}
    )
    summaries = reader.read_run(
        provider, "big", listed={k: listing[k][:2] for k in block_keys}
    ).tensors
    grad = data.scalar(flag_reads.GRAD_KEY)
    specs = {k: (listing[k][1], listing[k][2]) for k in tensors}
    reads = []
    deferred = flag_reads.deferred_tensors(specs, summaries, grad, reads.append)
    key = "layer/grad_norm"
    assert deferred[key].blocks is not None and not reads
    np.testing.assert_array_equal(deferred[key].blocks["count"][:, 0], np.full(12, 100))
    assert deferred[key].names == [f"layer_{i}/kernel" for i in range(6)]
    # One row fewer in the per-step scalar: the blocks no longer match.
    short = reader.Series(grad.steps[1:], grad.values[1:], grad.wall_times[1:], {})
    assert (
        flag_reads.deferred_tensors(specs, summaries, short, reads.append)[key].blocks
        is None
    )
    # A block series that ends before the tensor's last step is not used.
    specs_later = {k: (c, step + 1) for k, (c, step) in specs.items()}
    later = flag_reads.deferred_tensors(specs_later, summaries, grad, reads.append)
    assert later[key].blocks is None
    # A live run: the tensor listed at step 1150, its last block ending at 1100.
    live = {
        k: reader.Series(s.steps[:-1], s.values[:-1], s.wall_times[:-1], s.content)
        for k, s in summaries.items()
    }
    specs_live = {k: (c, 1150) for k, (c, _) in specs.items()}
    found = flag_reads.deferred_tensors(specs_live, live, grad, reads.append)[key]
    assert found.blocks is not None and found.rows == 1150 and not reads
    assert blocks.block_key(key) in summaries


def test_a_healthy_run_reads_only_the_blocks_the_rules_ask_about(provider):
    """Block summaries are read on first use: never those of the NaN counts."""
    listing = reader.listing(provider, "big")
    scalars, tensors, block_keys = flag_reads.split_keys(listing)
    data = reader.read_run(provider, "big", listed={k: listing[k][:2] for k in scalars})
    asked = []

    def read_summary(key):
        asked.append(key)
        return reader.read_run(provider, "big", listed={key: listing[key][:2]}).tensor(
            key
        )

    deferred = flag_reads.deferred_tensors(
        {k: (listing[k][1], listing[k][2]) for k in tensors},
        flag_reads.LazySummaries(block_keys, read_summary),
        data.scalar(flag_reads.GRAD_KEY),
        lambda key: pytest.fail(f"read every step of {key}"),
    )
    assert not asked  # nothing read before a rule asks
    report = diagnosis.run_report(data, last_step=1200, deferred=deferred)
    whole = reader.read_run(provider, "big", keys=diagnosis.SERIES_KEYS)
    assert report == diagnosis.run_report(whole, last_step=1200)
    assert "block/layer/nonfinite_grads" in block_keys
    assert "block/layer/nonfinite_grads" not in asked and asked
    assert len(asked) == len(set(asked))  # each read once

"""The in-step reduction (grouped small variables, large ones alone) against numpy."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from tb_gradplugin import fused_sums, stats, step_reduction
from tb_gradplugin.step_reduction import GROUP_MAX_SIZE, StepReduction

# One variable above the group's bound, three below it; the last gets a
# sparse (IndexedSlices) gradient.
PATHS = ["big", "bias", "small", "table"]
SHAPES = [(70, 64), (64,), (5, 3), (8, 4)]
SLICES = {"big_cols": ("big", (2, 5)), "small_cols": ("small", (0, 2))}


def _reduction():
    layout = stats.Layout(PATHS, SHAPES, SLICES)
    variables = [tf.Variable(tf.zeros(s)) for s in SHAPES]
    reduction = StepReduction(
        layout, variables, tf.distribute.get_strategy(), False, "epoch"
    )
    return layout, reduction


def _arrays(seed):
    rng = np.random.default_rng(seed)
    out = [rng.normal(size=s).astype(np.float32) for s in SHAPES]
    for a in out:
        a.reshape(-1)[::7] = 0.0  # exact zeros to count
    return out


def _sparse(dense):
    """``dense`` as an IndexedSlices with row 1 listed twice (summed rows)."""
    rows = [0, 1, 1, 3, 6]
    values = np.stack([dense[r] for r in rows])
    values[1] = dense[1] - 1.0
    values[2] = 1.0
    return tf.IndexedSlices(tf.constant(values), tf.constant(rows), SHAPES[3])


def _dense_of(sparse):
    return tf.convert_to_tensor(sparse).numpy()


def _expected(grads, before, after, scale=1.0):
    """Numpy reference of the ``[6 V]`` vector; ``None`` gradient = absent."""
    cols = {name: [] for name in stats.SUM_COLUMNS}
    for g, b, a in zip(grads, before, after, strict=True):
        if g is None:
            for name in ("grad_sq", "grad_abs", "grad_zero"):
                cols[name].append(np.nan)
            cols["grad_nonfinite"].append(0.0)
        else:
            g = g.astype(np.float64) / scale
            cols["grad_sq"].append(np.sum(g**2))
            cols["grad_abs"].append(np.sum(np.abs(g)))
            cols["grad_zero"].append(np.sum(g == 0))
            cols["grad_nonfinite"].append(np.sum(~np.isfinite(g)))
        cols["param_sq"].append(np.sum(a.astype(np.float64) ** 2))
        cols["update_sq"].append(np.sum((a.astype(np.float64) - b) ** 2))
    return np.concatenate([cols[name] for name in stats.SUM_COLUMNS])


def test_bound_puts_small_variables_in_the_group():
    """Variables under the bound are grouped, the one above it is reduced alone."""
    assert SHAPES[0][0] * SHAPES[0][1] >= GROUP_MAX_SIZE
    _, reduction = _reduction()
    assert reduction.small == [1, 2, 3] and reduction.large == [0]


@pytest.fixture(params=["counted", "branch", "fused", "all fused"])
def counting(request, monkeypatch):
    """Where the large variable's zeros and NaN/Inf are counted.

    Every step, in the branch, or in the fused pass (the large variable; or
    every one, the sparse table too).
    """
    if request.param == "branch":
        monkeypatch.setattr(stats, "COUNTED_MAX_SIZE", 0)
    if request.param.endswith("fused"):
        monkeypatch.setattr(fused_sums, "FUSED_MIN_SIZE", 0)
    if request.param == "all fused":
        monkeypatch.setattr(step_reduction, "GROUP_MAX_SIZE", 0)
    return request.param


def test_fused_fixture_fuses_what_it_says(counting):
    """The fixture's settings put the variables where its name says."""
    _, reduction = _reduction()
    fused = {"fused": [0], "all fused": [0, 1, 2, 3]}.get(counting, [])
    assert reduction.fused.indices == fused
    assert sorted(reduction.running) == [i for i in reduction.large if i not in fused]


def test_step_sums_slices_and_absent_variable_match_numpy(counting):
    """Σg², Σ|g|, zeros, Σw², Σ(Δw)² per variable and slice sums equal numpy's."""
    layout, reduction = _reduction()
    grads, before, after = _arrays(0), _arrays(1), _arrays(2)
    sparse = _sparse(grads[3])
    grads[3] = _dense_of(sparse)
    by_index = {0: tf.constant(grads[0]), 2: tf.constant(grads[2]), 3: sparse}
    collected = {}
    reduction.collect(
        collected,
        by_index,
        {i: tf.constant(b) for i, b in enumerate(before)},
        {i: tf.constant(a) for i, a in enumerate(after)},
        tf.constant(4.0),
        tf.constant(False),
        False,
    )
    parts = reduction.step_parts(collected)
    nonfinite = reduction.nonfinite(parts[0])
    got = parts[0].numpy()
    want = _expected([grads[0], None, grads[2], grads[3]], before, after, 4.0)
    np.testing.assert_allclose(got, want, rtol=2e-6, atol=0)
    assert float(nonfinite) == 0.0
    assert reduction.sparse_paths == {"table"}
    g0, g2 = grads[0] / 4.0, grads[2] / 4.0
    np.testing.assert_allclose(
        parts[1].numpy(),
        [np.sum(g0[:, 2:5] ** 2), np.sum(g2[:, 0:2] ** 2)],
        rtol=2e-6,
    )
    np.testing.assert_allclose(
        parts[2].numpy(),
        [np.abs(g0[:, 2:5]).sum(), np.abs(g2[:, 0:2]).sum()],
        rtol=2e-6,
    )
    assert len(layout.slices) == 2


def test_nan_and_inf_entries_are_counted_per_variable(counting):
    """On a non-finite step each variable's NaN/Inf count equals numpy's."""
    _, reduction = _reduction()
    grads, before, after = _arrays(3), _arrays(4), _arrays(5)
    grads[0][3, 3] = np.nan
    grads[2][1, 1], grads[2][2, 2] = np.inf, -np.inf
    collected = {}
    reduction.collect(
        collected,
        {i: tf.constant(g) for i, g in enumerate(grads)},
        {i: tf.constant(b) for i, b in enumerate(before)},
        {i: tf.constant(a) for i, a in enumerate(after)},
        None,
        tf.constant(False),
        False,
    )
    parts = reduction.step_parts(collected)
    nonfinite = reduction.nonfinite(parts[0])
    v = len(SHAPES)
    counts = parts[0].numpy()[3 * v : 4 * v]
    assert counts.tolist() == [1.0, 0.0, 2.0, 0.0]
    assert float(nonfinite) == 3.0
    zeros = parts[0].numpy()[2 * v : 3 * v]
    assert zeros.tolist() == [float(np.sum(g == 0)) for g in grads]


def test_a_variable_no_update_reached_has_nan_sums_and_no_nan_count(counting):
    """A variable outside every update: NaN sums, a NaN/Inf count of 0."""
    _, reduction = _reduction()
    grads, before, after = _arrays(6), _arrays(7), _arrays(8)
    grads[0][0, 0] = np.nan  # a non-finite step: the counts are taken
    stepped = (0, 2)  # variables 1 and 3 are in no update (frozen, say)
    collected = {}
    reduction.collect(
        collected,
        {i: tf.constant(grads[i]) for i in stepped},
        {i: tf.constant(before[i]) for i in stepped},
        {i: tf.constant(after[i]) for i in stepped},
        None,
        tf.constant(False),
        False,
    )
    parts = reduction.step_parts(collected)
    nonfinite = reduction.nonfinite(parts[0])
    v = len(SHAPES)
    sums = parts[0].numpy().reshape(6, v)
    assert sums[3].tolist() == [1.0, 0.0, 0.0, 0.0] and float(nonfinite) == 1.0
    for column in (1, 3):
        assert np.isnan(sums[[0, 1, 2, 4, 5], column]).all()


def _step(reduction, by_index, skipped=False):
    collected = {}
    shapes = {i: SHAPES[i] for i in by_index}
    reduction.collect(
        collected,
        {i: g if stats.is_sparse(g) else tf.constant(g) for i, g in by_index.items()},
        {i: tf.zeros(s) for i, s in shapes.items()},
        {i: tf.zeros(s) for i, s in shapes.items()},
        None,
        tf.constant(skipped),
        True,
    )
    return collected


def test_running_sums_over_partial_updates_and_skipped_steps(counting):
    """|S|², zeros and slice |S|² of the window equal numpy's, then reset to 0."""
    _, reduction = _reduction()
    steps = [_arrays(10 + k) for k in range(3)]
    # Two optimizers: one updates big and small, the other bias and table
    # (a sparse gradient).
    for grads in steps:
        sparse = _sparse(grads[3])
        grads[3] = _dense_of(sparse)
        _step(reduction, {0: grads[0], 2: grads[2]})
        _step(reduction, {1: grads[1], 3: sparse})
    _step(reduction, {i: g * 100 for i, g in enumerate(_arrays(20))}, skipped=True)
    # Every seventh entry is 0 at every step: 0 in the window's sum too.
    total = [sum(grads[i] for grads in steps) for i in range(len(SHAPES))]
    out = reduction.running_close().numpy()
    v = len(SHAPES)
    np.testing.assert_allclose(
        out[:v], [np.sum(t.astype(np.float64) ** 2) for t in total], rtol=2e-6
    )
    assert out[v : 2 * v].tolist() == [float(np.sum(t == 0)) for t in total]
    np.testing.assert_allclose(
        out[2 * v :],
        [np.sum(total[0][:, 2:5] ** 2), np.sum(total[2][:, 0:2] ** 2)],
        rtol=2e-6,
    )
    again = reduction.running_close().numpy()
    assert not again[:v].any() and again[v : 2 * v].tolist() == [
        float(np.prod(s)) for s in SHAPES
    ]


def test_replicas_share_the_variables_by_size():
    """Under several replicas the group goes to the first, large ones balance."""
    sizes = [5000, 10, 9000, 20, 4500, 4500]
    owner = step_reduction._owners(sizes, [1, 3], [0, 2, 4, 5], 3)
    assert owner[1] == owner[3] == 0
    # 9000 to an empty one (1), 5000 to the other (2), then the 4500s to the
    # least loaded: 0 (30 entries), then 0 again (4530 < 5000).
    assert owner == {1: 0, 3: 0, 2: 1, 0: 2, 4: 0, 5: 0}
    loads = [sum(sizes[i] for i, r in owner.items() if r == k) for k in range(3)]
    assert max(loads) - min(loads) <= max(sizes)

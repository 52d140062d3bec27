"""Tests of tb_gradplugin.trajectory against numpy's SVD and eigendecomposition."""

from __future__ import annotations

import numpy as np
import pytest

from tb_gradplugin import trajectory
from tests.no_tensorflow import run_without_tensorflow


def _runs(seed=0, k=20):
    rng = np.random.default_rng(seed)
    runs = {}
    for r in range(3):
        n = 6 + r
        drift = rng.normal(size=k) * 3
        x = np.cumsum(rng.normal(size=(n, k)) * 0.3 + drift / n, axis=0)
        runs[f"run{r}"] = (list(range(0, 10 * n, 10)), x + rng.normal(size=k))
    return runs


def test_pca_matches_numpy_svd_of_all_runs_together():
    """The xy paths and variance ratios equal an SVD of the stacked snapshots."""
    runs = _runs()
    out = trajectory.pca_trajectories(runs)
    stacked = np.concatenate([x for _, x in runs.values()])
    centred = stacked - stacked.mean(axis=0)
    u, s, _ = np.linalg.svd(centred, full_matrices=False)
    expected_xy = u[:, :2] * s[:2]
    got_xy = np.concatenate([np.array(out["runs"][r]["xy"]) for r in runs])
    for c in range(2):  # a component's sign is a convention
        sign = np.sign(expected_xy[0, c] * got_xy[0, c])
        np.testing.assert_allclose(got_xy[:, c], sign * expected_xy[:, c], atol=1e-9)
    # The variance ratios, independently from the covariance's eigenvalues.
    cov_eig = np.sort(np.linalg.eigvalsh(np.cov(stacked.T)))[::-1]
    np.testing.assert_allclose(
        out["explained_variance_ratio"], cov_eig[:2] / cov_eig.sum(), rtol=1e-9
    )
    for name, (steps, _) in runs.items():
        assert out["runs"][name]["steps"] == steps
        assert len(out["runs"][name]["xy"]) == len(steps)


def test_sign_convention_makes_output_deterministic():
    """Negating the data leaves the largest loading positive, so xy flips sign."""
    runs = _runs(1)
    out = trajectory.pca_trajectories(runs)
    neg = trajectory.pca_trajectories({r: (s, -x) for r, (s, x) in runs.items()})
    for r in runs:
        np.testing.assert_allclose(
            np.array(neg["runs"][r]["xy"]), -np.array(out["runs"][r]["xy"]), atol=1e-9
        )


def test_non_finite_snapshot_is_excluded_from_fit_and_marked_nan():
    """A NaN snapshot gets [nan, nan]; the other points equal a fit without it."""
    runs = _runs(2)
    steps, x = runs["run1"]
    bad = x.copy()
    bad[3, 5] = np.nan
    with_nan = dict(runs, run1=(steps, bad))
    without = dict(runs, run1=(steps[:3] + steps[4:], np.delete(x, 3, axis=0)))
    a = trajectory.pca_trajectories(with_nan)
    b = trajectory.pca_trajectories(without)
    assert all(np.isnan(a["runs"]["run1"]["xy"][3]))
    kept = [p for i, p in enumerate(a["runs"]["run1"]["xy"]) if i != 3]
    np.testing.assert_allclose(kept, b["runs"]["run1"]["xy"])
    np.testing.assert_allclose(a["runs"]["run0"]["xy"], b["runs"]["run0"]["xy"])


def test_degenerate_inputs():
    """One snapshot, one direction of variance and no snapshots all work."""
    one = trajectory.pca_trajectories({"a": ([0], np.ones((1, 4)))})
    assert one["runs"]["a"]["xy"] == [[0.0, 0.0]]
    assert one["explained_variance_ratio"] == [0.0, 0.0]
    line = np.outer(np.arange(5.0), np.array([1.0, 2.0, 0.0]))
    out = trajectory.pca_trajectories({"a": (list(range(5)), line)})
    assert out["explained_variance_ratio"] == pytest.approx([1.0, 0.0])
    xy = np.array(out["runs"]["a"]["xy"])
    np.testing.assert_allclose(xy[:, 1], 0.0, atol=1e-12)
    np.testing.assert_allclose(np.diff(xy[:, 0]), np.sqrt(5.0))
    empty = trajectory.pca_trajectories({"a": ([], np.zeros((0, 3)))})
    assert empty == {
        "runs": {"a": {"steps": [], "xy": []}},
        "explained_variance_ratio": [0.0, 0.0],
    }
    assert trajectory.pca_trajectories({})["runs"] == {}


def test_bad_input_raises_value_error():
    """Mismatched dimensions, shapes or step counts raise a clear ValueError."""
    with pytest.raises(ValueError, match="different dimensions"):
        trajectory.pca_trajectories(
            {"a": ([0, 1], np.zeros((2, 3))), "b": ([0, 1], np.zeros((2, 4)))}
        )
    with pytest.raises(ValueError, match="2-D"):
        trajectory.pca_trajectories({"a": ([0], np.zeros(3))})
    with pytest.raises(ValueError, match="steps"):
        trajectory.pca_trajectories({"a": ([0, 1, 2], np.zeros((2, 3)))})
    with pytest.raises(ValueError, match="pair"):
        trajectory.pca_trajectories({"a": 5})


def test_module_imports_without_tensorflow():
    """trajectory.py imports with TensorFlow and Keras blocked."""
    out = run_without_tensorflow(
        "import tb_gradplugin.trajectory as t;"
        "print(t.pca_trajectories({'a': ([0, 1], [[0.0, 1.0], [1.0, 0.0]])})"
        "['explained_variance_ratio'])"
    )
    assert "[1.0, 0.0]" in out


def test_comparable_runs_keeps_the_largest_group_of_one_projection():
    """Runs projected with another matrix are left out and named."""
    same = {"seed": 0, "dim": 8, "n_params": 100}
    other = {"seed": 0, "dim": 8, "n_params": 50}
    x = np.zeros((2, 8))
    kept, excluded = trajectory.comparable_runs(
        {"a": ([0, 1], x, same), "odd": ([0, 1], x, other), "b": ([0, 1], x, same)}
    )
    assert sorted(kept) == ["a", "b"] and excluded == ["odd"]
    assert kept["a"][0] == [0, 1] and kept["a"][1] is x
    assert trajectory.comparable_runs({}) == ({}, [])


def test_projection_is_fixed_by_seed_dim_and_size_only():
    """The projection is linear, ±1/√dim per column, and ignores variable split."""
    n, dim = 40_000, 64  # more than two generated blocks of 16,384 rows
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=n), rng.normal(size=n)
    whole = trajectory.project_parameters([a], dim=dim, seed=5)
    split = trajectory.project_parameters([a[:10], a[10:20_000], a[20_000:]], dim, 5)
    np.testing.assert_allclose(whole, split, rtol=1e-6)
    assert whole.shape == (dim,) and whole.dtype == np.float32
    summed = trajectory.project_parameters([a + b], dim=dim, seed=5)
    parts = whole + trajectory.project_parameters([b], dim=dim, seed=5)
    np.testing.assert_allclose(summed, parts, rtol=1e-4, atol=1e-3)
    for i in (0, 16_383, 16_384, n - 1):
        unit = np.zeros(n)
        unit[i] = 1.0
        column = trajectory.project_parameters([unit], dim=dim, seed=5)
        np.testing.assert_allclose(np.abs(column), 1 / np.sqrt(dim), rtol=1e-6)
    other_seed = trajectory.project_parameters([a], dim=dim, seed=6)
    assert not np.allclose(whole, other_seed)
    with pytest.raises(ValueError, match="dim"):
        trajectory.project_parameters([a], dim=0)
    # Johnson-Lindenstrauss: distances survive within ~3/√dim relative error.
    ratio = np.linalg.norm(whole) / np.linalg.norm(a)
    assert abs(ratio - 1) < 3 / np.sqrt(dim)


def test_projection_same_for_two_models_of_one_architecture():
    """Two separately built models project through the same matrix."""
    import keras  # only this test needs models; the module itself is numpy

    def build(seed):
        keras.utils.set_random_seed(seed)
        return keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])

    m1, m2 = build(1), build(2)
    p1 = trajectory.project_parameters(m1.trainable_variables, dim=32)
    m1.set_weights(m2.get_weights())
    assert not np.allclose(
        p1, trajectory.project_parameters(m1.trainable_variables, 32)
    )
    np.testing.assert_array_equal(
        trajectory.project_parameters(m1.trainable_variables, dim=32),
        trajectory.project_parameters(m2.trainable_variables, dim=32),
    )


def test_projection_matrix_follows_documented_raw_pcg64_bits():
    """Entry (i, c) is bit i·dim + c of raw PCG64 words, fixed across versions."""
    x, dim = np.arange(10.0), 4
    word = int(
        np.random.PCG64(np.random.SeedSequence([0, dim, x.size, 0])).random_raw()
    )
    matrix = np.array(
        [[2 * ((word >> (i * dim + c)) & 1) - 1 for c in range(dim)] for i in range(10)]
    )
    expected = x @ matrix / np.sqrt(dim)
    got = trajectory.project_parameters([x], dim=dim, seed=0)
    np.testing.assert_allclose(got, expected)
    # Golden values: a change here breaks comparisons with older logdirs.
    np.testing.assert_array_equal(got, np.float32([7.5, 5.5, -0.5, 1.5]))

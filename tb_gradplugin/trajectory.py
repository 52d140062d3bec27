"""One PCA over the projected parameter snapshots of several runs (numpy only).

Seed 003 trained the same model eight times and drew the eight paths through
parameter space in one 2-D PCA plane. The callback logs each snapshot as a
random projection whose matrix depends only on ``(seed, dim, parameter
count)`` (``trajectory/projection``), so the snapshots of all runs of one
architecture live in the same space; :func:`pca_trajectories` fits a single
PCA to all of them together and returns each run's path in its first two
components. :func:`project_parameters` makes the projection. This module never
imports TensorFlow.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["comparable_runs", "pca_trajectories", "project_parameters"]


def _as_matrix(run: str, steps: Sequence[int], snapshots: Any) -> np.ndarray:
    """Checks one run's input and returns its snapshots as a float64 matrix."""
    x = np.asarray(snapshots, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(
            f"run {run!r}: snapshots must be a 2-D array [n, k], got shape {x.shape}"
        )
    if len(steps) != x.shape[0]:
        raise ValueError(f"run {run!r}: {len(steps)} steps but {x.shape[0]} snapshots")
    return x


def comparable_runs(
    projections: Mapping[str, tuple[Sequence[int], Any, Mapping[str, Any]]],
) -> tuple[dict[str, tuple[Sequence[int], Any]], list[str]]:
    """Picks the runs whose snapshots can share one PCA.

    Only projections made with the same matrix share a space, and the matrix is
    a function of ``(seed, dim, n_params)`` in the series content. The largest
    group of such runs is kept (the first run's group on a tie).

    Args:
        projections: Run name -> ``(steps, X, content)``: a run's projected
            snapshots and the content of its ``trajectory/projection`` series.

    Returns:
        ``(runs, excluded)``: the kept runs as :func:`pca_trajectories` takes
        them, and the sorted names of the runs left out. Both empty when
        ``projections`` is.
    """
    groups: dict[tuple, dict[str, tuple[Sequence[int], Any]]] = {}
    for run, (steps, snapshots, content) in projections.items():
        group = (content.get("seed"), content.get("dim"), content.get("n_params"))
        groups.setdefault(group, {})[run] = (steps, snapshots)
    if not groups:
        return {}, []
    kept = max(groups.values(), key=len)
    excluded = sorted(r for g in groups.values() if g is not kept for r in g)
    return kept, excluded


def pca_trajectories(
    runs: Mapping[str, tuple[Sequence[int], Any]],
) -> dict[str, Any]:
    """Projects every run's snapshots onto the first two principal components.

    The components are fitted to the snapshots of all runs together (centred
    on their common mean), so the paths are drawn in one plane and can be
    compared. A component's sign is fixed so that its largest loading is
    positive, which makes the output deterministic. Snapshots with a NaN or
    Inf take no part in the fit and get ``[nan, nan]``.

    Args:
        runs: Run name -> ``(steps, X)`` with ``X`` of shape ``[n, k]``: the
            ``n`` projected snapshots of the run, in step order. Every run
            must have the same ``k`` (the same projection).

    Returns:
        ``{"runs": {run: {"steps": [...], "xy": [[x, y], ...]}},
        "explained_variance_ratio": [r1, r2]}``. With fewer than two
        directions of variance, the missing coordinates and ratios are 0.

    Raises:
        ValueError: When a run's input is malformed or the runs' projection
            dimensions differ.
    """
    matrices: dict[str, np.ndarray] = {}
    steps_of: dict[str, list[int]] = {}
    for run, item in runs.items():
        try:
            steps, snapshots = item
        except (TypeError, ValueError) as err:
            raise ValueError(f"run {run!r}: expected a (steps, X) pair") from err
        x = _as_matrix(run, steps, snapshots)
        matrices[run] = x
        steps_of[run] = [int(s) for s in steps]
    dims = {x.shape[1] for x in matrices.values() if x.shape[0]}
    if len(dims) > 1:
        by_dim = {r: x.shape[1] for r, x in matrices.items() if x.shape[0]}
        raise ValueError(
            "runs were projected to different dimensions and cannot share one "
            f"PCA: {by_dim}"
        )
    result: dict[str, Any] = {"runs": {}, "explained_variance_ratio": [0.0, 0.0]}
    if not dims:
        for run in matrices:
            result["runs"][run] = {"steps": steps_of[run], "xy": []}
        return result

    finite = {r: np.all(np.isfinite(x), axis=1) for r, x in matrices.items()}
    fit = np.concatenate([x[finite[r]] for r, x in matrices.items()])
    components = np.zeros((2, next(iter(dims))))
    mean = np.zeros(components.shape[1])
    if fit.shape[0]:
        mean = fit.mean(axis=0)
        _, singular, vt = np.linalg.svd(fit - mean, full_matrices=False)
        total = float(np.sum(singular**2))
        keep = min(2, vt.shape[0])
        for i in range(keep):
            if total > 0 and singular[i] ** 2 > 1e-12 * total:
                v = vt[i]
                components[i] = v if v[np.argmax(np.abs(v))] >= 0 else -v
                result["explained_variance_ratio"][i] = float(singular[i] ** 2 / total)
    for run, x in matrices.items():
        xy = (x - mean) @ components.T
        xy[~finite[run]] = math.nan
        result["runs"][run] = {"steps": steps_of[run], "xy": xy.tolist()}
    return result


_PROJECTION_CHUNK = 1 << 14
"""Parameters per generated block of the projection matrix (16,384 rows × dim
columns: 16 MiB of float32 for dim 256)."""


def _projection_bits(seed: int, dim: int, n: int, block: int, rows: int) -> np.ndarray:
    """Returns the 0/1 entries of one block of the projection, as float32.

    Raw PCG64 output seeded through ``SeedSequence`` is stable across numpy
    versions and platforms (unlike ``Generator`` methods), so a matrix made
    today matches one made later for the same architecture.
    """
    generator = np.random.PCG64(np.random.SeedSequence([seed, dim, n, block]))
    words = generator.random_raw(-(-rows * dim // 64)).astype("<u8")
    bits = np.unpackbits(words.view(np.uint8), bitorder="little")
    return bits[: rows * dim].reshape(rows, dim).astype(np.float32)


def project_parameters(
    variables: Sequence[Any], dim: int = 256, seed: int = 0
) -> np.ndarray:
    """Projects the concatenated parameters with a fixed random ±1/√dim matrix.

    The matrix (Achlioptas 2003: ±1 entries preserve distances like Gaussian
    ones) is generated block by block of 16,384 parameters from a generator
    seeded with ``(seed, dim, parameter count, block index)`` only, so every run
    of the same architecture gets the same matrix and the memory stays bounded
    whatever the model's size. Cost: ~1.5 s per million parameters at dim 256
    on 2 cores (measured here), so mind ``trajectory_freq`` for big models.

    Args:
        variables: The variables (or arrays) to project, in a fixed order,
            e.g. ``model.trainable_variables``.
        dim: Output dimension. Defaults to 256.
        seed: Seed shared by the runs to compare. Defaults to 0.

    Returns:
        A float32 array of shape ``[dim]``.

    Raises:
        ValueError: When ``dim`` or ``seed`` is negative or ``dim`` is zero, or
            there are no parameters.
    """
    if dim < 1:
        raise ValueError(f"dim must be >= 1, got {dim}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    arrays = [np.asarray(v, dtype=np.float32).reshape(-1) for v in variables]
    n = sum(a.size for a in arrays)
    if n == 0:
        raise ValueError("project_parameters: no parameters to project")
    flat = np.concatenate(arrays) if len(arrays) > 1 else arrays[0]
    out = np.zeros(dim, dtype=np.float64)
    for block, start in enumerate(range(0, n, _PROJECTION_CHUNK)):
        part = flat[start : start + _PROJECTION_CHUNK]
        bits = _projection_bits(seed, dim, n, block, part.size)
        # x @ (2B - 1) = 2 x @ B - sum(x).
        out += 2.0 * (part @ bits).astype(np.float64) - float(
            part.sum(dtype=np.float64)
        )
    return (out / math.sqrt(dim)).astype(np.float32)

"""A Hessian's spectral density: Gaussian broadening, its grid, a histogram (numpy).

The density drawn by the curvature view is the Gaussian broadening of a
spectral measure (Ghorbani, Krishnan & Xiao 2019; PyHessian's ESD, Yao et al.
2020): exact eigenvalues with weights ``1/n``, or per Lanczos probe the Gauss
nodes and weights (:func:`tb_gradplugin.lanczos.lanczos`), with width
``σ = (θ_max - θ_min) / steps``, the mean spacing of the nodes.
:func:`unpack_density` reads one logged row of ``hessian_spectrum/density``
back. Imports no TensorFlow, so the plugin side uses it too.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

__all__ = [
    "DEFAULT_DENSITY_POINTS",
    "broadening",
    "density",
    "density_grid",
    "density_of",
    "histogram",
    "unpack_density",
]

DEFAULT_DENSITY_POINTS = 512
"""Grid points of the logged density. The grid spans the spectrum plus 5 σ on
each side; with σ = width / 128 its spacing is about σ / 3, fine enough for the
trapezoid rule to integrate the Gaussians to 1 within 1e-3."""

_TAIL_SIGMAS = 5.0
"""Grid margin beyond the extreme nodes, in σ: the Gaussian mass left outside
is below 3e-7."""


def broadening(lo: float, hi: float, steps: int) -> float:
    """Returns the Gaussian width σ of a density from ``steps`` nodes.

    Args:
        lo: Smallest eigenvalue (or node).
        hi: Largest eigenvalue (or node).
        steps: Lanczos steps: the nodes per probe.

    Returns:
        ``(hi - lo) / steps``, the mean spacing of the nodes; ``|hi| / steps``
        (or 1) for a single point, so the density stays finite.
    """
    width = float(hi - lo)
    if width <= 0:
        width = abs(float(hi)) or 1.0
    return width / max(1, steps)


def density_grid(lo: float, hi: float, sigma: float, points: int) -> np.ndarray:
    """Returns the evaluation grid of a density: the spectrum plus 5 σ each side.

    Args:
        lo: Smallest eigenvalue.
        hi: Largest eigenvalue.
        sigma: Gaussian width.
        points: Number of grid points (at least 2).

    Returns:
        float64 ``[points]``, uniform and ascending.
    """
    margin = _TAIL_SIGMAS * sigma
    return np.linspace(lo - margin, hi + margin, max(2, points))


def density(
    nodes: Sequence[np.ndarray],
    weights: Sequence[np.ndarray],
    sigma: float,
    grid: np.ndarray,
) -> np.ndarray:
    """Evaluates the Gaussian-broadened spectral density on a grid.

    ``ρ(t) = (1/B) Σ_b Σ_k w_bk · N(t; θ_bk, σ²)`` (PyHessian's
    ``density_generate``). For exact eigenvalues pass one "probe" with weights
    ``1/n``.

    Args:
        nodes: Per probe, the nodes ``θ``.
        weights: Per probe, their weights (each probe's sum to 1).
        sigma: Gaussian width, > 0, in eigenvalue units.
        grid: Points ``t`` to evaluate at.

    Returns:
        ``[len(grid)]`` density in 1 / eigenvalue units; it integrates to 1 over
        a grid from :func:`density_grid`.
    """
    theta = np.concatenate([np.asarray(t, np.float64) for t in nodes])
    w = np.concatenate([np.asarray(x, np.float64) for x in weights]) / len(nodes)
    out = np.zeros(grid.shape[0])
    # Chunked over nodes: a full [nodes, grid] matrix is 512 × 512 × 8 B per
    # probe, fine, but thousands of exact eigenvalues would make it large.
    for start in range(0, theta.size, 1024):
        z = (grid[None, :] - theta[start : start + 1024, None]) / sigma
        out += w[start : start + 1024] @ np.exp(-0.5 * z * z)
    return out / (sigma * math.sqrt(2.0 * math.pi))


def density_of(
    nodes: Sequence[np.ndarray],
    weights: Sequence[np.ndarray],
    steps: int,
    points: int = DEFAULT_DENSITY_POINTS,
) -> tuple[float, np.ndarray, np.ndarray]:
    """Returns the broadening, grid and density of a quadrature or spectrum.

    Args:
        nodes: Per probe, the nodes (exact eigenvalues: one probe).
        weights: Per probe, their weights, each summing to 1.
        steps: Nodes per probe that set the broadening (:func:`broadening`).
        points: Grid points. Defaults to :data:`DEFAULT_DENSITY_POINTS`.

    Returns:
        ``(sigma, grid, density)``, the arrays ``[points]``; NaN when a node
        is not finite.
    """
    every = np.concatenate([np.asarray(t, np.float64) for t in nodes])
    if every.size == 0 or not np.all(np.isfinite(every)):
        nan = np.full(points, math.nan)
        return math.nan, nan, nan.copy()
    lo, hi = float(every.min()), float(every.max())
    sigma = broadening(lo, hi, steps)
    grid = density_grid(lo, hi, sigma, points)
    return sigma, grid, density(nodes, weights, sigma, grid)


def histogram(eigenvalues: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """Returns the share of eigenvalues in bins centred on a uniform grid.

    Args:
        eigenvalues: ``[n]`` eigenvalues.
        grid: Uniform ascending bin centres ``[k]``.

    Returns:
        ``[k]`` shares summing to 1 (the grid spans every eigenvalue).
    """
    half = 0.5 * (grid[1] - grid[0])
    edges = np.concatenate([grid - half, [grid[-1] + half]])
    counts, _ = np.histogram(np.asarray(eigenvalues, np.float64), edges)
    return counts / max(1, np.asarray(eigenvalues).size)


def unpack_density(
    steps: np.ndarray,
    values: np.ndarray,
    content: dict,
    step: int | None = None,
) -> dict:
    """Unpacks one step of the logged ``hessian_spectrum/density`` series.

    Each logged row is ``[σ, grid, density, histogram]`` laid end to end, the
    three arrays ``content["points"]`` long (``curvature.write_summary``).

    Args:
        steps: ``[n]`` the curvature steps of the series, ascending.
        values: ``[n, 1 + 3 · points]`` the logged rows.
        content: The series' content (``points``, ``method``).
        step: The step to unpack. Defaults to ``None``: the latest; a step
            that was not logged gives the latest before it (or the first).

    Returns:
        ``{"step", "steps", "method", "broadening", "grid", "density",
        "histogram"}`` with ``grid``, ``density`` float arrays ``[points]``
        and ``histogram`` such an array, or ``None`` where it is all NaN (the
        Lanczos path).
    """
    steps = np.asarray(steps, dtype=np.int64)
    values = np.asarray(values, dtype=np.float64)
    points = int(content.get("points", (values.shape[1] - 1) // 3))
    if step is None:
        row = steps.shape[0] - 1
    else:
        row = max(0, int(np.searchsorted(steps, step, side="right")) - 1)
    sigma = float(values[row, 0])
    grid, dens, hist = values[row, 1 : 1 + 3 * points].reshape(3, points)
    return {
        "step": int(steps[row]),
        "steps": steps.tolist(),
        "method": content.get("method"),
        "broadening": sigma if math.isfinite(sigma) else None,
        "grid": grid,
        "density": dens,
        "histogram": None if np.all(np.isnan(hist)) else hist,
    }

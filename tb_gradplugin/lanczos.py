"""Stochastic Lanczos quadrature and Hutchinson's trace of a symmetric operator (numpy).

Given only products ``v ↦ A v`` (for a Hessian: Hessian-vector products),
:func:`lanczos` runs the Lanczos iteration from a batch of random start vectors
and returns, per vector, the Gauss quadrature of its spectral measure: Ritz
values (nodes) and weights (Golub & Meurant 2010, ch. 6; Ubaru, Chen & Saad
2017 for the stochastic estimator). :func:`hutchinson_trace` averages
``vᵀ A v`` over Rademacher vectors ``v`` (Hutchinson 1990). What the nodes say
about signs and shares is :mod:`tb_gradplugin.spectrum`'s job. Imports no
TensorFlow.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import numpy as np

__all__ = ["Quadrature", "hutchinson_trace", "lanczos", "rademacher"]

_REORTH_BUDGET_BYTES = 512 * 2**20
"""Memory for the stored Lanczos basis (float64) when reorthogonalising; beyond
it the basis is not kept and no reorthogonalisation is done."""


def rademacher(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Returns ±1 entries as float64.

    Args:
        rng: The generator.
        shape: The shape, e.g. ``(probes, n)``.

    Returns:
        float64 array of ``shape`` with independent ±1 entries.
    """
    return rng.integers(0, 2, size=shape, dtype=np.int8).astype(np.float64) * 2 - 1


@dataclasses.dataclass(frozen=True)
class Quadrature:
    """Gauss quadrature of the spectral measures of some probe vectors.

    Attributes:
        nodes: Per probe, the Ritz values (Gauss nodes), ascending.
        weights: Per probe, the Gauss weights (squared first components of the
            tridiagonal's eigenvectors), summing to 1.
        rayleigh: ``q₁ᵀ A q₁`` per probe (``q₁`` the normalised start vector),
            for Hutchinson's trace.
        applied: Operator rows applied.
    """

    nodes: list[np.ndarray]
    weights: list[np.ndarray]
    rayleigh: np.ndarray
    applied: int

    def finite(self) -> bool:
        """Whether every node is finite."""
        return all(np.all(np.isfinite(t)) for t in self.nodes)


def lanczos(
    matvec: Callable[[np.ndarray], np.ndarray],
    start: np.ndarray,
    steps: int,
    reorthogonalize: bool = False,
) -> Quadrature:
    """Runs Lanczos from several start vectors at once and returns its quadrature.

    Without reorthogonalisation finite-precision Lanczos is exact Lanczos on a
    nearby matrix, so the Gauss quadrature stays accurate (Greenbaum 1989).

    Args:
        matvec: Maps a ``[b, n]`` batch of vectors to the symmetric operator
            applied to each row.
        start: ``[b, n]`` start vectors (Rademacher for SLQ).
        steps: Lanczos steps per probe (capped at ``n``).
        reorthogonalize: Whether to keep the basis and orthogonalise each new
            vector against it (memory ``b · steps · n`` float64, skipped beyond
            512 MiB). Defaults to ``False``.

    Returns:
        The :class:`Quadrature` of each probe.
    """
    b, n = start.shape
    m = min(steps, n)
    reorth = reorthogonalize and b * m * n * 8 <= _REORTH_BUDGET_BYTES
    basis = np.zeros((b, m, n)) if reorth else None
    q = start / np.linalg.norm(start, axis=1, keepdims=True)
    q_prev = np.zeros_like(q)
    beta_prev = np.zeros(b)
    alphas = np.zeros((b, m))
    betas = np.zeros((b, m))
    length = np.full(b, m)
    active = np.ones(b, dtype=bool)
    applied = 0
    for k in range(m):
        if basis is not None:
            basis[:, k] = q
        w = matvec(q)
        applied += int(np.count_nonzero(active))
        alpha = np.einsum("bn,bn->b", w, q)
        w = w - alpha[:, None] * q - beta_prev[:, None] * q_prev
        if basis is not None:
            # Two passes of classical Gram-Schmidt ("twice is enough").
            for _ in range(2):
                kept = basis[:, : k + 1]
                c = np.matmul(kept, w[:, :, None])
                w = w - np.matmul(kept.transpose(0, 2, 1), c)[:, :, 0]
        beta = np.linalg.norm(w, axis=1)
        alphas[:, k] = np.where(active, alpha, 0.0)
        # An invariant subspace (beta ~ 0) makes the quadrature exact: stop
        # that probe there.
        scale = np.maximum(np.abs(alphas[:, : k + 1]).max(axis=1), 1e-300)
        finished = active & (beta <= 1e-10 * scale)
        length[finished] = k + 1
        active &= ~finished
        betas[:, k] = np.where(active, beta, 0.0)
        if not active.any():
            break
        q_prev = np.where(active[:, None], q, 0.0)
        q = np.where(active[:, None], w / np.where(beta > 0, beta, 1.0)[:, None], 0.0)
        beta_prev = np.where(active, beta, 0.0)

    nodes, weights = _gauss_quadrature(alphas, betas, length)
    return Quadrature(nodes, weights, alphas[:, 0].copy(), applied)


def hutchinson_trace(samples: np.ndarray) -> tuple[float, float]:
    """Hutchinson's trace estimate and its standard error.

    For Rademacher ``v``, ``E[vᵀ A v] = tr(A)`` (Hutchinson 1990); the estimate
    is the mean of the samples and its standard error ``s / √m``.

    Args:
        samples: ``vᵀ A v`` for ``m`` independent Rademacher vectors, ``[m]``.

    Returns:
        ``(trace, stderr)``: NaN trace for no sample, NaN stderr for fewer than 2.
    """
    samples = np.asarray(samples, dtype=np.float64).reshape(-1)
    trace = float(samples.mean()) if samples.size else math.nan
    if samples.size < 2:
        return trace, math.nan
    return trace, float(samples.std(ddof=1) / math.sqrt(samples.size))


def _gauss_quadrature(
    alphas: np.ndarray, betas: np.ndarray, length: np.ndarray
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Gauss nodes and weights of each probe's Lanczos tridiagonal (Golub-Welsch).

    The nodes are the tridiagonal's eigenvalues, the weights the squared first
    components of its eigenvectors (Golub & Welsch 1969); a non-finite
    tridiagonal gives NaN nodes and weights.
    """
    nodes, weights = [], []
    for alpha, beta, size in zip(alphas, betas, length.tolist(), strict=True):
        t = np.diag(alpha[:size])
        if size > 1:
            off = beta[: size - 1]
            t += np.diag(off, 1) + np.diag(off, -1)
        if not np.all(np.isfinite(t)):
            nodes.append(np.full(size, math.nan))
            weights.append(np.full(size, math.nan))
            continue
        theta, u = np.linalg.eigh(t)
        nodes.append(theta)
        weights.append(u[0] ** 2)
    return nodes, weights

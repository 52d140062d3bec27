"""Eigenvalue shares, from exact eigenvalues or stochastic Lanczos quadrature (numpy).

Seed 003 asks whether a point where the gradient is almost zero is a minimum or
a saddle; the answer is in the signs of the Hessian's eigenvalues. This module
turns a spectrum (exact eigenvalues, or Lanczos quadrature nodes and weights)
into the figures the callback logs. It never imports TensorFlow, so it is
tested on its own and can be used by the plugin side.

The quadrature itself (Lanczos on Rademacher probes) is
:mod:`tb_gradplugin.lanczos`.

Definitions (for a block of ``n`` eigenvalues ``λ`` with ``M = max|λ|``):

* Exact path. The eigenvalues are known to the precision of the stored
  Hessian, so zero ends at the machine tolerance ``τ = n · ε · M``, with ``ε``
  the float32 machine epsilon (the Hessian is computed and stored in float32):
  the rank tolerance of ``numpy.linalg.matrix_rank`` (Press et al., Numerical
  Recipes, 2nd ed., §2.6). ``min_ratio`` is the share of eigenvalues above
  ``+τ``, ``negative_ratio`` below ``-τ``, ``zero_ratio`` within ``[-τ, τ]``.
* At a stated resolution ``r`` (relative, default 1e-3), ``near_zero_ratio``
  is the share with ``|λ| <= r · M`` and ``band_min_ratio`` the share of
  positive eigenvalues among those outside that band: the answer to "minimum
  or saddle?" that a flat bulk near zero does not dilute.
  ``band_negative_ratio`` is the share of all eigenvalues below ``-r · M``.
* Lanczos path. Stochastic Lanczos quadrature (Golub & Meurant 2010; Ubaru,
  Chen & Saad 2017) gives per random probe the Gauss nodes ``θ`` and weights
  ``w`` of the probe's spectral measure. The spectral density is their
  Gaussian broadening (Ghorbani, Krishnan & Xiao 2019; PyHessian's ESD, Yao
  et al. 2020) with width ``σ = (θ_max - θ_min) / steps``, the mean spacing of
  the nodes (:mod:`tb_gradplugin.spectral_density`). ``min_ratio`` is the
  density's mass above 0. Its range
  ``[min_ratio_low, min_ratio_high]`` runs from the Chebyshev-Markov-Stieltjes
  lower bound of the mass above ``+δ`` to the upper bound of the mass above
  ``-δ``, ``δ = max(σ, τ)`` (Szegő 1939, §3.41: each bound is the quadrature's
  sum give or take the weight of the node beside ``±δ``), averaged over the
  probes and widened by two standard errors of the probe average, so it holds
  the exact path's figure too. Where the bulk sits at 0 the range is as wide as
  its mass: the value says the sign cannot be told instead of a confident
  figure.
  ``zero_ratio`` is NaN there (machine zero is not resolved; ``zero_threshold``
  holds ``σ``), and the band of the near-zero share is at least ``2 / steps``
  (``σ <= 2 M / steps``).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from tb_gradplugin import spectral_density
from tb_gradplugin.lanczos import Quadrature

__all__ = [
    "DEFAULT_RESOLUTION",
    "FLOAT32_EPS",
    "Spectrum",
    "exact_spectrum",
    "lanczos_band",
    "slq_spectrum",
    "symmetric_eigenvalues",
]

FLOAT32_EPS = float(np.finfo(np.float32).eps)
"""Machine epsilon of float32 (2⁻²³), the dtype of the computed Hessian."""

DEFAULT_RESOLUTION = 1e-3
"""Relative half-width of the near-zero band. A network's spectrum has a
continuous bulk over decades below its outliers (Sagun et al. 2017): the
1,090-parameter ReLU regressor of seed 003 has 94-99 % of its eigenvalues
within 1e-3 · max|λ| (measured here), so the band's share is reported beside
the sign ratio among the eigenvalues outside it."""


@dataclasses.dataclass(frozen=True)
class Spectrum:
    """Sign shares and scale of one Hessian block's spectrum.

    Attributes:
        min_ratio: Minimal ratio: share of eigenvalues above ``zero_threshold``
            (exact) or density mass above 0 (Lanczos).
        min_ratio_low: Lower end of the range of ``min_ratio``: share surely
            positive (exact: above ``+τ``; Lanczos: CMS bracket minus two
            standard errors).
        min_ratio_high: Upper end: share not surely negative.
        zero_ratio: Share within ``[-τ, τ]`` (exact); NaN on the Lanczos path.
        negative_ratio: Share below ``-τ`` (exact) or density mass below 0.
        zero_threshold: Absolute width within which a sign is not told:
            ``τ = n · ε · max|λ|`` (exact) or the broadening ``σ`` (Lanczos).
        near_zero_ratio: Share with ``|λ| <= resolution · max|λ|``.
        band_min_ratio: Share of positive eigenvalues among those outside the
            band (NaN when none is outside).
        band_negative_ratio: Share of all eigenvalues below the band,
            ``λ < -resolution · max|λ|``: negative curvature that is resolved
            on either path (what a saddle test should read).
        resolution: Relative half-width of the band used.
        top: Largest eigenvalue (largest node on the Lanczos path).
        tolerance: Bound on the error of ``min_ratio``: ``0`` when exact,
            ``max(high - min_ratio, min_ratio - low)`` on the Lanczos path.
        method: ``"exact"`` or ``"lanczos"``.
    """

    min_ratio: float
    min_ratio_low: float
    min_ratio_high: float
    zero_ratio: float
    negative_ratio: float
    zero_threshold: float
    near_zero_ratio: float
    band_min_ratio: float
    band_negative_ratio: float
    resolution: float
    top: float
    tolerance: float
    method: str

    @classmethod
    def nan(cls, method: str, resolution: float) -> Spectrum:
        """Returns the spectrum of a block whose Hessian is not finite."""
        values = {f.name: math.nan for f in dataclasses.fields(cls)}
        values.update(resolution=resolution, method=method)
        return cls(**values)


def symmetric_eigenvalues(h: np.ndarray) -> np.ndarray:
    """Returns the ascending eigenvalues of a (nearly) symmetric Hessian block.

    Args:
        h: A square ``[n, n]`` array; autodiff rows agree with columns only to
            round-off.

    Returns:
        float64 ``[n]``, ascending; all NaN when ``h`` has a non-finite entry.
    """
    h = np.asarray(h, dtype=np.float64)
    if not np.all(np.isfinite(h)):
        return np.full(h.shape[0], math.nan)
    # eigvalsh reads one triangle: symmetrise first to use both.
    return np.linalg.eigvalsh(0.5 * (h + h.T))


def exact_spectrum(
    eigenvalues: np.ndarray,
    eps: float = FLOAT32_EPS,
    resolution: float = DEFAULT_RESOLUTION,
) -> Spectrum:
    """Counts the signs of exact eigenvalues (see the module docstring).

    Args:
        eigenvalues: The block's eigenvalues, any order, ``[n]``.
        eps: Machine epsilon of the dtype the Hessian was computed in.
            Defaults to :data:`FLOAT32_EPS`.
        resolution: Relative half-width of the near-zero band. Defaults to
            :data:`DEFAULT_RESOLUTION` (1e-3).

    Returns:
        The :class:`Spectrum`, ``method="exact"``, ``tolerance=0``; all NaN
        for an empty or non-finite input.
    """
    eig = np.asarray(eigenvalues, dtype=np.float64).reshape(-1)
    if eig.size == 0 or not np.all(np.isfinite(eig)):
        return Spectrum.nan("exact", resolution)
    n = eig.size
    scale = float(np.max(np.abs(eig)))
    tau = n * eps * scale
    positive = float(np.mean(eig > tau))
    negative = float(np.mean(eig < -tau))
    band = resolution * scale
    outside = eig[np.abs(eig) > band]
    return Spectrum(
        min_ratio=positive,
        min_ratio_low=positive,
        min_ratio_high=1.0 - negative,
        zero_ratio=1.0 - positive - negative,
        negative_ratio=negative,
        zero_threshold=tau,
        near_zero_ratio=float(np.mean(np.abs(eig) <= band)),
        band_min_ratio=float(np.mean(outside > 0)) if outside.size else math.nan,
        band_negative_ratio=float(np.mean(eig < -band)),
        resolution=float(resolution),
        top=float(np.max(eig)),
        tolerance=0.0,
        method="exact",
    )


def _normal_cdf(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.vectorize(math.erf)(np.asarray(z) / math.sqrt(2.0)))


def _cms_bracket(theta: np.ndarray, w: np.ndarray, t: float) -> tuple[float, float]:
    """Returns the Chebyshev-Markov-Stieltjes bracket of the mass above ``t``.

    With ``θ_j <= t < θ_{j+1}`` the distribution function satisfies
    ``Σ_{k<j} w_k <= F(t) <= Σ_{k<=j+1} w_k`` (Szegő, Orthogonal Polynomials,
    §3.41), so the mass above ``t`` lies within the weights of the two nodes
    beside ``t`` of the quadrature's ``Σ_{θ>t} w``.
    """
    above = theta > t
    mass = float(w[above].sum())
    below_idx = np.nonzero(~above)[0]
    above_idx = np.nonzero(above)[0]
    w_below = float(w[below_idx[-1]]) if below_idx.size else 0.0
    w_above = float(w[above_idx[0]]) if above_idx.size else 0.0
    return mass - w_above, mass + w_below


def lanczos_band(resolution: float, steps: int) -> float:
    """Returns the relative band half-width the Lanczos path can resolve.

    Args:
        resolution: The requested relative resolution.
        steps: Lanczos steps per probe.

    Returns:
        ``max(resolution, 2 / steps)``: the broadening σ is at most
        ``2 · max|λ| / steps``, so no finer band is meaningful.
    """
    return max(resolution, 2.0 / max(1, steps))


def slq_spectrum(
    quadrature: Quadrature,
    n: int,
    steps: int,
    resolution: float = DEFAULT_RESOLUTION,
) -> Spectrum:
    """Reads the sign shares from a stochastic Lanczos quadrature.

    See the module docstring for the definitions; the uncertainty combines
    the quadrature's CMS brackets at ``±δ`` with two standard errors of the
    probe average (the larger of the probes' spread and the Rademacher bound
    ``Var <= 2 · share / n``, Avron & Toledo 2011).

    Args:
        quadrature: The quadrature of ``B`` Rademacher probes.
        n: Dimension of the operator.
        steps: Lanczos steps per probe (sets the broadening).
        resolution: Requested relative half-width of the near-zero band.
            Defaults to :data:`DEFAULT_RESOLUTION`; raised to
            :func:`lanczos_band`.

    Returns:
        The :class:`Spectrum`, ``method="lanczos"``.
    """
    band_rel = lanczos_band(resolution, steps)
    if not quadrature.finite():
        return Spectrum.nan("lanczos", band_rel)
    nodes, weights = quadrature.nodes, quadrature.weights
    b = len(nodes)
    every = np.concatenate(nodes)
    scale = float(np.max(np.abs(every)))
    sigma = spectral_density.broadening(float(every.min()), float(every.max()), steps)
    pairs = list(zip(nodes, weights, strict=True))
    point = np.array([float(w @ _normal_cdf(t / sigma)) for t, w in pairs])
    # The range must hold the exact path's figure (share above τ) as well as
    # the mass above 0: bracket the mass above +δ and above -δ, δ >= τ, σ.
    delta = max(sigma, n * FLOAT32_EPS * scale)
    lows = np.array([_cms_bracket(t, w, delta)[0] for t, w in pairs])
    highs = np.array([_cms_bracket(t, w, -delta)[1] for t, w in pairs])
    band = band_rel * scale
    near = np.array([float(w[np.abs(t) <= band].sum()) for t, w in pairs])
    pos_out = np.array([float(w[t > band].sum()) for t, w in pairs])
    neg_out = np.array([float(w[t < -band].sum()) for t, w in pairs])
    p = float(point.mean())
    share = min(p, 1.0 - p)
    var_theory = 2.0 * max(share, 0.0) / n
    var_probes = float(point.var(ddof=1)) if b > 1 else 0.0
    sampling = 2.0 * math.sqrt(max(var_theory, var_probes) / b)
    low = max(0.0, float(lows.mean()) - sampling)
    high = min(1.0, float(highs.mean()) + sampling)
    p = min(max(p, low), high)
    outside = 1.0 - float(near.mean())
    spectrum = Spectrum(
        min_ratio=p,
        min_ratio_low=low,
        min_ratio_high=high,
        zero_ratio=math.nan,
        negative_ratio=1.0 - p,
        zero_threshold=sigma,
        near_zero_ratio=float(near.mean()),
        band_min_ratio=float(pos_out.mean()) / outside if outside > 0 else math.nan,
        band_negative_ratio=float(neg_out.mean()),
        resolution=band_rel,
        top=float(every.max()),
        tolerance=max(high - p, p - low),
        method="lanczos",
    )
    return spectrum

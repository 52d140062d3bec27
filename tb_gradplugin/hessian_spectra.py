"""The spectra of a model's Hessian: the whole model and each variable's block.

Two paths, chosen by size (:func:`tb_gradplugin.curvature.compute_curvature`
picks): a block of at most ``max_exact_params`` parameters is built by the
engine (:mod:`tb_gradplugin.hessian_engine`) and solved with
``numpy.linalg.eigvalsh``; a larger one is read by stochastic Lanczos quadrature
over Hessian-vector products (:mod:`tb_gradplugin.lanczos`), its trace by
Hutchinson's estimator on the same probes. The figures of a spectrum come from
:mod:`tb_gradplugin.spectrum`, its density from
:mod:`tb_gradplugin.spectral_density`. Only the engine touches TensorFlow.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from tb_gradplugin import lanczos, spectral_density, spectrum
from tb_gradplugin.hessian_engine import Engine
from tb_gradplugin.spectrum import Spectrum

__all__ = [
    "Settings",
    "exact_block",
    "exact_groups",
    "exact_whole",
    "lanczos_whole",
    "layer_spectra",
]


def exact_groups(sizes: Sequence[int], indices: Sequence[int], limit: int) -> list:
    """Packs variables into groups of at most ``limit`` parameters, in order.

    One Jacobian serves a group, so small variables share one engine call.

    Args:
        sizes: Parameters per variable.
        indices: The variables to pack, in order.
        limit: Most parameters per group (a larger variable is a group alone).

    Returns:
        Tuples of variable indices.
    """
    groups, current, total = [], [], 0
    for i in indices:
        if current and total + sizes[i] > limit:
            groups.append(tuple(current))
            current, total = [], 0
        current.append(i)
        total += sizes[i]
    if current:
        groups.append(tuple(current))
    return groups


@dataclasses.dataclass(frozen=True)
class Settings:
    """The checked keyword arguments of ``curvature.compute_curvature``.

    Attributes:
        max_exact_params: Largest block solved exactly.
        lanczos_steps: Lanczos steps per probe.
        lanczos_probes: Rademacher start vectors of the quadrature.
        hutchinson_samples: Rademacher probes of the trace (Lanczos path).
        resolution: Relative half-width of the near-zero band.
        density_points: Grid points of the spectral density.
        reorthogonalize: Whether Lanczos keeps and reorthogonalises its basis.
    """

    max_exact_params: int
    lanczos_steps: int
    lanczos_probes: int
    hutchinson_samples: int
    resolution: float
    density_points: int
    reorthogonalize: bool


def exact_block(h: np.ndarray, settings: Settings) -> Spectrum:
    """The exact spectrum of one Hessian block.

    Args:
        h: The block, ``[n, n]``.
        settings: The settings (``resolution`` is read).

    Returns:
        :func:`tb_gradplugin.spectrum.exact_spectrum` of its eigenvalues.
    """
    eig = spectrum.symmetric_eigenvalues(h)
    return spectrum.exact_spectrum(eig, resolution=settings.resolution)


def exact_whole(h: np.ndarray, settings: Settings) -> dict[str, Any]:
    """The whole model's curvature fields from its full Hessian.

    Args:
        h: The Hessian, ``[n_params, n_params]``.
        settings: The settings.

    Returns:
        ``{"spectrum", "trace", "trace_stderr" (0), "broadening",
        "density_grid", "density", "histogram", "eigenvalues"}``, the fields
        of ``curvature.CurvatureResult`` of the same names.
    """
    eig = spectrum.symmetric_eigenvalues(h)
    weights = np.full(eig.size, 1.0 / eig.size)
    sigma, grid, dens = spectral_density.density_of(
        [eig], [weights], settings.lanczos_steps, settings.density_points
    )
    return {
        "spectrum": spectrum.exact_spectrum(eig, resolution=settings.resolution),
        "trace": float(np.sum(eig)),
        "trace_stderr": 0.0,
        "broadening": sigma,
        "density_grid": grid,
        "density": dens,
        "histogram": spectral_density.histogram(eig, grid)
        if np.isfinite(sigma)
        else None,
        "eigenvalues": eig,
    }


def lanczos_whole(
    engine: Engine,
    x: Any,
    y: Any,
    sw: Any,
    rng: np.random.Generator,
    settings: Settings,
) -> tuple[dict[str, Any], int]:
    """The whole model's curvature fields by SLQ, and the HVPs spent.

    A non-finite loss or gradient makes every figure NaN and spends no HVP.

    Args:
        engine: The model's engine.
        x: The probe inputs (tensors).
        y: The probe targets.
        sw: The sample weights, or ``None``.
        rng: The generator of the Rademacher probes.
        settings: The settings.

    Returns:
        ``(fields, hvps)``: ``{"probe_loss", "grad_norm", "spectrum", "trace",
        "trace_stderr", "broadening", "density_grid", "density"}`` and the
        Hessian-vector products spent.
    """
    n = engine.n_params
    probe_loss, grad_norm = engine.loss_grad(x, y, sw)
    whole: dict[str, Any] = {"probe_loss": probe_loss, "grad_norm": grad_norm}
    if not (math.isfinite(probe_loss) and math.isfinite(grad_norm)):
        band = spectrum.lanczos_band(settings.resolution, settings.lanczos_steps)
        nan = np.full(settings.density_points, math.nan)
        whole.update(
            spectrum=Spectrum.nan("lanczos", band),
            trace=math.nan,
            trace_stderr=math.nan,
            broadening=math.nan,
            density_grid=nan,
            density=nan.copy(),
        )
        return whole, 0
    matvec = engine.matvec(tuple(range(len(engine.variables))), x, y, sw)
    probes = settings.lanczos_probes
    start = lanczos.rademacher(rng, (probes, n))
    quad = lanczos.lanczos(
        matvec, start, settings.lanczos_steps, settings.reorthogonalize
    )
    hvps = quad.applied
    sigma, grid, dens = spectral_density.density_of(
        quad.nodes, quad.weights, settings.lanczos_steps, settings.density_points
    )
    # Hutchinson: vᵀHv for Rademacher v; q1 = v/√n gives vᵀHv = n·q1ᵀHq1.
    samples = list(n * quad.rayleigh[: settings.hutchinson_samples])
    extra = settings.hutchinson_samples - len(samples)
    while extra > 0:
        # Batches of the Lanczos batch's size, so the HVP is not retraced.
        take = min(extra, probes)
        v = np.zeros((probes, n))
        v[:take] = lanczos.rademacher(rng, (take, n))
        hv = matvec(v)
        hvps += take
        samples.extend(np.einsum("bn,bn->b", hv[:take], v[:take]))
        extra -= take
    trace, trace_stderr = lanczos.hutchinson_trace(np.asarray(samples))
    whole.update(
        spectrum=spectrum.slq_spectrum(
            quad, n, settings.lanczos_steps, settings.resolution
        ),
        trace=trace,
        trace_stderr=trace_stderr,
        broadening=sigma,
        density_grid=grid,
        density=dens,
    )
    return whole, hvps


def layer_spectra(
    engine: Engine,
    x: Any,
    y: Any,
    sw: Any,
    batch: int,
    rng: np.random.Generator,
    settings: Settings,
) -> tuple[list[Spectrum | None], int]:
    """Per-variable spectra of a model too large to solve whole.

    Variables of at most ``max_exact_params`` parameters are packed into groups
    (:func:`exact_groups`) whose Hessians are solved exactly; larger ones get
    SLQ on their own block.

    Args:
        engine: The model's engine.
        x: The probe inputs (tensors).
        y: The probe targets.
        sw: The sample weights, or ``None``.
        batch: Examples in the probe batch (sizes the Jacobian's chunks).
        rng: The generator of the Rademacher probes.
        settings: The settings.

    Returns:
        ``(spectra, hvps)``: one spectrum per variable (``None`` for the one
        block of a single-variable model, which is the whole model) and the
        Hessian-vector products spent, Jacobian rows included.
    """
    sizes, limit = engine.sizes, settings.max_exact_params
    layer: list[Spectrum | None] = [None] * len(sizes)
    hvps = 0
    small = [i for i in range(len(sizes)) if sizes[i] <= limit]
    for group in exact_groups(sizes, small, limit):
        _, _, h = engine.hessian(group, x, y, sw, batch)
        h = h.numpy()
        hvps += h.shape[0]
        start = 0
        for i in group:
            stop = start + sizes[i]
            layer[i] = exact_block(h[start:stop, start:stop], settings)
            start = stop
    if len(sizes) == 1:
        return layer, hvps
    for i in range(len(sizes)):
        if layer[i] is not None:
            continue
        start_vectors = lanczos.rademacher(rng, (settings.lanczos_probes, sizes[i]))
        quad = lanczos.lanczos(
            engine.matvec((i,), x, y, sw),
            start_vectors,
            settings.lanczos_steps,
            settings.reorthogonalize,
        )
        layer[i] = spectrum.slq_spectrum(
            quad, sizes[i], settings.lanczos_steps, settings.resolution
        )
        hvps += quad.applied
    return layer, hvps

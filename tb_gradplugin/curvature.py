"""Hessian curvature of a Keras model's training loss (TensorFlow engine).

Seed 003 asks what happens when the gradient is almost zero: is the point a
minimum or a saddle? This module computes the spectrum of the Hessian of the
model's own compiled loss on a probe batch, for the whole model and for each
trainable variable's diagonal block (seed 003's block-diagonal view), and hands
it to :mod:`tb_gradplugin.spectrum` for the figures: the minimal ratio with its
range, the negative and near-zero shares, the ratio outside the near-zero band,
the top eigenvalue (sharpness), the trace and a spectral density.

A block of at most ``max_exact_params`` parameters is solved exactly: its
Hessian is the batched Jacobian of the gradient
(:mod:`tb_gradplugin.hessian_engine`), then ``numpy.linalg.eigvalsh``; zero ends at the
machine tolerance ``n · ε · max|λ|`` (float32 ``ε``). Larger blocks use
stochastic Lanczos quadrature over Hessian-vector products (Ubaru, Chen & Saad
2017; PyHessian, Yao et al. 2020), by default without reorthogonalisation
(measured here: the same accuracy as full reorthogonalisation on a
2,196-parameter MLP, at a quarter of the time on a 16,750-parameter one, where
storing and sweeping the basis dominated); its ratio comes with a range and a
tolerance (:func:`tb_gradplugin.spectrum.slq_spectrum`).

The computation reads the weights and never writes them; the metric variables
that a multi-output compiled loss updates are restored bit for bit; random
numbers come from a private ``numpy`` generator, so Keras, TensorFlow and numpy
global random state are untouched.
:func:`write_summary` logs a result as ``hessian/*``, ``hessian_layer/*`` and
``hessian_spectrum/density``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import tensorflow as tf

from tb_gradplugin import hessian_engine, metadata, spectral_density, spectrum
from tb_gradplugin.spectrum import Spectrum

__all__ = ["CurvatureResult", "compute_curvature", "write_summary"]

DEFAULT_MAX_EXACT_PARAMS = 2048
"""Largest block solved exactly. ``eigvalsh`` of 2,048² takes ~0.3 s on 2 cores
(measured here; 3,000² takes ~1 s and grows as n³), and the Jacobian needs
n Hessian-vector products."""

DEFAULT_LANCZOS_STEPS = 128
"""Lanczos steps per probe (PyHessian's density uses 100). On the spectra of a
3,224-parameter MLP (measured here) the quadrature error of the ratios at a
1e-2 band was 0.034 at 80 steps, 0.019 at 128 and 0.003 at 200."""

DEFAULT_LANCZOS_PROBES = 4
"""Independent Rademacher start vectors for the quadrature."""

DEFAULT_HUTCHINSON_SAMPLES = 16
"""Rademacher probes for the trace; the Lanczos start vectors are reused."""

_SPECTRUM_FIELDS = frozenset(f.name for f in dataclasses.fields(Spectrum))
"""Fields of the whole model's :class:`Spectrum` read as the result's own."""


@dataclasses.dataclass(frozen=True)
class CurvatureResult:
    """Curvature of the loss on a probe batch, for the model and per variable.

    The ratios are defined in :mod:`tb_gradplugin.spectrum`: on the exact path
    ``min_ratio`` is the share of eigenvalues above ``τ = n · ε · max|λ|``
    (float32 ``ε``), ``negative_ratio`` below ``-τ``, ``zero_ratio`` within
    ``[-τ, τ]`` (they sum to 1); on the Lanczos path ``min_ratio`` is the
    spectral density's mass above 0 with the range
    ``[min_ratio_low, min_ratio_high]``, and ``zero_ratio`` is NaN.

    The whole model's :class:`~tb_gradplugin.spectrum.Spectrum` is kept in
    ``spectrum``; its fields read as the result's own (``result.min_ratio`` is
    ``result.spectrum.min_ratio``), as listed here.

    Attributes:
        spectrum: The whole model's spectrum figures.
        min_ratio: Minimal ratio: share of positive eigenvalues of the whole
            Hessian.
        min_ratio_low: Share surely positive (lower end of the range).
        min_ratio_high: Share not surely negative (upper end of the range).
        zero_ratio: Share within the machine tolerance of zero (exact only).
        negative_ratio: Share of negative eigenvalues.
        zero_threshold: ``τ`` (exact) or the density's broadening ``σ``
            (Lanczos), in eigenvalue units.
        near_zero_ratio: Share with ``|λ| <= resolution · max|λ|``.
        band_min_ratio: Share of positive eigenvalues among those outside that
            band.
        band_negative_ratio: Share of all eigenvalues below the band: the
            negative curvature resolved on either path.
        resolution: Relative half-width of the band (raised to ``2 / steps``
            on the Lanczos path).
        top_eigenvalue: Largest eigenvalue (sharpness).
        trace: Hessian trace: exact on the exact path, Hutchinson's estimate
            on the Lanczos path.
        trace_stderr: Standard error of the trace (0 when exact).
        probe_loss: Loss on the probe batch.
        grad_norm: L2 norm of the gradient on the probe batch.
        method: ``"exact"`` or ``"lanczos"`` for the whole model.
        tolerance: Bound on the absolute error of ``min_ratio`` (0 when
            exact): the distance to the farther end of its range.
        n_params: Number of trainable parameters.
        variables: Paths of the trainable variables, in order.
        layer_min_ratio: Per variable, the minimal ratio of its diagonal
            Hessian block.
        layer_zero_ratio: Per variable, the share within machine tolerance of
            zero (NaN for a Lanczos block).
        layer_top_eigenvalue: Per variable, the block's largest eigenvalue.
        layer_method: Per variable, ``"exact"`` or ``"lanczos"``.
        layer_tolerance: Per variable, bound on the error of its ratio.
        hvp_count: Hessian-vector products spent (Jacobian rows included).
        broadening: Width ``σ`` of the Gaussians of the density:
            ``(λ_max - λ_min) / lanczos_steps`` on both paths.
        density_grid: ``[points]`` eigenvalues where the density is given.
        density: ``[points]`` spectral density (1 / eigenvalue units; it
            integrates to 1 over the grid).
        histogram: ``[points]`` share of the exact eigenvalues in bins centred
            on the grid; ``None`` on the Lanczos path.
        eigenvalues: All eigenvalues of the whole Hessian, ascending, on the
            exact path; ``None`` on the Lanczos path.

    Example:
        >>> result = compute_curvature(model, x_probe, y_probe)  # doctest: +SKIP
        >>> if result.grad_norm < 1e-3 and result.negative_ratio > 0.1:
        ...     print(f"saddle: {result.negative_ratio:.0%} negative curvature")
    """

    spectrum: Spectrum
    trace: float
    trace_stderr: float
    probe_loss: float
    grad_norm: float
    broadening: float
    density_grid: np.ndarray
    density: np.ndarray
    n_params: int
    variables: tuple[str, ...]
    layer_min_ratio: np.ndarray
    layer_zero_ratio: np.ndarray
    layer_top_eigenvalue: np.ndarray
    layer_method: tuple[str, ...]
    layer_tolerance: np.ndarray
    hvp_count: int
    histogram: np.ndarray | None = None
    eigenvalues: np.ndarray | None = None

    def __getattr__(self, name: str) -> Any:
        # The whole model's shares live in ``spectrum``; they read as fields
        # of the result (``result.min_ratio``) so callers need not know.
        if name in _SPECTRUM_FIELDS:
            return getattr(object.__getattribute__(self, "spectrum"), name)
        raise AttributeError(f"{type(self).__name__!r} has no attribute {name!r}")

    @property
    def top_eigenvalue(self) -> float:
        """Largest eigenvalue of the whole Hessian (sharpness)."""
        return self.spectrum.top


def _to_tensors(data: Any) -> Any:
    if data is None:
        return None
    return tf.nest.map_structure(tf.convert_to_tensor, data)


def _exact_groups(sizes: Sequence[int], indices: Sequence[int], limit: int) -> list:
    """Packs variables into groups of at most ``limit`` parameters, in order."""
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
class _Settings:
    """The keyword arguments of :func:`compute_curvature`, checked."""

    max_exact_params: int
    lanczos_steps: int
    lanczos_probes: int
    hutchinson_samples: int
    resolution: float
    density_points: int
    reorthogonalize: bool


def compute_curvature(
    model: Any,
    x: Any,
    y: Any,
    sample_weight: Any = None,
    *,
    max_exact_params: int = DEFAULT_MAX_EXACT_PARAMS,
    lanczos_steps: int = DEFAULT_LANCZOS_STEPS,
    lanczos_probes: int = DEFAULT_LANCZOS_PROBES,
    hutchinson_samples: int = DEFAULT_HUTCHINSON_SAMPLES,
    resolution: float = spectrum.DEFAULT_RESOLUTION,
    density_points: int = spectral_density.DEFAULT_DENSITY_POINTS,
    seed: int = 0,
    reorthogonalize: bool = False,
) -> CurvatureResult:
    """Computes the Hessian spectrum figures of a compiled Keras model's loss.

    The loss is the model's own compiled loss (``model.compute_loss``, so
    regularisation and ``add_loss`` terms are included) of
    ``model(x, training=False)``: dropout off, batch-norm statistics frozen, so
    the result is deterministic and nothing in the model changes.

    Tolerances: on the exact path an eigenvalue counts as zero when
    ``|λ| <= n · ε · max|λ|`` of its block, ``ε = 2⁻²³`` (float32, the dtype
    the Hessian is computed in; ``numpy.linalg.matrix_rank``'s rule); on the
    Lanczos path the ratio is the density's mass above 0, with the range and
    ``tolerance`` of :func:`tb_gradplugin.spectrum.slq_spectrum`.

    Args:
        model: A compiled Keras 3 model (TensorFlow backend) with trainable
            variables.
        x: The probe batch's inputs, as ``model.fit`` takes them.
        y: The probe batch's targets.
        sample_weight: Optional per-example weights. Defaults to ``None``.
        max_exact_params: Largest block (the whole model, or one variable)
            whose Hessian is built and solved exactly; larger blocks use
            stochastic Lanczos quadrature. Defaults to
            :data:`DEFAULT_MAX_EXACT_PARAMS` (2,048).
        lanczos_steps: Lanczos steps per probe; also sets the density's
            broadening, ``(λ_max - λ_min) / lanczos_steps``. Defaults to 128.
        lanczos_probes: Random start vectors for the quadrature. Defaults to 4.
        hutchinson_samples: Rademacher probes for the trace on the Lanczos
            path; the Lanczos start vectors count among them. Defaults to 16.
        resolution: Relative half-width of the near-zero band:
            ``near_zero_ratio`` is the share with ``|λ| <= resolution ·
            max|λ|`` and ``band_min_ratio`` the positive share outside it
            (raised to ``2 / lanczos_steps`` on the Lanczos path). Defaults to
            1e-3.
        density_points: Grid points of the spectral density. Defaults to 512.
        seed: Seed of the random probes. Defaults to 0.
        reorthogonalize: Whether Lanczos keeps its basis and fully
            reorthogonalises (PyHessian does; it costs ``O(steps² · n)`` time
            and ``probes · steps · n`` float64 memory, skipped beyond 512 MiB).
            Defaults to ``False``.

    Returns:
        A :class:`CurvatureResult`. Non-finite losses or Hessians give NaN
        figures rather than an error (a NaN is a finding).

    Raises:
        ValueError: When the model is not compiled, has no trainable
            variables, or an argument is out of range.
    """
    if not getattr(model, "compiled", False):
        raise ValueError("compute_curvature needs a compiled model (model.compile)")
    if not model.trainable_variables:
        raise ValueError("compute_curvature: the model has no trainable variables")
    if max_exact_params < 0:
        raise ValueError(f"max_exact_params must be >= 0, got {max_exact_params}")
    if lanczos_steps < 1 or lanczos_probes < 1:
        raise ValueError(
            "lanczos_steps and lanczos_probes must be >= 1, got "
            f"{lanczos_steps} and {lanczos_probes}"
        )
    if hutchinson_samples < 0:
        raise ValueError(f"hutchinson_samples must be >= 0, got {hutchinson_samples}")
    if not 0.0 <= resolution < 1.0:
        raise ValueError(f"resolution must be in [0, 1), got {resolution}")
    if density_points < 2:
        raise ValueError(f"density_points must be >= 2, got {density_points}")
    settings = _Settings(
        max_exact_params,
        lanczos_steps,
        lanczos_probes,
        hutchinson_samples,
        resolution,
        density_points,
        reorthogonalize,
    )
    x, y, sample_weight = _to_tensors(x), _to_tensors(y), _to_tensors(sample_weight)
    metric_vars = list(getattr(model, "metrics_variables", []))
    saved = [v.numpy() for v in metric_vars]
    try:
        return _compute(model, x, y, sample_weight, settings, seed)
    finally:
        # A multi-output compiled loss updates its per-output loss trackers.
        for var, value in zip(metric_vars, saved, strict=True):
            var.assign(value)


def _compute(
    model: Any, x: Any, y: Any, sw: Any, settings: _Settings, seed: int
) -> CurvatureResult:
    """Does the work of :func:`compute_curvature` on tensors."""
    engine = hessian_engine.engine_for(model)
    n_vars = len(engine.variables)
    offsets = engine.offsets
    leading = tf.nest.flatten(x)[0].shape
    batch = int(leading[0]) if leading.rank and leading[0] is not None else 1
    rng = np.random.default_rng(seed)
    layer: list[Spectrum | None] = [None] * n_vars

    if engine.n_params <= settings.max_exact_params:
        loss, norm, h = engine.hessian(tuple(range(n_vars)), x, y, sw, batch)
        h = h.numpy()
        whole = _exact_whole(h, settings)
        whole.update(probe_loss=float(loss), grad_norm=float(norm))
        hvps = engine.n_params
        for i in range(n_vars):
            a, b = offsets[i], offsets[i + 1]
            layer[i] = _exact_block(h[a:b, a:b], settings)
    else:
        whole, hvps = _lanczos_whole(engine, x, y, sw, rng, settings)
        if not math.isfinite(whole["probe_loss"] + whole["grad_norm"]):
            # Every HVP would be NaN too: report the finding, spend nothing.
            layer = [whole["spectrum"]] * n_vars
        else:
            hvps += _layer_spectra(engine, x, y, sw, batch, rng, settings, layer)
            if n_vars == 1 and layer[0] is None:
                layer[0] = whole["spectrum"]  # the one block is the whole model
    return CurvatureResult(
        **whole,
        n_params=engine.n_params,
        variables=tuple(str(getattr(v, "path", v.name)) for v in engine.variables),
        layer_min_ratio=np.array([s.min_ratio for s in layer], dtype=np.float64),
        layer_zero_ratio=np.array([s.zero_ratio for s in layer], dtype=np.float64),
        layer_top_eigenvalue=np.array([s.top for s in layer], dtype=np.float64),
        layer_method=tuple(s.method for s in layer),
        layer_tolerance=np.array([s.tolerance for s in layer], dtype=np.float64),
        hvp_count=hvps,
    )


def _exact_block(h: np.ndarray, settings: _Settings) -> Spectrum:
    """Returns the exact spectrum of one Hessian block."""
    eig = spectrum.symmetric_eigenvalues(h)
    return spectrum.exact_spectrum(eig, resolution=settings.resolution)


def _exact_whole(h: np.ndarray, settings: _Settings) -> dict[str, Any]:
    """Returns the whole model's result fields from its full Hessian."""
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


def _lanczos_whole(
    engine: hessian_engine.Engine,
    x: Any,
    y: Any,
    sw: Any,
    rng: np.random.Generator,
    settings: _Settings,
) -> tuple[dict[str, Any], int]:
    """Returns the whole model's result fields by SLQ, and the HVPs spent."""
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
    everything = tuple(range(len(engine.variables)))

    def matvec(v: np.ndarray) -> np.ndarray:
        out = engine.hvp(everything, x, y, sw, tf.constant(v, tf.float32))
        return out.numpy().astype(np.float64)

    probes = settings.lanczos_probes
    start = spectrum.rademacher(rng, (probes, n))
    quad = spectrum.lanczos(
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
        v[:take] = spectrum.rademacher(rng, (take, n))
        hv = matvec(v)
        hvps += take
        samples.extend(np.einsum("bn,bn->b", hv[:take], v[:take]))
        extra -= take
    samples = np.asarray(samples, dtype=np.float64)
    whole.update(
        spectrum=spectrum.slq_spectrum(
            quad, n, settings.lanczos_steps, settings.resolution
        ),
        trace=float(samples.mean()) if samples.size else math.nan,
        trace_stderr=(
            float(samples.std(ddof=1) / math.sqrt(samples.size))
            if samples.size > 1
            else math.nan
        ),
        broadening=sigma,
        density_grid=grid,
        density=dens,
    )
    return whole, hvps


def _layer_spectra(
    engine: hessian_engine.Engine,
    x: Any,
    y: Any,
    sw: Any,
    batch: int,
    rng: np.random.Generator,
    settings: _Settings,
    layer: list[Spectrum | None],
) -> int:
    """Fills the per-variable spectra of a Lanczos-path model; returns HVPs."""
    sizes, limit = engine.sizes, settings.max_exact_params
    hvps = 0
    small = [i for i in range(len(sizes)) if sizes[i] <= limit]
    for group in _exact_groups(sizes, small, limit):
        _, _, h = engine.hessian(group, x, y, sw, batch)
        h = h.numpy()
        hvps += h.shape[0]
        start = 0
        for i in group:
            stop = start + sizes[i]
            layer[i] = _exact_block(h[start:stop, start:stop], settings)
            start = stop
    if len(sizes) == 1:
        return hvps  # the one block is the whole model, already done
    for i in range(len(sizes)):
        if layer[i] is not None:
            continue

        def matvec(v: np.ndarray, group: tuple[int, ...] = (i,)) -> np.ndarray:
            out = engine.hvp(group, x, y, sw, tf.constant(v, tf.float32))
            return out.numpy().astype(np.float64)

        start_vectors = spectrum.rademacher(rng, (settings.lanczos_probes, sizes[i]))
        quad = spectrum.lanczos(
            matvec, start_vectors, settings.lanczos_steps, settings.reorthogonalize
        )
        layer[i] = spectrum.slq_spectrum(
            quad, sizes[i], settings.lanczos_steps, settings.resolution
        )
        hvps += quad.applied
    return hvps


def write_summary(result: CurvatureResult, step: int, probe_size: int) -> None:
    """Writes a curvature result to the default summary writer.

    Tags: ``hessian/<stat>`` scalars (:data:`metadata.HESSIAN_SCALARS`),
    ``hessian_layer/<stat>`` tensors ``[n_variables]``
    (:data:`metadata.HESSIAN_LAYER_STATS`) and
    :data:`metadata.HESSIAN_SPECTRUM_TAG`, a float32 tensor
    ``[1 + 3 · points]``: the broadening σ, then the grid, the density and the
    exact histogram (NaN on the Lanczos path), one after the other.

    Args:
        result: The result of :func:`compute_curvature`.
        step: The optimizer step the curvature belongs to.
        probe_size: Examples in the probe batch.
    """
    content = {
        "method": result.method,
        "tolerance": float(result.tolerance),
        "resolution": float(result.resolution),
        "eps": spectrum.FLOAT32_EPS,
        "probe_size": int(probe_size),
        "n_params": int(result.n_params),
    }

    def write(tag: str, value: Any, text: str, extra: dict, tensor: bool) -> None:
        meta = metadata.create_summary_metadata(
            text, {**content, **extra}, tensor=tensor
        )
        tf.summary.write(tag, value, step=step, metadata=meta.SerializeToString())

    for stat, text in metadata.HESSIAN_SCALARS.items():
        value = tf.constant(float(getattr(result, stat)), tf.float32)
        write(metadata.hessian_tag(stat), value, text, {}, tensor=False)
    names = {
        "variables": list(result.variables),
        "layer_method": list(result.layer_method),
    }
    for stat, text in metadata.HESSIAN_LAYER_STATS.items():
        value = tf.constant(np.asarray(getattr(result, "layer_" + stat), np.float32))
        write(metadata.hessian_layer_tag(stat), value, text, names, tensor=True)
    points = int(result.density_grid.size)
    hist = result.histogram
    # σ changes from step to step while a tag's content is fixed by its first
    # write, so it leads the row.
    row = np.concatenate(
        [
            [result.broadening],
            result.density_grid,
            result.density,
            hist if hist is not None else np.full(points, math.nan),
        ]
    ).astype(np.float32)
    write(
        metadata.HESSIAN_SPECTRUM_TAG,
        tf.constant(row),
        metadata.HESSIAN_SPECTRUM_TEXT,
        {"points": points},
        tensor=True,
    )

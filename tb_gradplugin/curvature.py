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

The paths are :mod:`tb_gradplugin.hessian_spectra`; the TensorFlow work is
:mod:`tb_gradplugin.hessian_engine`'s: no TensorFlow call is made here.
The computation reads the weights and never writes them; the metric variables
that a multi-output compiled loss updates are restored bit for bit; random
numbers come from a private ``numpy`` generator, so Keras, TensorFlow and numpy
global random state are untouched.
:func:`write_summary` (from :mod:`tb_gradplugin.curvature_summary`, where it
lives) logs a result as ``hessian/*``, ``hessian_layer/*`` and
``hessian_spectrum/density``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from tb_gradplugin import hessian_engine, hessian_spectra, spectral_density, spectrum
from tb_gradplugin.curvature_summary import write_summary
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

    Example, for a compiled ``model`` and a probe batch::

        result = compute_curvature(model, x_probe, y_probe)
        if result.grad_norm < 1e-3 and result.band_negative_ratio > 0.1:
            print(f"saddle: {result.band_negative_ratio:.0%} negative curvature")
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
    settings = hessian_spectra.Settings(
        max_exact_params,
        lanczos_steps,
        lanczos_probes,
        hutchinson_samples,
        resolution,
        density_points,
        reorthogonalize,
    )
    x, y, sample_weight = (
        hessian_engine.to_tensors(x),
        hessian_engine.to_tensors(y),
        hessian_engine.to_tensors(sample_weight),
    )
    metric_vars = list(getattr(model, "metrics_variables", []))
    saved = [v.numpy() for v in metric_vars]
    try:
        return _compute(model, x, y, sample_weight, settings, seed)
    finally:
        # A multi-output compiled loss updates its per-output loss trackers.
        for var, value in zip(metric_vars, saved, strict=True):
            var.assign(value)


def _compute(
    model: Any,
    x: Any,
    y: Any,
    sw: Any,
    settings: hessian_spectra.Settings,
    seed: int,
) -> CurvatureResult:
    """Does the work of :func:`compute_curvature` on tensors."""
    engine = hessian_engine.engine_for(model)
    n_vars = len(engine.variables)
    offsets = engine.offsets
    batch = hessian_engine.batch_size(x)
    rng = np.random.default_rng(seed)

    if engine.n_params <= settings.max_exact_params:
        loss, norm, h = engine.hessian(tuple(range(n_vars)), x, y, sw, batch)
        h = h.numpy()
        whole = hessian_spectra.exact_whole(h, settings)
        whole.update(probe_loss=float(loss), grad_norm=float(norm))
        hvps = engine.n_params
        layer = [
            hessian_spectra.exact_block(h[a:b, a:b], settings)
            for a, b in zip(offsets[:-1], offsets[1:], strict=True)
        ]
    else:
        whole, hvps = hessian_spectra.lanczos_whole(engine, x, y, sw, rng, settings)
        if not math.isfinite(whole["probe_loss"] + whole["grad_norm"]):
            # Every HVP would be NaN too: report the finding, spend nothing.
            layer = [whole["spectrum"]] * n_vars
        else:
            found, spent = hessian_spectra.layer_spectra(
                engine, x, y, sw, batch, rng, settings
            )
            hvps += spent
            # A single-variable model's one block is the whole model.
            layer = [s if s is not None else whole["spectrum"] for s in found]
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

"""Rule ``exploding_gradient`` (lasting): the gradient norm rises and stays up.

Sources: seed 004 ("10×–100× jumps", a gradient norm above the parameter norm
or above ~100); AutoTrainer (ICSE 2021) calls a first-to-last layer ratio above
70 or any NaN an explosion. This rule measures a rise from the lower quartile
of what came *before* it, so a large gradient at the start that then falls
(learning-rate warm-up, a poor initialisation being corrected) is never an
explosion, and the rise must clear the series' own point-to-point noise (batch
size 1 swings by decades). Without a NaN at the end, the loss must end worse
than it started: a growing gradient with a falling loss is learning.
Spikes that come back down are :mod:`.gradient_spikes`.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from tb_gradplugin.diagnosis.flags import Flag, figure, short
from tb_gradplugin.diagnosis.robust import (
    cumulative_quantile,
    initial_loss,
    rolling_median,
)
from tb_gradplugin.diagnosis.run_view import RunView
from tb_gradplugin.diagnosis.thresholds import Thresholds

__all__ = ["Explosion", "GradientTrace", "gradient_trace", "rule"]


class GradientTrace(NamedTuple):
    """The whole-model gradient norm as both gradient rules read it.

    Attributes:
        steps: Logged steps with a finite, positive norm, not skipped for
            loss-scale overflow and before the first NaN; shape ``[n]``.
        norms: ‖g‖ at those steps.
        log_norms: log10 ‖g‖.
        log_smooth: Rolling median (5 points) of ``log_norms``.
        log_threshold: The rise in log10 that counts: the larger of
            log10(``explode_factor``) and ``explode_noise_sigmas`` robust
            standard deviations of the point-to-point change.
    """

    steps: np.ndarray
    norms: np.ndarray
    log_norms: np.ndarray
    log_smooth: np.ndarray
    log_threshold: float


class Explosion(NamedTuple):
    """What the rule found.

    Attributes:
        flags: At most one ``exploding_gradient`` error.
        onset_step: Where the lasting explosion began, or ``None``; the later
            rules judge only the steps before it.
    """

    flags: list[Flag]
    onset_step: int | None


def gradient_trace(
    view: RunView, thresholds: Thresholds, nonfinite_from: int | None
) -> GradientTrace | None:
    """Cleans the gradient norm for the gradient rules.

    Args:
        view: The run, every step.
        thresholds: Uses ``explode_factor`` and ``explode_noise_sigmas``.
        nonfinite_from: The first non-finite step, or ``None``.

    Returns:
        The trace, or ``None`` with fewer than 3 usable points.
    """
    if view.grad is None or len(view.grad) < 3:
        return None
    steps, g = view.grad.steps, view.grad.values
    valid = np.isfinite(g) & (g > 0)
    valid &= ~view.skipped_mask(steps)
    if nonfinite_from is not None:
        valid &= steps < nonfinite_from
    if valid.sum() < 3:
        return None
    log_norms = np.log10(g[valid])
    # Point-to-point noise of log10 ‖g‖ (robust σ); tiny batches make it
    # decades wide (one example's gradient), and a rise must clear it.
    noise = 1.4826 * float(np.median(np.abs(np.diff(log_norms)))) / math.sqrt(2.0)
    return GradientTrace(
        steps=steps[valid],
        norms=g[valid],
        log_norms=log_norms,
        log_smooth=rolling_median(log_norms, 5),
        log_threshold=max(
            math.log10(thresholds.explode_factor),
            thresholds.explode_noise_sigmas * noise,
        ),
    )


def rule(
    view: RunView,
    thresholds: Thresholds,
    trace: GradientTrace | None,
    nonfinite_from: int | None,
) -> Explosion:
    """Flags a gradient norm that rises and stays up (or ends in NaN).

    Args:
        view: The run, every step.
        thresholds: Uses ``explode_loss_rise`` and ``lr_update_ratio_high``.
        trace: From :func:`gradient_trace`.
        nonfinite_from: The first non-finite step, or ``None``.

    Returns:
        The flag and the onset of the explosion.
    """
    if trace is None:
        return Explosion([], None)
    smooth = trace.log_smooth
    # The level a rise is measured from: the lower quartile of everything seen
    # so far. Not the minimum: saturated batches (every example right, a
    # gradient of 1e-15) would make any normal batch look like an explosion.
    base = np.minimum(
        cumulative_quantile(trace.log_norms, 0.25), np.maximum.accumulate(smooth)
    )
    base = np.maximum(base, np.minimum.accumulate(smooth))
    rise = smooth - base
    ends_nonfinite = nonfinite_from is not None and nonfinite_from >= trace.steps[-1]
    worse = _loss_worse(view, trace.steps, thresholds)
    if not _sustained(view, trace, base, rise, worse, ends_nonfinite):
        return Explosion([], None)
    # The final excursion starts after the last point below the threshold;
    # the onset is where the climb left the level it rose from.
    n = trace.norms.shape[0]
    under = np.nonzero(rise < trace.log_threshold)[0]
    first_high = min(int(under[-1] + 1) if under.size else 0, n - 1)
    level = base[first_high]
    calm = np.nonzero(smooth[:first_high] <= level + math.log10(2.0))[0]
    onset = min(int(calm[-1] + 1) if calm.size else 0, first_high)
    last = nonfinite_from if ends_nonfinite else int(trace.steps[-1])
    last = max(int(last), int(trace.steps[-1]))
    flag = _explosion_flag(
        view, thresholds, trace, onset, 10 ** base[onset], last, worse, ends_nonfinite
    )
    return Explosion([flag], int(trace.steps[onset]))


def _loss_worse(view: RunView, steps: np.ndarray, thresholds: Thresholds) -> np.ndarray:
    """Per step: is the smoothed loss clearly above its best level so far?"""
    loss_at = view.value_at(view.loss, steps)
    loss_smooth = rolling_median(loss_at, 3)
    with np.errstate(all="ignore"):
        best = np.fmin.accumulate(
            np.where(np.isfinite(loss_smooth), loss_smooth, np.inf)
        )
        finite = loss_at[np.isfinite(loss_at)]
        floor = 0.1 * abs(initial_loss(finite)) if finite.size else 0.0
        # A rise counts against the best loss so far, with a floor of 10 % of the
        # initial loss so that noise on a loss near zero is no rise.
        return (loss_smooth - best) >= thresholds.explode_loss_rise * np.maximum(
            np.abs(best), max(floor, 1e-12)
        )


def _sustained(
    view: RunView,
    trace: GradientTrace,
    base: np.ndarray,
    rise: np.ndarray,
    worse: np.ndarray,
    ends_nonfinite: bool,
) -> bool:
    """Whether the gradient ends high and the run is harmed by it."""
    norms = trace.norms
    end_rise = rise[-1]
    if ends_nonfinite:
        end_rise = max(end_rise, trace.log_norms[-1] - base[-1])
    # Without a NaN at the end, an explosion must also pass the gradient norm the
    # run started with (a run that began large and came down has room to rise).
    above_start = float(np.max(norms[-3:])) > float(np.median(norms[:3]))
    # ... and the loss must end worse than it started (when there is a loss).
    loss_at = view.value_at(view.loss, trace.steps)
    loss_smooth = rolling_median(loss_at, 3)
    finite_at = np.isfinite(loss_smooth)
    if finite_at.any():
        start_loss = initial_loss(loss_at[np.isfinite(loss_at)])
        harmful = bool(worse[-1]) and float(loss_smooth[finite_at][-1]) > start_loss
    else:
        param_at = view.value_at(view.param, trace.steps)
        harmful = bool(norms[-1] > param_at[-1])
    if end_rise >= trace.log_threshold and (
        ends_nonfinite or (above_start and harmful)
    ):
        return True
    # Grew, then turned NaN: a divergence seen at a low logging rate.
    return ends_nonfinite and end_rise >= trace.log_threshold / 2


def _explosion_flag(
    view: RunView,
    thresholds: Thresholds,
    trace: GradientTrace,
    onset: int,
    base_norm: float,
    last: int,
    worse: np.ndarray,
    ends_nonfinite: bool,
) -> Flag:
    steps, norms = trace.steps, trace.norms
    loss_at = view.value_at(view.loss, steps)
    param_at = view.value_at(view.param, steps)
    ratio_at = view.value_at(view.update_ratio, steps)
    onset_step = int(steps[onset])
    peak = float(np.max(norms[onset:]))
    layer, layer_growth = _growing_layer(view, onset_step, int(steps[-1]))
    growth = peak / base_norm
    tail = " and then turned NaN/Inf" if ends_nonfinite else ""
    message = (
        f"The gradient norm rose {growth:.3g}x from {short(base_norm)} to "
        f"{short(peak)} from step {onset_step}{tail}"
    )
    if np.isfinite(loss_at[-1]) and bool(worse[-1]):
        message += f"; the loss rose with it to {short(loss_at[-1])}"
    if layer:
        message += f"; it grew most in {layer}"
    evidence = {
        "baseline_grad_norm": figure(base_norm),
        "peak_grad_norm": figure(peak),
        "growth": figure(growth),
        "threshold": thresholds.explode_factor,
        "last_grad_norm": figure(norms[-1]),
        "last_param_norm": figure(param_at[-1]),
        "grad_above_param_norm": bool(norms[-1] > param_at[-1]),
        "loss_at_onset": figure(loss_at[onset]),
        "last_finite_loss": figure(loss_at[-1]),
        "ends_non_finite": bool(ends_nonfinite),
    }
    if np.isfinite(ratio_at[-1]):
        evidence["last_update_ratio"] = figure(ratio_at[-1])
        evidence["update_ratio_too_high"] = bool(
            ratio_at[-1] > thresholds.lr_update_ratio_high
        )
    if layer:
        evidence["layer_growth"] = figure(layer_growth)
    return Flag(
        kind="exploding_gradient",
        severity="error",
        first_step=onset_step,
        last_step=last,
        layer=layer,
        message=message + ".",
        evidence=evidence,
    )


def _growing_layer(view: RunView, onset: int, end: int) -> tuple[str | None, float]:
    """The variable whose gradient norm grew most from before ``onset`` to ``end``."""
    series = view.layer_grad
    if series is None or not len(series) or not series.names:
        return None, math.nan
    values = series.values
    with np.errstate(all="ignore"):
        before = values[series.steps <= onset]
        after = values[(series.steps >= onset) & (series.steps <= end)]
        if not before.shape[0] or not after.shape[0]:
            return None, math.nan
        lo = np.where(np.isfinite(before) & (before > 0), before, np.inf).min(axis=0)
        hi = np.where(np.isfinite(after), after, -np.inf).max(axis=0)
        growth = hi / lo
    growth = np.where(np.isfinite(growth), growth, -np.inf)
    if not np.isfinite(growth).any() or len(series.names) != growth.shape[0]:
        return None, math.nan
    i = int(np.argmax(growth))
    return series.names[i], float(growth[i])

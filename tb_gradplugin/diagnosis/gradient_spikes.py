"""Rule ``exploding_gradient`` (spikes): the gradient norm jumps and comes back.

Sources: seed 004 ("10×–100× jumps"). A point counts as a spike when it is
``explode_factor`` times (and ``explode_noise_sigmas`` robust σ) above the
*upper* range (q90) of the ``spike_window`` points before it, not their median,
so that the spread of small-batch gradients is no spike. A spike that comes
back down is at most a warning (from 100×), else info: the run recovered.
"""

from __future__ import annotations

import numpy as np

from tb_gradplugin.diagnosis.exploding import GradientTrace
from tb_gradplugin.diagnosis.flags import Flag, figure, short
from tb_gradplugin.diagnosis.robust import rolling_min
from tb_gradplugin.diagnosis.thresholds import Thresholds

__all__ = ["rule"]

# Earlier points a spike needs for a range: a q90 of fewer is no range.
_MIN_HISTORY = 10


def _may_spike(
    log_norms: np.ndarray, window: int, judged: np.ndarray, threshold: float
) -> bool:
    """Whether some judged point rises ``threshold`` above its window's minimum.

    A q90 of earlier points is at least their minimum, so a point that does
    not clear the minimum does not clear the q90: the rolling minimum (a few
    passes) rules most runs out before the rolling quantiles (a sort of every
    window). The margin covers the rounding of numpy's interpolation.
    """
    n = log_norms.shape[0]
    if not judged.any():
        return False
    before = np.full(n, np.nan)
    before[1 : min(window, n)] = np.minimum.accumulate(log_norms)[: min(window, n) - 1]
    if n > window:
        before[window:] = rolling_min(log_norms[:-1], window)
    rise = np.where(judged, log_norms - before, -np.inf)
    return bool(np.nanmax(rise) >= threshold - 1e-9)


def rule(
    thresholds: Thresholds, trace: GradientTrace | None, before_step: int | None
) -> list[Flag]:
    """Flags gradient spikes before any lasting explosion.

    Args:
        thresholds: Uses ``spike_window`` and ``explode_spike_warning``.
        trace: From :func:`tb_gradplugin.diagnosis.exploding.gradient_trace`.
        before_step: The onset of a lasting explosion (spikes are looked for
            before it), or ``None``.

    Returns:
        At most one flag, for the worst spike.
    """
    if trace is None:
        return []
    log_norms = trace.log_norms
    n = log_norms.shape[0]
    window = max(3, thresholds.spike_window)
    judged = np.arange(n) >= _MIN_HISTORY
    if before_step is not None:
        judged &= trace.steps < before_step
    if not _may_spike(log_norms, window, judged, trace.log_threshold):
        return []
    # q90 of the `window` points before each point (fewer at the start).
    q90 = np.full(n, np.nan)
    for i in range(_MIN_HISTORY, min(window, n)):
        q90[i] = np.quantile(log_norms[:i], 0.9)
    if n > window:
        windows = np.lib.stride_tricks.sliding_window_view(log_norms[:-1], window)
        q90[window:] = np.quantile(windows, 0.9, axis=1)
    jump = np.where(judged, log_norms - q90, np.nan)
    spikes = np.nonzero(np.nan_to_num(jump, nan=-np.inf) >= trace.log_threshold)[0]
    if not spikes.size:
        return []
    worst = int(spikes[np.argmax(jump[spikes])])
    factor = float(10 ** jump[worst])
    severity = "warning" if factor >= thresholds.explode_spike_warning else "info"
    worst_step = int(trace.steps[worst])
    return [
        Flag(
            kind="exploding_gradient",
            severity=severity,
            first_step=int(trace.steps[spikes[0]]),
            last_step=int(trace.steps[spikes[-1]]),
            layer=None,
            message=(
                f"The gradient norm spiked {spikes.size} time(s), at worst "
                f"{factor:.3g}x the top of its recent range (to "
                f"{short(trace.norms[worst])} at step {worst_step}), and came "
                "back down."
            ),
            evidence={
                "spikes": int(spikes.size),
                "worst_factor": figure(factor),
                "worst_step": worst_step,
                "worst_grad_norm": figure(trace.norms[worst]),
                "threshold": thresholds.explode_factor,
                "warning_threshold": thresholds.explode_spike_warning,
            },
        )
    ]

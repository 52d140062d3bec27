"""Figures that summarise a series for display: loss volatility, recent medians.

The tab shows them beside the charts; they are analysis, so they live beside
the rules rather than in the HTTP routes.
"""

from __future__ import annotations

import warnings

import numpy as np

__all__ = ["RECENT_STEPS", "recent_median", "volatility"]

RECENT_STEPS = 100
"""Logged steps over which :func:`recent_median` takes the median."""


def volatility(values: np.ndarray) -> float | None:
    """Measures how much a loss jumps from one logged point to the next.

    The figure is the standard deviation of the point-to-point differences
    over the second half of the series divided by the mean absolute value over
    that half: about 0 for a settled loss, near or above 1 for a loss that
    keeps swinging by its own size (seed 002's HRM 0.5 and 10.0 runs). The
    first half is left out so that the initial descent does not count.

    Args:
        values: The loss values in step order.

    Returns:
        The volatility, or ``None`` when fewer than 4 finite points exist.
    """
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size < 4:
        return None
    tail = v[v.size // 2 :]
    scale = float(np.mean(np.abs(tail)))
    if scale == 0.0:
        return 0.0
    return float(np.std(np.diff(tail)) / scale)


def recent_median(values: np.ndarray, steps: int = RECENT_STEPS) -> np.ndarray:
    """The per-variable median of a layer statistic over the last logged steps.

    The tab shows the update ratio ‖Δw‖/‖w‖ this way: one step's ratio is one
    batch, the median over the recent steps is the layer's current pace.

    Args:
        values: Shape ``[n_steps, n_variables]``, in step order.
        steps: How many of the last rows to take. Defaults to
            :data:`RECENT_STEPS`.

    Returns:
        Shape ``[n_variables]``: the median of the finite values per column,
        NaN for a column without one.
    """
    recent = np.asarray(values, dtype=np.float64)[-steps:]
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN column
        return np.nanmedian(np.where(np.isfinite(recent), recent, np.nan), 0)

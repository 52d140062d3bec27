"""The compiled loops of ``fused_sums.py`` (numba, parallel over the CPU's cores).

Imported only when a step has a variable large enough to use them: importing
numba takes a few tenths of a second. Each loop reads each entry once and
accumulates in float64; the running sums are float32, added to in place, as
TensorFlow's ``assign_add`` does.
"""

from __future__ import annotations

import numba
import numpy as np

# Sums may be reassociated (vectorised: ~14 -> ~9 ms a pass over 25 M entries
# here); no assumption that values are finite, so NaN and Inf still count.
FASTMATH = {"reassoc", "contract", "nsz"}


@numba.njit(inline="always", fastmath=FASTMATH)
def _entry(x):  # pragma: no cover - compiled
    """One gradient entry's ``(g², |g|, g ≠ 0, g not finite)``."""
    y = np.float64(x)
    return y * y, abs(y), x != 0, not np.isfinite(x)


@numba.njit(parallel=True, nogil=True, cache=True, fastmath=FASTMATH)
def gradient_pass(values, running, add, after, other, increment):  # pragma: no cover
    """A dense gradient's six sums, the gradient added to ``running``.

    Args:
        values: The gradient, float32 ``[n]``.
        running: The running sum, float32 ``[n]``, added to in place when
            ``add``.
        add: Whether to add the gradient to the running sum.
        after: The parameters after the update, float32 ``[n]``.
        other: The optimizer's increment (``increment``), else the
            parameters before the update, float32 ``[n]``.
        increment: Whether ``other`` is the increment (``Δw`` itself).

    Returns:
        float64 ``[6]``: ``Σg²``, ``Σ|g|``, entries ≠ 0, NaN/Inf entries,
        ``Σw²`` after, ``Σ(Δw)²``.
    """
    sq = 0.0
    ab = 0.0
    nonzero = 0
    bad = 0
    param_sq = 0.0
    update_sq = 0.0
    for i in numba.prange(values.size):
        x = values[i]
        e_sq, e_abs, e_nonzero, e_bad = _entry(x)
        sq += e_sq
        ab += e_abs
        nonzero += e_nonzero
        bad += e_bad
        if add:
            running[i] += x
        w = np.float64(after[i])
        param_sq += w * w
        d = np.float64(other[i]) if increment else w - np.float64(other[i])
        update_sq += d * d
    return np.array([sq, ab, nonzero, bad, param_sq, update_sq], np.float64)


@numba.njit(parallel=True, nogil=True, cache=True, fastmath=FASTMATH)
def rows_pass(values, rows, running, add):  # pragma: no cover - compiled
    """The gradient sums of :func:`gradient_pass` over a sparse gradient's rows.

    Args:
        values: The rows' summed gradients, float32 ``[u, d]``.
        rows: Their row indices in the variable, distinct, ``[u]``.
        running: The running sum, float32 ``[rows of the variable, d]``.
        add: Whether to add the rows to the running sum.

    Returns:
        float64 ``[4]``: the sums over the rows' entries.
    """
    sq = 0.0
    ab = 0.0
    nonzero = 0
    bad = 0
    for r in numba.prange(values.shape[0]):
        row = rows[r]
        for j in range(values.shape[1]):
            e_sq, e_abs, e_nonzero, e_bad = _entry(values[r, j])
            sq += e_sq
            ab += e_abs
            nonzero += e_nonzero
            bad += e_bad
            if add:
                running[row, j] += values[r, j]
    return np.array([sq, ab, nonzero, bad], np.float64)


@numba.njit(parallel=True, nogil=True, cache=True, fastmath=FASTMATH)
def close_pass(running):  # pragma: no cover - compiled
    """``[|S|², entries = 0]`` of a running sum, which is then reset to 0.

    Args:
        running: The running sum, float32 ``[n]``.

    Returns:
        float64 ``[2]``.
    """
    sq = 0.0
    zeros = 0
    for i in numba.prange(running.size):
        y = np.float64(running[i])
        sq += y * y
        zeros += running[i] == 0
        running[i] = 0
    return np.array([sq, zeros], np.float64)

"""Robust statistics of a series: rolling medians, quantiles, autocorrelation.

The rules judge medians and quantiles over windows rather than single points,
so that one bad batch never decides a flag. Every function takes plain numpy
arrays and ignores nothing silently: where NaN is skipped, the name says so.
"""

from __future__ import annotations

import math
import warnings

import numpy as np

__all__ = [
    "rank_lag1_autocorrelation",
    "ranks",
    "rolling_min",
    "isotonic_decreasing",
    "variance_ratio",
    "candidate_starts",
    "cumulative_quantile",
    "improvement",
    "initial_loss",
    "lag1_autocorrelation",
    "late_window",
    "nanmedian",
    "nanquantile",
    "rolling_median",
    "thirds",
]


def rolling_median(x: np.ndarray, width: int) -> np.ndarray:
    """Centred rolling median, the window shrinking at the ends.

    Args:
        x: The series, shape ``[n]``; NaN is skipped inside a window.
        width: The window width, odd (an even one acts as ``width + 1``).

    Returns:
        Shape ``[n]``: the median of ``x[i - width // 2 : i + width // 2 + 1]``.
    """
    n = x.shape[0]
    if n == 0 or width <= 1:
        return x.copy()
    half = width // 2
    if n > 2 * half and np.isfinite(x).all():
        # A plain median over the full windows, the ends one by one: the
        # NaN-aware median below is several times slower.
        out = np.empty(n)
        out[half : n - half] = _full_window_median(x, half)
        for i in list(range(half)) + list(range(n - half, n)):
            out[i] = np.median(x[max(0, i - half) : i + half + 1])
        return out
    padded = np.concatenate([np.full(half, np.nan), x, np.full(half, np.nan)])
    windows = np.lib.stride_tricks.sliding_window_view(padded, 2 * half + 1)
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmedian(windows, axis=1)


def _full_window_median(x: np.ndarray, half: int) -> np.ndarray:
    """Median of each full window of ``2 * half + 1`` points of a finite series."""
    shifted = [x[i : x.shape[0] - 2 * half + i] for i in range(2 * half + 1)]
    if half == 1:
        a, b, c = shifted
        return np.maximum(np.minimum(a, b), np.minimum(np.maximum(a, b), c))
    if half == 2:
        # The smaller of two pairs' minima is below three points and the larger
        # of their maxima above three: neither is the median, which is then
        # the median of the other two and the fifth point. Element-wise
        # minima and maxima are ~20x faster than np.median over the windows.
        a, b, c, d, e = shifted
        low = np.maximum(np.minimum(a, b), np.minimum(c, d))
        high = np.minimum(np.maximum(a, b), np.maximum(c, d))
        return np.maximum(np.minimum(low, high), np.minimum(np.maximum(low, high), e))
    windows = np.lib.stride_tricks.sliding_window_view(x, 2 * half + 1)
    return np.median(windows, axis=1)


def cumulative_quantile(x: np.ndarray, q: float, points: int = 400) -> np.ndarray:
    """The q-quantile of everything seen so far, at every point.

    Args:
        x: The series, shape ``[n]``, finite.
        q: The quantile in ``[0, 1]``.
        points: Places where it is computed exactly; between two, the earlier
            value holds (the cost stays O(points · n)). Defaults to 400.

    Returns:
        Shape ``[n]``: the q-quantile of ``x[: i + 1]``.
    """
    n = x.shape[0]
    if n == 0:
        return x.copy()
    at = np.unique(np.linspace(0, n - 1, min(n, points)).astype(int))
    if x.dtype == np.float64 and np.isfinite(x).all():
        vals = _prefix_quantiles(x, q, at)
    else:
        vals = np.array([np.quantile(x[: i + 1], q) for i in at])
    idx = np.searchsorted(at, np.arange(n), side="right") - 1
    return vals[idx]


def _prefix_quantiles(x: np.ndarray, q: float, at: np.ndarray) -> np.ndarray:
    """np.quantile(x[: i + 1], q) for each ``i`` of ``at``, bit for bit.

    Each quantile reads two order statistics of a prefix. ``x`` is sorted once
    and its sorted positions cut into ~√n buckets; a table of how many
    elements of each prefix fall in each bucket finds the bucket of an order
    statistic, and a scan of that bucket's ~√n elements finds it: O(n log n +
    len(at) · √n) in a few numpy calls, where merging each prefix into a sorted
    copy moved O(len(at) · n) elements (~50 ms at 100,000 points).

    Args:
        x: Finite float64 values, shape ``[n]``.
        q: The quantile in ``[0, 1]``.
        at: Increasing prefix ends, int ``[k]``, each in ``[0, n)``.

    Returns:
        float64 ``[k]``.
    """
    n = x.shape[0]
    order = np.argsort(x)  # ties in any order: an order statistic is one value
    width = max(1, math.isqrt(n))
    n_buckets = -(-n // width)
    # Query j holds element i when i <= at[j], i.e. from the first such j on.
    first_query = np.searchsorted(at, np.arange(n), side="left")
    counts = np.bincount(
        first_query[order] * n_buckets + np.arange(n) // width,
        minlength=(at.shape[0] + 1) * n_buckets,
    ).reshape(at.shape[0] + 1, n_buckets)[:-1]
    # in_prefix[j, b]: elements of buckets 0..b within prefix j.
    in_prefix = counts.cumsum(axis=0).cumsum(axis=1)
    padded = np.concatenate([order, np.full(n_buckets * width - n, n)])
    members = padded.reshape(n_buckets, width)

    def order_statistic(k: np.ndarray) -> np.ndarray:
        bucket = (in_prefix <= k[:, None]).sum(axis=1)
        before = np.where(bucket > 0, in_prefix[np.arange(k.shape[0]), bucket - 1], 0)
        inside = members[bucket] <= at[:, None]
        pos = np.argmax(np.cumsum(inside, axis=1) > (k - before)[:, None], axis=1)
        return x[members[bucket, pos]]

    m = at + 1
    virtual = (m - 1) * q
    lo = np.minimum(np.floor(virtual).astype(np.int64), m - 1)
    low = order_statistic(lo)
    high = order_statistic(np.minimum(lo + 1, m - 1))
    out = np.empty(at.shape[0])
    for j in range(at.shape[0]):
        if virtual[j] >= m[j] - 1:
            out[j] = high[j]  # the largest: lo + 1 clipped to m - 1
        else:
            out[j] = _interpolate(float(low[j]), float(high[j]), virtual[j] - lo[j])
    return out


def _interpolate(a: float, b: float, t: float) -> float:
    """The linear interpolation of np.quantile between two order statistics."""
    diff = b - a
    return b - diff * (1 - t) if t >= 0.5 else a + diff * t


def nanmedian(x: np.ndarray) -> float:
    """The median of the finite values, or NaN when there are none.

    Args:
        x: Any array.

    Returns:
        A float.
    """
    x = np.asarray(x, dtype=np.float64)
    x = x[np.isfinite(x)]
    return float(np.median(x)) if x.size else math.nan


def nanquantile(x: np.ndarray, q: float) -> float:
    """The q-quantile of the finite values, or NaN when there are none.

    Args:
        x: Any array.
        q: The quantile in ``[0, 1]``.

    Returns:
        A float.
    """
    x = np.asarray(x, dtype=np.float64)
    x = x[np.isfinite(x)]
    return float(np.quantile(x, q)) if x.size else math.nan


def lag1_autocorrelation(x: np.ndarray) -> float:
    """Lag-1 autocorrelation after removing a least-squares straight line.

    Uncorrelated noise gives about 0 ± 2/√n; a series that alternates step to
    step gives a negative value, slow waves a positive one.

    Args:
        x: The series, shape ``[n]``, finite.

    Returns:
        ``Σ r_t r_{t+1} / Σ r_t²`` of the residuals ``r``; 0 for fewer than
        4 points or a straight line.
    """
    n = x.shape[0]
    if n < 4:
        return 0.0
    t = np.arange(n, dtype=np.float64)
    slope, intercept = np.polyfit(t, x, 1)
    residual = x - (slope * t + intercept)
    denom = float(np.dot(residual, residual))
    if denom <= 0 or not math.isfinite(denom):
        return 0.0
    return float(np.dot(residual[:-1], residual[1:]) / denom)


def thirds(x: np.ndarray) -> tuple[float, float]:
    """The medians of the first and the last third of a series.

    Args:
        x: The series, shape ``[n]``, ``n >= 1``.

    Returns:
        ``(median of the first third, median of the last third)``.
    """
    k = max(1, x.shape[0] // 3)
    return float(np.median(x[:k])), float(np.median(x[-k:]))


def late_window(n: int) -> slice:
    """The late window of ``n`` points: the second half (at least one point).

    Args:
        n: The number of points.

    Returns:
        A slice.
    """
    return slice(n // 2 if n > 1 else 0, n)


def initial_loss(values: np.ndarray) -> float:
    """The loss a run started from: the median of its first three points.

    Args:
        values: The loss values, shape ``[n]``, ``n >= 1``.

    Returns:
        A float (the first point alone is one batch, too noisy).
    """
    return float(np.median(values[: min(3, values.shape[0])]))


def improvement(initial: float, level: float) -> float:
    """How much of the initial loss has been removed.

    Args:
        initial: The initial loss.
        level: The loss now.

    Returns:
        ``(initial - level) / |initial|``: 1 = all, 0 = none, < 0 = worse.
    """
    return (initial - level) / max(abs(initial), 1e-12)


def candidate_starts(n: int) -> list[int]:
    """Where a late window of ``n`` points may begin: 0, n/8, n/4, 3n/8, n/2.

    Args:
        n: The number of points.

    Returns:
        Sorted distinct start indices; the rules try the longest window first.
    """
    return sorted({0, n // 8, n // 4, (3 * n) // 8, n // 2})


def isotonic_decreasing(x: np.ndarray) -> np.ndarray:
    """The least-squares non-increasing fit of a series (pool adjacent violators).

    A learning loss falls with noise on top: this fit follows the fall however
    curved it is, and leaves the noise (and any swing back up) in the residual.

    Args:
        x: The series, shape ``[n]``, finite.

    Returns:
        Shape ``[n]``: the non-increasing ``f`` that minimises ``Σ (x - f)²``.
    """
    x = np.asarray(x, dtype=np.float64)
    levels: list[float] = []
    weights: list[int] = []
    for value in x:
        levels.append(float(value))
        weights.append(1)
        # Merge the last two blocks while they rise (violate the order).
        while len(levels) > 1 and levels[-2] < levels[-1]:
            w = weights[-2] + weights[-1]
            level = (levels[-2] * weights[-2] + levels[-1] * weights[-1]) / w
            levels[-2:], weights[-2:] = [level], [w]
    return np.repeat(levels, weights)


def variance_ratio(residual: np.ndarray, block: int) -> float:
    """How much more block means vary than independent points would let them.

    ``block · var(means of blocks) / var(points)``: about 1 for uncorrelated
    noise (± √(2 / number of blocks)), far above 1 when the series swings over
    many points, below 1 when it alternates step to step (Lo & MacKinlay 1988,
    the variance-ratio test, here on levels rather than increments).

    Args:
        residual: The series with its trend removed, shape ``[n]``, finite.
        block: Points per block, ``>= 1``.

    Returns:
        The ratio; NaN with fewer than 2 blocks or a constant series.
    """
    count = residual.shape[0] // block
    if count < 2:
        return math.nan
    points = float(np.var(residual[: count * block]))
    if not points > 0:
        return math.nan
    means = residual[: count * block].reshape(count, block).mean(axis=1)
    return block * float(np.var(means)) / points


def rank_lag1_autocorrelation(x: np.ndarray) -> float:
    """:func:`lag1_autocorrelation` of the ranks: one huge point cannot hide it.

    A loss that alternates 0.5/0.9 step to step keeps a strongly negative
    value even with a rare spike to 12 among its points, which alone makes
    the plain autocorrelation ≈ 0 (Spearman's idea applied to lag 1).

    Args:
        x: The series, shape ``[n]``, finite.

    Returns:
        The lag-1 autocorrelation of the detrended ranks of ``x``.
    """
    return lag1_autocorrelation(ranks(x).astype(np.float64))


def ranks(x: np.ndarray) -> np.ndarray:
    """The rank of each point, ties in order of appearance.

    Args:
        x: The series, shape ``[n]``.

    Returns:
        int ``[n]``: a permutation of ``0..n-1``, equal to
        ``argsort(argsort(x, stable), stable)`` (the inverse of one stable
        argsort, without the second sort).
    """
    order = np.argsort(x, kind="stable")
    out = np.empty(order.shape[0], dtype=order.dtype)
    out[order] = np.arange(order.shape[0])
    return out


def rolling_min(x: np.ndarray, width: int) -> np.ndarray:
    """The minimum of each run of ``width`` consecutive points.

    Args:
        x: The series, shape ``[n]``.
        width: Points per run, ``>= 1``; shorter series use their length.

    Returns:
        Shape ``[max(n - width + 1, 1)]`` (``[0]`` for an empty series):
        ``min(x[i : i + width])``; NaN where a run has only NaN.
    """
    if x.shape[0] == 0:
        return x.copy()
    width = max(1, min(width, x.shape[0]))
    # Minima of runs of doubling length (np.fmin skips NaN as nanmin does),
    # then two overlapping runs cover each window: log2(width) passes over
    # the series instead of width.
    runs, span = x, 1
    while span * 2 <= width:
        runs = np.fmin(runs[:-span], runs[span:])
        span *= 2
    n = x.shape[0] - width + 1
    return np.fmin(runs[:n], runs[width - span : width - span + n])

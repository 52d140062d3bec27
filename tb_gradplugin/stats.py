"""Gradient statistics of a block of training steps, in numpy.

The compiled train step only copies each step's flat gradient and parameters
into a ring (``ring.py``); the functions here reduce a block of ``n`` such rows
at once, ``[n, P]`` in, ``[n, V]`` out. They run on the callback's writer
thread, in numpy rather than TensorFlow: numpy works on that one thread (which
runs at idle priority), while TensorFlow ops would share the training's thread
pools. Measured on the 2-core dev machine for a 64-step block of the
16,330-parameter MLP of seed 003: the reduction takes 2.9 ms of CPU, the whole
block (gather, reduction, writes) 8-9 ms, against 13 ms when the reduction was
TensorFlow ops (DESIGN.md pitfall 14). Pure functions, no state; only
:func:`flatten` (used in the step) is TensorFlow.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np
import tensorflow as tf

# Per-variable sums of one step, the keys of :func:`block_sums`.
SUM_COLUMNS = (
    "grad_sq",
    "grad_abs",
    "grad_zero",
    "grad_nonfinite",
    "param_sq",
    "update_sq",
)


@dataclasses.dataclass(frozen=True)
class SliceSpec:
    """A named slice of one variable on its last axis.

    Attributes:
        name: The slice's name, used in tags.
        variable: The variable's ``.path``.
        start: First index on the last axis.
        stop: One past the last index on the last axis.
        var_index: Position of the variable in the layout.
        flat_indices: Positions of the slice's entries in the flat vector.
    """

    name: str
    variable: str
    start: int
    stop: int
    var_index: int
    flat_indices: np.ndarray


class Layout:
    """Where each trainable variable sits in the flat parameter vector.

    Args:
        paths: The variables' ``.path`` values, in order.
        shapes: Their shapes, in the same order.
        slices: Named slices, ``{"name": ("path", (start, stop))}``. Defaults to
            ``None``: no slices.

    Raises:
        ValueError: When a slice names an unknown variable or a range outside
            the variable's last axis.

    Example:
        >>> layout = Layout(["d/kernel", "d/bias"], [(3, 4), (4,)],
        ...                 {"lo": ("d/kernel", (0, 2))})
        >>> layout.size, layout.num_variables
        (16, 2)
    """

    def __init__(
        self,
        paths: Sequence[str],
        shapes: Sequence[Sequence[int]],
        slices: Mapping[str, tuple[str, tuple[int, int]]] | None = None,
    ):
        self.paths = list(paths)
        self.shapes = [tuple(int(d) for d in s) for s in shapes]
        self.sizes = [int(np.prod(s, dtype=np.int64)) for s in self.shapes]
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes)]).astype(np.int64)
        self.size = int(self.offsets[-1])
        self.num_variables = len(self.paths)
        self.bounds = [
            (int(a), int(b))
            for a, b in zip(self.offsets[:-1], self.offsets[1:], strict=True)
        ]
        self.sizes_array = np.maximum(np.array(self.sizes, dtype=np.float32), 1.0)
        self.slices = [self._slice(n, spec) for n, spec in (slices or {}).items()]

    def _slice(self, name: str, spec) -> SliceSpec:
        try:
            path, (start, stop) = spec
        except (TypeError, ValueError) as err:
            raise ValueError(
                f"slice {name!r} must be ('variable/path', (start, stop)), got {spec!r}"
            ) from err
        if path not in self.paths:
            raise ValueError(
                f"slice {name!r} names variable {path!r}, which is not among the "
                f"trainable variables: {', '.join(self.paths)}"
            )
        index = self.paths.index(path)
        shape = self.shapes[index]
        last = shape[-1] if shape else 1
        start, stop = int(start), int(stop)
        if not 0 <= start < stop <= last:
            raise ValueError(
                f"slice {name!r}: range [{start}, {stop}) is outside the last axis "
                f"of {path!r} (size {last})"
            )
        local = np.arange(self.sizes[index], dtype=np.int64).reshape(shape or (1,))
        flat = local[..., start:stop].reshape(-1) + self.offsets[index]
        return SliceSpec(name, path, start, stop, index, flat.astype(np.int32))


def flatten(tensors: Sequence[tf.Tensor]) -> tf.Tensor:
    """Concatenates tensors into one float32 vector (dense, in order)."""
    parts = []
    for t in tensors:
        if isinstance(t, tf.IndexedSlices):
            t = tf.convert_to_tensor(t)
        parts.append(tf.reshape(tf.cast(t, tf.float32), [-1]))
    if not parts:
        return tf.zeros([0], tf.float32)
    return tf.concat(parts, axis=0)


def block_sums(
    layout: Layout,
    grads: np.ndarray,
    params: np.ndarray,
    prev_params: np.ndarray,
    rows: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Per-step, per-variable sums of a block of consecutive steps.

    Args:
        layout: The variables' layout.
        grads: The flat gradients, float32 ``[n, P]``, one row per step.
        params: The flat parameters after each step, float32 ``[n, P]``.
        prev_params: The flat parameters before the block's first step, ``[P]``.
        rows: The rows that need every column (the logged ones); the others
            get only ``grad_sq``, ``grad_abs``, ``grad_nonfinite`` and
            ``slice_abs`` (what windows and counts use), zeros elsewhere.
            Defaults to ``None``: every row.

    Returns:
        ``{column: float64 [n, V]}`` for the columns of :data:`SUM_COLUMNS`
        (``update_sq`` is the squared change made by each step), and
        ``slice_abs``: float64 ``[n, S]``, the sums of ``|g|`` over each slice.
    """
    n = grads.shape[0]
    rows = np.arange(n) if rows is None else np.asarray(rows, np.int64)
    every = len(rows) == n
    sel_g = grads if every else grads[rows]
    sel_p = params if every else params[rows]
    # The change made by each selected row's step: from the previous row, or
    # from the parameters before the block for row 0.
    if every:
        updates = np.empty_like(params)
        if n:
            np.subtract(params[0], prev_params, out=updates[0])
            np.subtract(params[1:], params[:-1], out=updates[1:])
    else:
        before = params[np.maximum(rows - 1, 0)]
        if len(rows) and rows[0] == 0:
            before[0] = prev_params
        updates = sel_p - before
    out = {name: np.zeros([n, layout.num_variables]) for name in SUM_COLUMNS}
    for v, (a, b) in enumerate(layout.bounds):
        g = grads[:, a:b]
        # einsum sums the products in one pass, without a temporary array.
        out["grad_sq"][:, v] = np.einsum("ij,ij->i", g, g)
        out["grad_abs"][:, v] = np.abs(g).sum(axis=1)
        # A NaN/Inf entry makes the sum of squares non-finite: only then count.
        bad = ~np.isfinite(out["grad_sq"][:, v])
        if bad.any():
            out["grad_nonfinite"][bad, v] = np.sum(~np.isfinite(g[bad]), axis=1)
        p, u = sel_p[:, a:b], updates[:, a:b]
        out["grad_zero"][rows, v] = (b - a) - np.count_nonzero(sel_g[:, a:b], axis=1)
        out["param_sq"][rows, v] = np.einsum("ij,ij->i", p, p)
        out["update_sq"][rows, v] = np.einsum("ij,ij->i", u, u)
    out["slice_abs"] = slice_sums(layout, grads, absolute=True)
    return out


def slice_sums(
    layout: Layout, values: np.ndarray, absolute: bool = False
) -> np.ndarray:
    """Sums of ``values`` ``[k, P]`` over each named slice's entries, ``[k, S]``.

    Args:
        layout: The variables' layout, with the slices.
        values: Flat rows ``[k, P]``.
        absolute: Sum ``|values|`` instead. Defaults to ``False``.

    Returns:
        float64 ``[k, S]``.
    """
    out = np.zeros([values.shape[0], len(layout.slices)])
    for i, s in enumerate(layout.slices):
        a, b = layout.bounds[s.var_index]
        shape = layout.shapes[s.var_index] or (1,)
        block = values[:, a:b].reshape((values.shape[0], *shape))
        part = block[..., s.start : s.stop]
        part = np.abs(part) if absolute else part
        out[:, i] = part.sum(axis=tuple(range(1, part.ndim)))
    return out


def safe_ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """``num / den`` with 0 where ``den`` is 0 (a zero-size or all-zero variable)."""
    num, den = np.broadcast_arrays(np.asarray(num, np.float64), den)
    out = np.zeros(num.shape)
    np.divide(num, den, out=out, where=den != 0)
    return out


@dataclasses.dataclass
class WindowMoments:
    """Per-entry first and second moments of the gradient over ``k`` windows.

    Sums are shifted by one gradient of the windows' time (``shift``), which
    keeps them accurate when the mean is large against the spread.

    Attributes:
        shift: The gradient the sums are taken around, float32 ``[P]``.
        sum1: Sum of ``g - shift`` over each window's steps, ``[k, P]``.
        sum2: Sum of ``(g - shift)**2``, ``[k, P]``.
        count: Number of steps of each window, ``[k]``.
        abs_sum: Per-variable sums of ``|g|`` over each window, ``[k, V]``.
        slice_abs_sum: Per-slice sums of ``|g|`` over each window, ``[k, S]``.
        batch_sum: Sum of the examples per step over each window, ``[k]``.
    """

    shift: np.ndarray
    sum1: np.ndarray
    sum2: np.ndarray
    count: np.ndarray
    abs_sum: np.ndarray
    slice_abs_sum: np.ndarray
    batch_sum: np.ndarray

    @classmethod
    def empty(cls, layout: Layout, k: int = 1) -> WindowMoments:
        """Returns ``k`` windows with no step in them (and a zero shift)."""
        p, v, s = layout.size, layout.num_variables, len(layout.slices)
        return cls(
            shift=np.zeros([p], np.float32),
            sum1=np.zeros([k, p]),
            sum2=np.zeros([k, p]),
            count=np.zeros([k]),
            abs_sum=np.zeros([k, v]),
            slice_abs_sum=np.zeros([k, s]),
            batch_sum=np.zeros([k]),
        )

    def window(self, i: int) -> WindowMoments:
        """Returns window ``i`` alone (``k`` = 1), sharing the shift."""
        return WindowMoments(self.shift, *[f[i : i + 1] for f in self.sums()])

    def sums(self) -> list[np.ndarray]:
        """The per-window fields (all but ``shift``), in order."""
        return [
            self.sum1,
            self.sum2,
            self.count,
            self.abs_sum,
            self.slice_abs_sum,
            self.batch_sum,
        ]


def window_moments(
    grads: np.ndarray,
    weights: np.ndarray,
    starts: Sequence[int],
    shift: np.ndarray,
    abs_sums: np.ndarray,
    slice_abs_sums: np.ndarray,
    batch: np.ndarray,
) -> WindowMoments:
    """Window moments of the rows of a block, the windows being row ranges.

    Args:
        grads: The flat gradients ``[n, P]``.
        weights: 1.0 for a row that counts, 0.0 for one that does not (a
            skipped loss-scale overflow step), ``[n]``.
        starts: The first row of each of the ``k`` windows, increasing; window
            ``i`` ends where window ``i + 1`` starts, the last at row ``n``
            (a window may hold no row).
        shift: The gradient to take the sums around, ``[P]``.
        abs_sums: Per-variable sums of ``|g|`` of each row, ``[n, V]``.
        slice_abs_sums: Per-slice sums of ``|g|`` of each row, ``[n, S]``.
        batch: Examples per row, ``[n]``.

    Returns:
        The moments of the ``k`` windows.
    """
    k, p = len(starts), grads.shape[1]
    m = WindowMoments(
        shift,
        np.zeros([k, p]),
        np.zeros([k, p]),
        np.zeros([k]),
        np.zeros([k, abs_sums.shape[1]]),
        np.zeros([k, slice_abs_sums.shape[1]]),
        np.zeros([k]),
    )
    keep = weights > 0
    ends = [*starts[1:], grads.shape[0]]
    for i, (a, b) in enumerate(zip(starts, ends, strict=True)):
        rows = np.arange(a, b)[keep[a:b]]
        if not rows.size:
            continue
        g = grads[a:b] if rows.size == b - a else grads[rows]
        d = g - shift
        m.sum1[i] = d.sum(axis=0)
        m.sum2[i] = np.einsum("ij,ij->j", d, d)
        m.count[i] = rows.size
        m.abs_sum[i] = abs_sums[rows].sum(axis=0)
        m.slice_abs_sum[i] = slice_abs_sums[rows].sum(axis=0)
        m.batch_sum[i] = batch[rows].sum()
    return m


def window_statistics(layout: Layout, m: WindowMoments) -> dict[str, np.ndarray]:
    """Turns the moments of ``k`` windows into the windows' statistics.

    Args:
        layout: The variables' layout.
        m: The windows' accumulated moments.

    Returns:
        Per variable (``[k, V]``): ``layer_grad_variance`` (per-entry variance
        over the window's steps, averaged over the variable's entries) and
        ``layer_grad_mean_abs``. Whole model (``[k]``): ``grad_variance``,
        ``grad_mean_abs``, ``noise_scale`` (B_simple of McCandlish et al. 2018,
        ``B tr(Sigma_B) / |G|^2`` with ``B`` the mean examples per step),
        ``grad_snr`` (``|G|^2 / tr(Sigma_B)``), ``window_steps``. Per slice
        (``[k, S]``): ``slice_grad_mean_abs`` and ``slice_grad_variance``.
    """
    n = np.maximum(m.count, 1.0)[:, None]
    mean_d = m.sum1 / n
    # Population variance over the window's steps; clamp the rounding.
    var = np.maximum(m.sum2 / n - np.square(mean_d), 0.0)
    mean_g = m.shift[None].astype(np.float64) + mean_d
    sizes = layout.sizes_array[None].astype(np.float64)
    var_sum = np.zeros([len(n), layout.num_variables])
    for v, (a, b) in enumerate(layout.bounds):
        var_sum[:, v] = var[:, a:b].sum(axis=1)
    total = float(max(layout.size, 1))
    tr_sigma = var.sum(axis=1)
    g_sq = np.square(mean_g).sum(axis=1)
    batch = m.batch_sum / n[:, 0]
    slice_sizes = np.array([float(max(s.flat_indices.size, 1)) for s in layout.slices])[
        None
    ]
    return {
        "layer_grad_variance": var_sum / sizes,
        "layer_grad_mean_abs": m.abs_sum / (sizes * n),
        "grad_variance": tr_sigma / total,
        "grad_mean_abs": m.abs_sum.sum(axis=1) / (total * n[:, 0]),
        "noise_scale": safe_ratio(batch * tr_sigma, g_sq),
        "grad_snr": safe_ratio(g_sq, tr_sigma),
        "window_steps": m.count.copy(),
        "slice_grad_variance": slice_sums(layout, var) / slice_sizes,
        "slice_grad_mean_abs": m.slice_abs_sum / (slice_sizes * n),
    }

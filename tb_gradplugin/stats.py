"""Gradient statistics of a block of training steps, in TensorFlow.

The compiled train step only copies each step's flat gradient and parameters
into a ring (``ring.py``); the functions here reduce a block of ``n`` such rows
at once, ``[n, P]`` in, ``[n, V]`` out, so that each op is paid once per block
rather than once per step (DESIGN.md pitfall 14: one small op per variable per
statistic per step cost ~10 % of a 1 ms step). Pure functions, no state.
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
        self.segment_ids = np.repeat(
            np.arange(self.num_variables, dtype=np.int32), self.sizes
        )
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
    layout: Layout, grads: tf.Tensor, params: tf.Tensor, prev_params: tf.Tensor
) -> dict[str, tf.Tensor]:
    """Per-step, per-variable sums of a block of consecutive steps.

    Args:
        layout: The variables' layout.
        grads: The flat gradients, float32 ``[n, P]``, one row per step.
        params: The flat parameters after each step, float32 ``[n, P]``.
        prev_params: The flat parameters before the block's first step, ``[P]``.

    Returns:
        ``{column: float32 [n, V]}`` for the columns of :data:`SUM_COLUMNS`
        (``update_sq`` is the squared change made by each step), and
        ``slice_abs``: float32 ``[n, S]``, the sums of ``|g|`` over each slice.
    """
    prev = tf.concat([prev_params[None], params[:-1]], axis=0)
    updates = params - prev
    abs_g = tf.abs(grads)
    columns = {name: [] for name in SUM_COLUMNS}
    parts = zip(
        tf.split(grads, layout.sizes, axis=1),
        tf.split(abs_g, layout.sizes, axis=1),
        tf.split(params, layout.sizes, axis=1),
        tf.split(updates, layout.sizes, axis=1),
        strict=True,
    )
    for g, a, p, u in parts:
        columns["grad_sq"].append(tf.reduce_sum(tf.square(g), axis=1))
        columns["grad_abs"].append(tf.reduce_sum(a, axis=1))
        columns["grad_zero"].append(
            tf.reduce_sum(tf.cast(tf.equal(g, 0.0), tf.float32), axis=1)
        )
        columns["grad_nonfinite"].append(
            tf.reduce_sum(
                tf.cast(tf.logical_not(tf.math.is_finite(g)), tf.float32), axis=1
            )
        )
        columns["param_sq"].append(tf.reduce_sum(tf.square(p), axis=1))
        columns["update_sq"].append(tf.reduce_sum(tf.square(u), axis=1))
    n = tf.shape(grads)[0]
    out = {
        name: tf.stack(cols, axis=1) if cols else tf.zeros([n, 0])
        for name, cols in columns.items()
    }
    out["slice_abs"] = _slice_sums(layout, abs_g)
    return out


def _slice_sums(layout: Layout, values: tf.Tensor) -> tf.Tensor:
    """Sums of ``values`` ``[k, P]`` over each named slice's entries, ``[k, S]``."""
    if not layout.slices:
        return tf.zeros([tf.shape(values)[0], 0])
    return tf.stack(
        [
            tf.reduce_sum(tf.gather(values, tf.constant(s.flat_indices), axis=1), 1)
            for s in layout.slices
        ],
        axis=1,
    )


def safe_ratio(num: tf.Tensor, den: tf.Tensor) -> tf.Tensor:
    """``num / den`` with 0 where ``den`` is 0 (a zero-size or all-zero variable)."""
    return tf.math.divide_no_nan(num, den)


@dataclasses.dataclass
class WindowMoments:
    """Per-entry first and second moments of the gradient over ``k`` windows.

    Sums are shifted by one gradient of the windows' time (``shift``), which
    keeps float32 accurate when the mean is large against the spread.

    Attributes:
        shift: The gradient the sums are taken around, ``[P]``.
        sum1: Sum of ``g - shift`` over each window's steps, ``[k, P]``.
        sum2: Sum of ``(g - shift)**2``, ``[k, P]``.
        count: Number of steps of each window, ``[k]``.
        abs_sum: Per-variable sums of ``|g|`` over each window, ``[k, V]``.
        slice_abs_sum: Per-slice sums of ``|g|`` over each window, ``[k, S]``.
        batch_sum: Sum of the examples per step over each window, ``[k]``.
    """

    shift: tf.Tensor
    sum1: tf.Tensor
    sum2: tf.Tensor
    count: tf.Tensor
    abs_sum: tf.Tensor
    slice_abs_sum: tf.Tensor
    batch_sum: tf.Tensor

    def fields(self) -> list[tf.Tensor]:
        """The attributes in order (to keep them in variables)."""
        return [getattr(self, f.name) for f in dataclasses.fields(self)]


def segment_moments(
    grads: tf.Tensor,
    weights: tf.Tensor,
    segment_ids: tf.Tensor,
    num_segments: tf.Tensor,
    shift: tf.Tensor,
    abs_sums: tf.Tensor,
    slice_abs_sums: tf.Tensor,
    batch: tf.Tensor,
) -> WindowMoments:
    """Window moments of the rows of a block, grouped by window.

    Args:
        grads: The flat gradients ``[n, P]``.
        weights: 1.0 for a row that counts, 0.0 for one that does not (a
            skipped loss-scale overflow step), ``[n]``.
        segment_ids: The window of each row, non-decreasing int32 ``[n]``.
        num_segments: ``k``, the number of windows (the last may hold no row).
        shift: The gradient to take the sums around, ``[P]``.
        abs_sums: Per-variable sums of ``|g|`` of each row, ``[n, V]``.
        slice_abs_sums: Per-slice sums of ``|g|`` of each row, ``[n, S]``.
        batch: Examples per row, ``[n]``.

    Returns:
        The moments of the ``k`` windows.
    """
    keep = weights > 0
    d = tf.where(keep[:, None], grads - shift[None], 0.0)

    def seg(x):
        # The sorted segment sum adds whole rows (18 µs for [64, 16330] here);
        # the unsorted one scatters (500 µs), a cumsum over rows takes 4 ms.
        mask = tf.reshape(keep, [-1] + [1] * (len(x.shape) - 1))
        x = tf.where(mask, x, tf.zeros_like(x))
        out = tf.math.segment_sum(x, segment_ids)
        missing = num_segments - tf.shape(out)[0]
        pad = tf.zeros(tf.concat([[missing], tf.shape(x)[1:]], axis=0), x.dtype)
        return tf.concat([out, pad], axis=0)

    return WindowMoments(
        shift=shift,
        sum1=seg(d),
        sum2=seg(tf.square(d)),
        count=seg(weights),
        abs_sum=seg(abs_sums),
        slice_abs_sum=seg(slice_abs_sums),
        batch_sum=seg(batch),
    )


def window_statistics(layout: Layout, m: WindowMoments) -> dict[str, tf.Tensor]:
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
    n = tf.maximum(m.count, 1.0)[:, None]
    mean_d = m.sum1 / n
    # Population variance over the window's steps; clamp the float32 rounding.
    var = tf.maximum(m.sum2 / n - tf.square(mean_d), 0.0)
    mean_g = m.shift[None] + mean_d
    sizes = tf.constant(layout.sizes_array)[None]
    if layout.num_variables:
        var_sum = tf.stack(
            [tf.reduce_sum(v, axis=1) for v in tf.split(var, layout.sizes, axis=1)],
            axis=1,
        )
    else:
        var_sum = tf.zeros([tf.shape(var)[0], 0])
    total = float(max(layout.size, 1))
    tr_sigma = tf.reduce_sum(var, axis=1)
    g_sq = tf.reduce_sum(tf.square(mean_g), axis=1)
    batch = m.batch_sum / n[:, 0]
    counts = [float(max(s.flat_indices.size, 1)) for s in layout.slices]
    slice_sizes = tf.constant(counts or [1.0])[None, : len(counts)]
    return {
        "layer_grad_variance": var_sum / sizes,
        "layer_grad_mean_abs": m.abs_sum / (sizes * n),
        "grad_variance": tr_sigma / total,
        "grad_mean_abs": tf.reduce_sum(m.abs_sum, axis=1) / (total * n[:, 0]),
        "noise_scale": safe_ratio(batch * tr_sigma, g_sq),
        "grad_snr": safe_ratio(g_sq, tr_sigma),
        "window_steps": m.count,
        "slice_grad_variance": _slice_sums(layout, var) / slice_sizes,
        "slice_grad_mean_abs": m.slice_abs_sum / (slice_sizes * n),
    }

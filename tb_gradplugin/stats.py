"""Gradient statistics: reduced inside the train step, finished on the host.

In the step (``keras.ops``, except TensorFlow's one-pass ``l2_loss`` for the
sums of squares and the ``tf.IndexedSlices`` helpers): each variable's
gradient, parameters before and after the update are reduced to a few sums
(:func:`gradient_sums`, :func:`parameter_sums`, :func:`slice_sums`; several
small variables at once with :func:`group_sums`), and a running sum of the
gradient over the open window (one float32 slot per parameter, like one
optimizer moment) is reduced when the window closes (:func:`running_sum_sums`,
:func:`group_running_sums`). Nothing of size ``P`` leaves the step.

On the host (numpy): the per-step sums of a window and the reduced running
sum give the per-entry variance of the gradient over the window's steps,
averaged over entries, exactly (:func:`window_statistics`):

    mean_i Var_t(g_ti) = (1/(n P)) sum_t |g_t|^2 - (1/P) |g_bar|^2,
    g_bar = (1/n) sum_t g_t,

and from the same sums the gradient noise scale and SNR of McCandlish et al.
2018 ("An Empirical Model of Large-Batch Training", eq. 2.8 and appendix A).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np
from keras import ops

# Per-variable sums of one step, in the order :func:`variable_sums` returns them.
SUM_COLUMNS = (
    "grad_sq",  # sum of g**2
    "grad_abs",  # sum of |g|
    "grad_zero",  # entries with g exactly 0
    "grad_nonfinite",  # NaN/Inf entries of g
    "param_sq",  # sum of w**2 after the update
    "update_sq",  # sum of (w_after - w_before)**2
)
# Per-slice sums of one step, in the order :func:`slice_sums` returns them.
SLICE_COLUMNS = ("grad_sq", "grad_abs")
# Per-variable sums of the running gradient sum at a window's close.
RUNNING_COLUMNS = ("sum_sq", "sum_zero")


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

    @property
    def size(self) -> int:
        """Number of entries in the slice."""
        return int(self.flat_indices.size)


class Layout:
    """The trainable variables, their sizes and the named slices.

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
        self.sizes_array = np.maximum(np.array(self.sizes, dtype=np.float64), 1.0)
        self.slices = [self._slice(n, spec) for n, spec in (slices or {}).items()]
        self.slice_sizes = np.array(
            [float(max(s.size, 1)) for s in self.slices], np.float64
        )

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
        return SliceSpec(name, path, start, stop, index, flat.astype(np.int64))

    def slices_of(self, var_index: int) -> list[tuple[int, SliceSpec]]:
        """The ``(position, slice)`` pairs of the slices on one variable."""
        return [(i, s) for i, s in enumerate(self.slices) if s.var_index == var_index]


# -- in the step (keras.ops) ------------------------------------------------------
def _f32(x):
    return ops.cast(x, "float32")


def square_sum(x):
    """``Σx²`` of a float32 tensor as one kernel, with no temporary of its size.

    ``keras.ops`` would square, then sum: two passes and a temporary as large
    as ``x``; TensorFlow's ``l2_loss`` (``Σx²/2``) is one pass.
    """
    import tensorflow as tf

    return 2.0 * tf.nn.l2_loss(x)


def nonzero_count(values):
    """Entries of ``values`` other than 0 (NaN counts), a float32 scalar.

    Counted in int32 (exact up to 2**31 entries; int64 would double the
    temporary's size).
    """
    return _f32(ops.sum(ops.cast(ops.not_equal(values, 0), "int32")))


def gradient_sums(values, size: int) -> list:
    """Sums of one gradient's entries: ``Σg²``, ``Σ|g|`` and the count of zeros.

    Args:
        values: The gradient's entries that may be non-zero (the dense
            gradient, or a sparse gradient's summed rows), float32.
        size: Entries of the whole variable (the rest are zero).

    Returns:
        Three float32 scalars, the first three of :data:`SUM_COLUMNS`.
    """
    return [square_sum(values), ops.sum(ops.abs(values)), size - nonzero_count(values)]


def nonfinite_counts(values: Sequence, grad_sq: Sequence):
    """NaN/Inf entries per variable, ``[V]`` float32.

    Counted only when the step's ``Σg²`` is not finite: a NaN/Inf entry makes
    it so, and one branch per step costs less than a count per variable.

    Args:
        values: Each variable's gradient entries, or ``None`` for none.
        grad_sq: Each variable's ``Σg²`` (from :func:`gradient_sums`).

    Returns:
        The counts, zeros on a finite step.
    """

    def count():
        return ops.stack(
            [
                ops.zeros((), "float32")
                if v is None
                else ops.sum(_f32(ops.logical_not(ops.isfinite(v))))
                for v in values
            ]
        )

    return ops.cond(
        ops.isfinite(ops.sum(ops.stack(grad_sq))),
        lambda: ops.zeros((len(values),), "float32"),
        count,
    )


def parameter_sums(before, after) -> list:
    """``Σw²`` after the update and ``Σ(Δw)²`` of one variable (float32 scalars)."""
    after = _f32(after)
    return [square_sum(after), square_sum(after - _f32(before))]


def group_sums(values, before, after, segment_ids, num_segments: int):
    """Per-variable sums of several small variables, one op per quantity.

    Per step, each reduction op has a fixed cost (a few µs on a CPU) that
    dwarfs the arithmetic of a small variable; here the variables' entries
    are concatenated and each quantity is one segment sum over all of them.

    Args:
        values: The variables' gradients, flattened and concatenated,
            float32 ``[N]`` (zeros where a variable has no gradient).
        before: Their parameters before the update, likewise ``[N]``.
        after: Their parameters after the update, likewise ``[N]``.
        segment_ids: The variable (``0 .. num_segments - 1``) of each entry,
            int32 ``[N]``.
        num_segments: Number of variables ``n``.

    Returns:
        ``[5, n]`` float32: per variable ``Σg²``, ``Σ|g|``, entries with
        ``g`` exactly 0, ``Σw²`` after and ``Σ(Δw)²``.
    """
    after = _f32(after)
    delta = after - _f32(before)
    columns = [
        ops.square(values),
        ops.abs(values),
        _f32(ops.equal(values, 0)),
        ops.square(after),
        ops.square(delta),
    ]
    return ops.stack(
        [ops.segment_sum(c, segment_ids, num_segments=num_segments) for c in columns]
    )


def group_nonfinite_counts(values, segment_ids, num_segments: int):
    """NaN/Inf entries per variable of a group (see :func:`group_sums`), ``[n]``."""
    bad = _f32(ops.logical_not(ops.isfinite(values)))
    return ops.segment_sum(bad, segment_ids, num_segments=num_segments)


def group_running_sums(running, segment_ids, num_segments: int):
    """``|S|²`` and the count of exact zeros per variable of a group's running sum.

    Args:
        running: The group's running gradient sum, flattened and
            concatenated ``[N]``.
        segment_ids: The variable of each entry, int32 ``[N]``.
        num_segments: Number of variables ``n``.

    Returns:
        ``(sum_sq [n], zero [n])``, float32.
    """
    sq = ops.segment_sum(ops.square(running), segment_ids, num_segments=num_segments)
    zero = ops.segment_sum(
        _f32(ops.equal(running, 0)), segment_ids, num_segments=num_segments
    )
    return sq, zero


def slice_sums(values, spec: SliceSpec) -> list:
    """``Σg²`` and ``Σ|g|`` over a slice's entries (a range on the last axis).

    Args:
        values: The variable's gradient entries (dense, or a sparse gradient's
            summed rows: the slice is on the last axis either way).
        spec: The slice.

    Returns:
        Two float32 scalars (:data:`SLICE_COLUMNS`).
    """
    part = values[..., spec.start : spec.stop]
    return [ops.sum(ops.square(part)), ops.sum(ops.abs(part))]


def running_sum_sums(running, size: int, specs: Sequence[SliceSpec]) -> list:
    """``|S|²`` and the count of exact zeros of a running sum, and ``|S|²`` per slice.

    Args:
        running: The variable's running gradient sum over the window.
        size: The variable's entries.
        specs: The slices on this variable.

    Returns:
        ``[sum_sq, sum_zero, *slice_sum_sq]``, float32 scalars.
    """
    out = [square_sum(running), float(size) - nonzero_count(running)]
    out += [ops.sum(ops.square(running[..., s.start : s.stop])) for s in specs]
    return out


def unique_rows(grad):
    """A ``tf.IndexedSlices`` gradient with repeated rows summed.

    An embedding's gradient lists a row once per use in the batch; the norms
    are of the summed rows. Costs O(rows used), not O(the table).

    Args:
        grad: A ``tf.IndexedSlices``.

    Returns:
        ``(values [u, ...], indices [u])``, the distinct rows and their sums.
    """
    import tensorflow as tf

    indices, position = tf.unique(grad.indices)
    values = tf.math.unsorted_segment_sum(grad.values, position, tf.shape(indices)[0])
    return values, indices


def is_sparse(grad) -> bool:
    """Whether a gradient arrived as a ``tf.IndexedSlices`` (rows of a table)."""
    return type(grad).__name__ == "IndexedSlices"


def as_float32(x):
    """``x`` cast to float32 (``keras.ops``)."""
    return _f32(x)


# -- on the host (numpy) ----------------------------------------------------------
@dataclasses.dataclass
class WindowSums:
    """Per-step sums accumulated over the steps of the open window (float64).

    Attributes:
        count: Steps in the window (skipped overflow steps excluded).
        grad_sq: Per variable, ``Σ_t Σ g²`` ``[V]``.
        grad_abs: Per variable, ``Σ_t Σ |g|`` ``[V]``.
        slice_sq: Per slice, ``Σ_t Σ g²`` ``[S]``.
        slice_abs: Per slice, ``Σ_t Σ |g|`` ``[S]``.
        batch: Examples over the window's steps.
        absent: Per variable, whether some step of the window did not update
            it ``[V]`` (bool); such a variable has no window statistics.
    """

    count: float
    grad_sq: np.ndarray
    grad_abs: np.ndarray
    slice_sq: np.ndarray
    slice_abs: np.ndarray
    batch: float
    absent: np.ndarray | None = None

    @classmethod
    def empty(cls, layout: Layout) -> WindowSums:
        """A window with no step yet."""
        v, s = layout.num_variables, len(layout.slices)
        return cls(0.0, np.zeros(v), np.zeros(v), np.zeros(s), np.zeros(s), 0.0)

    def add(self, grad_sq, grad_abs, slice_sq, slice_abs, batch, absent=None) -> None:
        """Adds one step's sums; ``absent`` marks the variables it did not update."""
        if absent is not None:
            seen = self.absent if self.absent is not None else False
            self.absent = np.logical_or(seen, absent)
        self.count += 1.0
        self.grad_sq += grad_sq
        self.grad_abs += grad_abs
        self.slice_sq += slice_sq
        self.slice_abs += slice_abs
        self.batch += float(batch)


def safe_ratio(num, den) -> np.ndarray:
    """``num / den`` with 0 where ``den`` is 0 (a zero-size or all-zero variable)."""
    num, den = np.broadcast_arrays(np.asarray(num, np.float64), den)
    out = np.zeros(num.shape)
    np.divide(num, den, out=out, where=den != 0)
    return out


def window_statistics(
    layout: Layout,
    sums: WindowSums,
    running_sq: np.ndarray,
    running_zero: np.ndarray,
    slice_running_sq: np.ndarray,
) -> dict[str, np.ndarray]:
    """The statistics of one closed window, from its sums.

    Args:
        layout: The variables' layout.
        sums: The per-step sums over the window's ``n`` steps.
        running_sq: Per variable, ``|S|²`` of the running gradient sum
            ``S = Σ_t g_t`` ``[V]``.
        running_zero: Per variable, entries of ``S`` exactly 0 ``[V]``.
        slice_running_sq: Per slice, ``|S|²`` over the slice ``[S]``.

    Returns:
        Per variable (``[V]``): ``layer_grad_variance`` (per-entry variance over
        the window's steps, averaged over the variable's entries),
        ``layer_grad_mean_abs``, ``layer_zero_fraction`` (share of entries
        whose gradient was exactly 0 at every step). Whole model (scalars):
        ``grad_variance``, ``grad_mean_abs``, ``noise_scale`` (B_simple of
        McCandlish et al. 2018, ``B tr(Σ) / |G|²`` with ``B`` the mean examples
        per step, ``tr(Σ)`` the summed per-entry variance and ``G`` the window's
        mean gradient), ``grad_snr`` (``|G|² / tr(Σ)``), ``window_steps``. Per
        slice (``[S]``): ``slice_grad_variance``, ``slice_grad_mean_abs``.
    """
    n = max(sums.count, 1.0)
    # Σ_entries Var_t = (1/n) Σ_t |g_t|² - |S/n|², clamped against rounding.
    trace = np.maximum(sums.grad_sq / n - np.asarray(running_sq) / n**2, 0.0)
    slice_trace = np.maximum(
        sums.slice_sq / n - np.asarray(slice_running_sq) / n**2, 0.0
    )
    total = float(max(layout.size, 1))
    # A variable absent at a step of the window (not updated then) has no
    # window statistics: its running sum of zeros is no "always zero" gradient.
    # A NaN gradient of an updated variable makes the whole-model figures NaN.
    absent = (
        np.zeros(layout.num_variables, bool) if sums.absent is None else sums.absent
    )
    tr_sigma = float(np.sum(trace[~absent]))
    g_sq = float(np.sum(running_sq)) / n**2
    return {
        "layer_grad_variance": trace / layout.sizes_array,
        "layer_grad_mean_abs": sums.grad_abs / (n * layout.sizes_array),
        "layer_zero_fraction": np.where(
            absent, np.nan, np.asarray(running_zero) / layout.sizes_array
        ),
        "grad_variance": np.float64(tr_sigma / total),
        "grad_mean_abs": np.float64(np.sum(sums.grad_abs[~absent]) / (n * total)),
        "noise_scale": safe_ratio(sums.batch / n * tr_sigma, g_sq),
        "grad_snr": safe_ratio(g_sq, tr_sigma),
        "window_steps": np.float64(sums.count),
        "slice_grad_variance": slice_trace / np.maximum(layout.slice_sizes, 1.0),
        "slice_grad_mean_abs": sums.slice_abs
        / (n * np.maximum(layout.slice_sizes, 1.0)),
    }

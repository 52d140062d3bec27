"""Gradient statistics reduced inside the train step.

In the step (``keras.ops``, except TensorFlow's one-pass ``l2_loss`` for the
sums of squares and the ``tf.IndexedSlices`` helpers): each variable's
gradient, parameters before and after the update are reduced to a few sums
(:func:`variable_sums` and :func:`finish_variable_sums`, :func:`slice_sums`;
several small variables at once with :func:`group_sums`), and a running sum of
the gradient over the open window (one float32 slot per parameter, like one
optimizer moment) is reduced when the window closes (:func:`running_sum_sums`,
:func:`group_running_sums`). Nothing of size ``P`` leaves the step; the host
finishes the window's figures from these sums (:mod:`tb_gradplugin.window_stats`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import NamedTuple

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


# Below this many entries a float32 count of 0/1 values is exact (every partial
# sum is an integer float32 holds), so it needs no int32 sum and cast back.
EXACT_FLOAT_COUNT = 2**24


def nonzero_count(values):
    """Entries of ``values`` other than 0 (NaN counts), a float32 scalar.

    Counted in float32 when the size is static and below
    :data:`EXACT_FLOAT_COUNT` (exact, one op fewer), else in int32 (exact up
    to 2**31 entries; int64 would double the temporary's size).
    """
    size = values.shape.num_elements()
    if size is not None and size < EXACT_FLOAT_COUNT:
        return ops.sum(_f32(ops.not_equal(values, 0)))
    return _f32(ops.sum(ops.cast(ops.not_equal(values, 0), "int32")))


def nonfinite_count(values):
    """NaN/Inf entries of one gradient, a float32 scalar.

    A variable reduced alone over :data:`COUNTED_MAX_SIZE` entries (or
    sparse) has them counted only when its ``Σg²`` is not finite (a NaN/Inf
    entry makes it so): one branch per step costs less than a pass over it.
    """
    return ops.sum(_f32(ops.logical_not(ops.isfinite(values))))


# Up to this many entries a variable reduced alone has its zeros and NaN/Inf
# entries counted exactly at every step (a few passes over it cost less than
# a branch); a larger one has them counted in a branch taken only on a step
# whose Σg² is not finite.
COUNTED_MAX_SIZE = 2**16


class RawSums(NamedTuple):
    """One variable's sums before finishing: ``raw * scale + offset``.

    The factor 2 of ``l2_loss`` and the counts' complements are applied with
    one multiply and one add for all the variables reduced alone
    (:func:`finish_variable_sums`), not a few scalar ops per variable.

    Attributes:
        raw: Six float32 scalars, one per :data:`SUM_COLUMNS`.
        scale: Their six factors.
        offset: Their six offsets.
        counted: Whether the zero and NaN/Inf counts are exact at every step;
            if not, they are valid on a step whose ``Σg²`` is finite.
    """

    raw: list
    scale: tuple
    offset: tuple
    counted: bool


def abs_sum_and_half_nonzero(values, size: int) -> list:
    """``Σ|g|`` and half the entries of ``values`` other than 0, when all finite.

    The count is ``Σ sign(|g|)²/2`` in one ``l2_loss`` pass, exact below
    :data:`EXACT_FLOAT_COUNT` entries (every partial sum is a multiple of 1/2
    that float32 holds); measured on a CPU it costs a quarter of comparing,
    casting and summing. Past that bound each row of a matrix-like gradient
    is summed apart (exact while a row has fewer entries) and the rows in
    float64. The signs are taken of the magnitudes after their sum: the sign
    op then writes into the magnitudes' buffer (TensorFlow forwards an input
    that no other op still reads), one temporary of the gradient's size fewer,
    ~70 ms a step at 25 M entries here (a fresh 100 MB buffer costs its page
    faults). A NaN entry makes the count wrong: the step then takes the exact
    count instead (its ``Σg²`` is NaN too).

    Args:
        values: The gradient's entries that may be non-zero, float32.
        size: A bound on their number (the variable's entries).

    Returns:
        ``[Σ|g|, non-zero entries / 2]``, two float32 scalars.
    """
    import tensorflow as tf

    magnitudes = ops.abs(values)
    abs_sum = ops.sum(magnitudes)
    with tf.control_dependencies([abs_sum]):
        signs = tf.sign(magnitudes)
    if size < EXACT_FLOAT_COUNT:
        return [abs_sum, tf.nn.l2_loss(signs)]
    shape = values.shape
    if (
        shape.rank
        and shape.rank >= 2
        and shape[0]
        and size // shape[0] < EXACT_FLOAT_COUNT
    ):
        rows = ops.sum(ops.reshape(signs, [shape[0], -1]), axis=1)
        return [abs_sum, _f32(0.5 * ops.sum(ops.cast(rows, "float64")))]
    return [abs_sum, 0.5 * nonzero_count(values)]


def _param_sums(before, after, increment):
    """``[Σw²/2, Σ(Δw)²/2]`` after the update, one ``l2_loss`` pass each."""
    import tensorflow as tf

    after = _f32(after)
    if increment is None:
        increment = after - _f32(before)
    return [tf.nn.l2_loss(after), tf.nn.l2_loss(increment)]


def fused_variable_sums(grad_sums, before, after, increment=None) -> RawSums:
    """The sums of a sparse-gradient variable whose gradient sums took one pass.

    Args:
        grad_sums: float32 ``[4+]``: ``Σg²``, ``Σ|g|``, entries exactly 0,
            NaN/Inf entries first (``fused_sums.FusedSums.step`` of a sparse
            gradient).
        before: The parameters before the update.
        after: The parameters after the update.
        increment: The optimizer's increment when it is the whole update, as
            in :func:`variable_sums`. Defaults to ``None``.

    Returns:
        The sums to be finished, the counts exact at every step.
    """
    raw = [grad_sums[k] for k in range(4)] + _param_sums(before, after, increment)
    return RawSums(raw, (1, 1, 1, 1, 2, 2), (0,) * 6, True)


def variable_sums(values, before, after, size: int, increment=None) -> RawSums:
    """The sums of one variable reduced alone, to be finished.

    Each sum of squares is one pass (``l2_loss``, half the sum). A dense
    gradient of up to :data:`COUNTED_MAX_SIZE` entries has its zeros and NaN/Inf
    entries counted exactly; another has its zeros counted in one pass valid
    when every entry is finite (:func:`abs_sum_and_half_nonzero`) and no NaN/Inf
    count (0): the step recounts both on a step whose ``Σg²`` is not finite.

    Args:
        values: The gradient's entries that may be non-zero (the dense
            gradient, or a sparse gradient's summed rows), float32; ``None``
            when the update gave the variable no gradient (NaN sums: nothing
            was seen, and no NaN/Inf entry either).
        before: The parameters before the update.
        after: The parameters after the update.
        size: The variable's entries.
        increment: The increment the optimizer added to the variable, when it
            is the whole update (``optimizer_increments.py``): ``Σ(Δw)²`` is
            then its sum of squares, one pass and no difference. Defaults to
            ``None``: the parameters after the update minus those before.
    """
    import tensorflow as tf

    params = _param_sums(before, after, increment)
    zero = ops.convert_to_tensor(0.0)
    if values is None:
        nan = ops.convert_to_tensor(float("nan"))
        raw = [nan, nan, nan, zero, *params]
        return RawSums(raw, (2, 1, 1, 1, 2, 2), (0,) * 6, True)
    if size <= COUNTED_MAX_SIZE and values.shape.num_elements() == size:
        zeros = ops.sum(_f32(ops.equal(values, 0)))
        finite = ops.sum(_f32(ops.isfinite(values)))
        grads = [tf.nn.l2_loss(values), ops.sum(ops.abs(values)), zeros]
        raw = [*grads, finite, *params]
        return RawSums(raw, (2, 1, 1, -1, 2, 2), (0, 0, 0, size, 0, 0), True)
    grads = [tf.nn.l2_loss(values), *abs_sum_and_half_nonzero(values, size)]
    raw = [*grads, zero, *params]
    return RawSums(raw, (2, 1, -2, 1, 2, 2), (0, 0, size, 0, 0, 0), False)


def finish_variable_sums(sums: Sequence[RawSums]):
    """:func:`variable_sums` of several variables finished, in two ops.

    Args:
        sums: Their raw sums.

    Returns:
        ``[6 n]`` float32, variable-major: :data:`SUM_COLUMNS` per variable
        (doubling a float32 is exact, and so are the counts' complements
        below :data:`EXACT_FLOAT_COUNT` entries).
    """
    import tensorflow as tf

    raw = tf.stack([x for s in sums for x in s.raw])
    scale = np.array([x for s in sums for x in s.scale], np.float32)
    offset = np.array([x for s in sums for x in s.offset], np.float32)
    return raw * scale + offset


def group_sums(values, before, after, sizes: Sequence[int], xla: bool = False):
    """Per-variable sums of several small variables, one segment sum for all.

    Per step, each op has a fixed cost (a few µs on a CPU) that dwarfs the
    arithmetic of a small variable; here the variables' entries are
    concatenated, the six quantities of every entry stacked, and one sorted
    segment sum (cheaper per entry than an unsorted one) reduces them all.

    Args:
        values: The variables' gradients, flattened and concatenated,
            float32 ``[N]`` (zeros where a variable has no gradient).
        before: Their parameters before the update, likewise ``[N]``.
        after: Their parameters after the update, likewise ``[N]``.
        sizes: The variables' entries, in concatenation order (``n`` of them).
        xla: Whether the step is XLA-compiled (which has no sorted segment
            sum; it fuses the unsorted one). Defaults to ``False``.

    Returns:
        ``[6 n]`` float32, quantity-major: per variable each of
        :data:`SUM_COLUMNS` (``Σg²``, ``Σ|g|``, entries with ``g`` exactly 0,
        NaN/Inf entries, ``Σw²`` after, ``Σ(Δw)²``).
    """
    after = _f32(after)
    columns = ops.concatenate(
        [
            ops.square(values),
            ops.abs(values),
            _f32(ops.equal(values, 0)),
            _f32(ops.logical_not(ops.isfinite(values))),
            ops.square(after),
            ops.square(after - _f32(before)),
        ],
        0,
    )
    n = len(sizes)
    ids = np.repeat(np.arange(6 * n, dtype=np.int32), np.tile(sizes, 6))
    if min(sizes) > 0 and not xla:
        # Every segment has entries: the sorted sum's output has all 6 n.
        return ops.segment_sum(columns, ids, sorted=True)
    return ops.segment_sum(columns, ids, num_segments=6 * n)


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

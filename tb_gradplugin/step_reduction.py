"""In the step: one update's gradients and parameters reduced to a row's sums.

Each optimizer update inside the compiled train step hands its gradients and
the parameters before and after it to :class:`StepReduction`, which reduces
them to a few sums per variable and per slice (``stats.py``) and adds the
gradients to a running sum (one float32 slot per parameter), from which the
window variance is computed exactly when a window closes. Nothing of the
model's size leaves the step.

On a CPU Keras runs the step without XLA, one kernel per op, and each op
costs a few µs whatever its size: so small variables (under
:data:`GROUP_MAX_SIZE` entries: biases, normalisation scales) are reduced
together, their entries concatenated, the six quantities of every entry
stacked and one sorted segment sum for all, with one running-sum variable for
all of them; a large variable has its own reductions, one pass each, where
the op's fixed cost is negligible, finished together with the other large
variables' in two ops. Up to :data:`stats.COUNTED_MAX_SIZE` entries its zeros
and NaN/Inf entries are counted every step; a larger one's, in one branch for
the step taken only when their ``Σg²`` is not finite. From
:data:`fused_sums.FUSED_MIN_SIZE` entries, on a CPU, a variable's six sums and
its running sum come from one compiled pass over its arrays instead
(``fused_sums.py``), its running sum a host array.

Under a distribution strategy of several replicas every replica holds the
same global gradient: each reduces its share of the variables (the small
ones on the first replica, the large ones spread by size) and adds them to
its own copy of their running sums, and one all-reduce of the small row sums
the shares (a share's other entries are zeros, so the sum is exact).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import tensorflow as tf

from tb_gradplugin import applied_gradients, fused_sums, stats

# Entries below which a variable is reduced in the group. Measured on a
# 2-core CPU, the 784-20-20-10 MLP's compiled step alone
# (benchmarks/step_ops.py): bounds of 1,024 and 4,096 cost the same, 128 (its
# 200- and 400-entry kernels alone, a dozen ops each) ~2 % more, 16,384 (its
# 15,680-entry kernel in the group, six stacked quantities) ~12 % more.
GROUP_MAX_SIZE = 4096
_NAN = float("nan")


class _Group(NamedTuple):
    """One update's small variables, reduced together."""

    members: list[int]  # variable indices, in concatenation order
    sums: Any  # [6 n], quantity-major: SUM_COLUMNS per member
    values: Any  # [N] float32 gradients (zeros where absent)
    absent: frozenset  # members the update gave no gradient


# A variable another replica reduces: zeros in this replica's share of the row.
_OTHER_REPLICA = object()


class _Large(NamedTuple):
    """One large variable's sums in an update."""

    raw: stats.RawSums  # its sums, to be finished
    values: Any  # its float32 gradient entries, or None


class StepReduction:
    """The per-variable sums of a step and the running gradient sums.

    Args:
        layout: The variables' layout (paths, sizes, slices).
        variables: The variables, in the layout's order.
        strategy: The model's distribution strategy (the running sums are
            created in its scope).
        jit: Whether the step is XLA-compiled (sparse gradients are then
            densified: their distinct rows have no static shape).
        variance_window: Steps per variance window, or ``"epoch"``.
    """

    def __init__(
        self,
        layout: stats.Layout,
        variables: Sequence[Any],
        strategy: tf.distribute.Strategy,
        jit: bool,
        variance_window: int | str,
    ):
        self.layout = layout
        self.variables = list(variables)
        self.jit = jit
        self.variance_window = variance_window
        self.sparse_paths: set[str] = set()
        sizes = layout.sizes
        self.small = [i for i, n in enumerate(sizes) if n < GROUP_MAX_SIZE]
        self.large = [i for i, n in enumerate(sizes) if n >= GROUP_MAX_SIZE]
        # Where each small variable's entries sit in the group's running sum.
        offsets = np.cumsum([0] + [sizes[i] for i in self.small])
        self.group_offsets = {
            i: int(o) for i, o in zip(self.small, offsets[:-1], strict=True)
        }
        # Large variables on a CPU: gradient sums and running sum in one
        # compiled pass, the running sum a host array (fused_sums.py).
        self.fused = fused_sums.FusedSums(
            {
                i: layout.shapes[i]
                for i in self.large
                if fused_sums.eligible(self.variables[i], sizes[i], strategy, jit)
            }
        )
        # Under several replicas: the replica that reduces each variable.
        self.owner = (
            _owners(sizes, self.small, self.large, strategy.num_replicas_in_sync)
            if strategy.num_replicas_in_sync > 1
            else None
        )
        with strategy.scope():
            # The gradient summed over the open variance window: one float32
            # slot per parameter, like one optimizer moment.
            self.running = {
                i: _running_variable(layout.shapes[i])
                for i in self.large
                if i not in self.fused.running
            }
            self.group_running = _running_variable([sum(sizes[i] for i in self.small)])

    def collect(
        self,
        collected,
        by_index,
        before,
        after,
        scale,
        skipped,
        conditional,
        increments=None,
    ):
        """Reduces the gradients of one update to sums; adds to the running sums.

        Args:
            collected: ``{variable index: _Group or _Large}`` of the step so
                far, added to here.
            by_index: ``{variable index: gradient}`` of the update.
            before: ``{variable index: parameters before the update}``.
            after: ``{variable index: parameters after the update}``.
            scale: The loss scale to divide the gradients by, or ``None``.
            skipped: Scalar bool tensor: the update was not applied.
            conditional: Whether ``skipped`` can be true.
            increments: ``{variable index: the increment the optimizer
                added}`` of the large variables whose whole update it is
                (``optimizer_increments.py``): their update norm is read from
                it. Defaults to ``None``: none.
        """
        layout = self.layout
        inv = None if scale is None else 1.0 / scale
        replica = self._replica_id()
        if replica is not None:
            # Another replica reduces these: zeros in this replica's share.
            theirs = [i for i in before if self.owner[i] != replica]
            collected.update(dict.fromkeys(theirs, _OTHER_REPLICA))
            before = {i: w for i, w in before.items() if self.owner[i] == replica}
        small = set(self.small)
        members = [i for i in before if i in small]
        adds, fused = [], []
        for i in (i for i in before if i not in small):
            g = by_index.get(i)
            values = indices = None
            if g is not None:
                if stats.is_sparse(g):
                    self.sparse_paths.add(layout.paths[i])
                    # Under XLA the distinct rows have no static shape: densify.
                    if not self.jit and len(layout.shapes[i]) > 1:
                        g, indices = stats.unique_rows(g)
                values = stats.as_float32(tf.convert_to_tensor(g))
                if inv is not None:
                    values = values * inv
                if i in self.fused.running:
                    fused.append(
                        self._fused_update(
                            i, values, indices, before, after, increments
                        )
                    )
                    continue
                adds.append((self.running[i], values, indices))
            # Updated without a gradient: nothing was seen, NaN sums.
            raw = stats.variable_sums(
                values,
                before[i],
                after[i],
                layout.sizes[i],
                (increments or {}).get(i),
            )
            collected[i] = _Large(raw, values)
        if fused:
            add = tf.logical_not(skipped) if conditional else tf.constant(True)
            sums = self.fused.step(fused, add)
            for k, u in enumerate(fused):
                part = sums[6 * k : 6 * k + 6]
                if u.rows is None:
                    raw = stats.RawSums(
                        [part[q] for q in range(6)], (1,) * 6, (0,) * 6, True
                    )
                else:
                    # A sparse gradient: the parameter sums are TensorFlow's.
                    raw = stats.fused_variable_sums(
                        part,
                        before[u.index],
                        after[u.index],
                        (increments or {}).get(u.index),
                    )
                collected[u.index] = _Large(raw, u.values)
        if members:
            group = self._group(members, by_index, before, after, inv)
            for i in members:
                collected[i] = group
            present = [i for i in members if by_index.get(i) is not None]
            if present:
                adds.append(self._group_add(members, present, group.values))
        if not adds:
            return

        def add():
            for running, values, indices in adds:
                if indices is None:
                    running.assign_add(values)
                else:
                    running.scatter_add(tf.IndexedSlices(values, indices))
            return tf.constant(True)

        if conditional:
            # A skipped step (an overflow, a batch only accumulated) is not
            # in the window.
            tf.cond(skipped, lambda: tf.constant(False), add)
        else:
            add()

    @staticmethod
    def _fused_update(i, values, rows, before, after, increments):
        """Variable ``i``'s update for the fused pass (``fused_sums.py``)."""
        if rows is not None:
            return fused_sums.Update(i, values, rows)
        increment = (increments or {}).get(i)
        other = before[i] if increment is None else increment
        return fused_sums.Update(
            i, values, None, after[i], other, increment is not None
        )

    def _group(self, members, by_index, before, after, inv) -> _Group:
        """The small variables of one update, reduced together."""
        layout = self.layout
        sizes = [layout.sizes[i] for i in members]
        flat = []
        for i, size in zip(members, sizes, strict=True):
            g = by_index.get(i)
            if g is None:
                flat.append(tf.zeros([size], tf.float32))
                continue
            if stats.is_sparse(g):
                # A small table: its dense gradient costs no more than its rows.
                self.sparse_paths.add(layout.paths[i])
            flat.append(tf.reshape(stats.as_float32(tf.convert_to_tensor(g)), [-1]))
        values = tf.concat(flat, 0)
        if inv is not None:
            values = values * inv
        sums = stats.group_sums(
            values,
            _flat_float32([before[i] for i in members]),
            _flat_float32([after[i] for i in members]),
            sizes,
            self.jit,
        )
        absent = [k for k, i in enumerate(members) if by_index.get(i) is None]
        if absent:
            # No gradient, no gradient sums: NaN, never a zero not seen
            # (its NaN/Inf count stays 0: none was seen either).
            mask = np.zeros([6, len(members)], bool)
            mask[:3, absent] = True
            sums = tf.where(tf.constant(mask.reshape(-1)), tf.constant(_NAN), sums)
        absent = frozenset(members[k] for k in absent)
        return _Group(members, sums, values, absent)

    def _group_add(self, members, present, values):
        """What adds the group's gradients to its running sum."""
        if members == self.small and present == members:
            return self.group_running, values, None
        # Some small variables only (several optimizers, or absent ones):
        # add at their positions in the group's running sum.
        layout, where, keep, start = self.layout, [], [], 0
        for i in members:
            size = layout.sizes[i]
            if i in present:
                offset = self.group_offsets[i]
                where.append(np.arange(offset, offset + size))
                keep.append(np.arange(start, start + size))
            start += size
        keep = np.concatenate(keep)
        if keep.size != start:
            values = tf.gather(values, keep)
        return self.group_running, values, tf.constant(np.concatenate(where))

    def step_parts(self, collected):
        """The step's ``[V]`` sum vectors and ``[S]`` slice vectors, in row order.

        Args:
            collected: What :meth:`collect` gathered over the step's updates.

        Returns:
            The vectors of :data:`stats.SUM_COLUMNS` (stacked into one
            ``[6 V]`` vector, whose :meth:`nonfinite` is the step's NaN/Inf
            count) and of :data:`stats.SLICE_COLUMNS`, NaN for a variable no
            optimizer updated at this step (under several replicas, this
            replica's share: :meth:`combine`).
        """
        layout = self.layout
        v = layout.num_variables
        groups, large = [], []
        for i in range(v):
            item = collected.get(i)
            if isinstance(item, _Group) and not any(item is g for g in groups):
                groups.append(item)
            elif isinstance(item, _Large):
                large.append(i)
        # One flat vector of every piece, then one gather puts each figure at
        # its place in the row: where[(column, variable)] is its position.
        pieces, where, start = [], {}, 0
        for group in groups:
            n = len(group.members)
            pieces.append(group.sums)
            for q in range(6):
                where.update(
                    ((q, i), start + q * n + k) for k, i in enumerate(group.members)
                )
            start += 6 * n
        if large:
            pieces.append(self._large_sums(large, collected))
            for k, i in enumerate(large):
                where.update(((q, i), start + 6 * k + q) for q in range(6))
            start += 6 * len(large)
        # A variable no update reached: NaN sums (nothing was seen), and a
        # NaN/Inf count of 0 (none was seen either), at positions start and
        # start + 1 of the flat vector; another replica's: 0 (position start + 1).
        for i in range(v):
            if collected.get(i) is _OTHER_REPLICA:
                where.update(((q, i), start + 1) for q in range(6))
        order = [
            where.get((q, i), start + (q == 3)) for q in range(6) for i in range(v)
        ]
        if order == list(range(6 * v)) and len(pieces) == 1:
            vector = pieces[0]
        else:
            pieces.append(tf.constant([_NAN, 0.0]))
            vector = tf.gather(tf.concat(pieces, 0), order)
        slice_columns = [[None] * len(layout.slices) for _ in stats.SLICE_COLUMNS]
        for pos, spec in enumerate(layout.slices):
            if collected.get(spec.var_index) is _OTHER_REPLICA:
                part = [tf.constant(0.0)] * 2
            elif (values := self._values_of(spec.var_index, collected)) is None:
                part = [tf.constant(_NAN)] * 2
            else:
                part = stats.slice_sums(values, spec)
            for column_values, value in zip(slice_columns, part, strict=True):
                column_values[pos] = value
        return [vector] + [tf.stack(c) for c in slice_columns if c]

    def nonfinite(self, vector):
        """The step's NaN/Inf count from its ``[6 V]`` sum vector."""
        v = self.layout.num_variables
        return tf.reduce_sum(vector[3 * v : 4 * v])

    def _replica_id(self) -> int | None:
        """In a replica context of several replicas, this replica's number.

        ``None`` elsewhere, and where the number is not known when the step
        is traced (then every replica reduces every variable).
        """
        if self.owner is None:
            return None
        ctx = applied_gradients.replica_context()
        if ctx is None:
            return None
        replica = tf.get_static_value(ctx.replica_id_in_sync_group)
        return None if replica is None else int(replica)

    def combine(self, parts, running, batch_size):
        """The replicas' shares of the row summed, in one all-reduce.

        Args:
            parts: This replica's :meth:`step_parts` vectors.
            running: This replica's :meth:`window_close` vector.
            batch_size: This replica's examples, float32 scalar.

        Returns:
            ``(parts, running, batch_size)`` of the whole step: as given on
            one replica, else each summed over the replicas.
        """
        ctx = applied_gradients.replica_context()
        if ctx is None:
            return parts, running, batch_size
        if self._replica_id() is None:
            # Every replica reduced every variable: only the examples add up.
            total = ctx.all_reduce(tf.distribute.ReduceOp.SUM, batch_size)
            return parts, running, total
        pieces = [*parts, running, tf.reshape(batch_size, [1])]
        total = ctx.all_reduce(tf.distribute.ReduceOp.SUM, tf.concat(pieces, 0))
        out = tf.split(total, [int(p.shape[0]) for p in pieces])
        return out[:-2], out[-2], out[-1][0]

    def _large_sums(self, large, collected):
        """The large variables' sums, ``[6 L]`` variable-major.

        A variable whose zeros and NaN/Inf entries are not counted at every
        step (over :data:`stats.COUNTED_MAX_SIZE` entries, or sparse) has them
        counted on a step whose ``Σg²`` is not finite only (NaN/Inf entries
        make it so): one branch for the step.
        """
        finished = stats.finish_variable_sums([collected[i].raw for i in large])
        later = [
            (k, collected[i])
            for k, i in enumerate(large)
            if not collected[i].raw.counted
        ]
        if not later:
            return finished
        n = len(later)

        def finite():
            return finished

        def counted():
            found = [
                self.layout.sizes[large[k]] - stats.nonzero_count(item.values)
                for k, item in later
            ]
            found += [stats.nonfinite_count(item.values) for _, item in later]
            # The finished sums with those counts replaced by the exact ones.
            index = np.arange(6 * len(large))
            for j, (k, _) in enumerate(later):
                index[6 * k + 2] = 6 * len(large) + j
                index[6 * k + 3] = 6 * len(large) + n + j
            return tf.gather(tf.concat([finished, tf.stack(found)], 0), index)

        checked = [item.raw.raw[0] for _, item in later]
        total = tf.add_n(checked) if n > 1 else checked[0]
        return tf.cond(tf.math.is_finite(total), finite, counted)

    def _values_of(self, i, collected):
        """Variable ``i``'s float32 gradient entries in its shape, or ``None``."""
        item = collected.get(i)
        if isinstance(item, _Large) or item is None:
            return None if item is None else item.values
        layout, start = self.layout, 0
        for j in item.members:
            if j == i:
                break
            start += layout.sizes[j]
        if i in item.absent:
            return None
        part = item.values[start : start + layout.sizes[i]]
        return tf.reshape(part, layout.shapes[i] or [1])

    def running_close(self):
        """Reduces the running sums (``stats.RUNNING_COLUMNS``, slices) and resets.

        Under several replicas: in a replica's step, that replica's share
        (zeros for the variables another replica reduces; :meth:`combine`
        sums the shares); outside the step, each variable's sums read from
        the copy of the replica that adds to it.

        Returns:
            ``[sum_sq [V], sum_zero [V], slice_sum_sq [S]]`` concatenated.
        """
        layout = self.layout
        v = layout.num_variables
        replica = self._replica_id()
        zero = tf.constant(0.0)
        sum_sq, sum_zero = [zero] * v, [zero] * v
        slice_sq = [zero] * len(layout.slices)
        reset = []
        if self.small and replica in (None, 0):
            running = self._read_own(self.group_running, 0)
            reset.append(self.group_running)
            sizes = [layout.sizes[i] for i in self.small]
            ids = np.repeat(np.arange(len(self.small)), sizes).astype(np.int32)
            sq, zero_count = stats.group_running_sums(
                running, tf.constant(ids), len(self.small)
            )
            for k, i in enumerate(self.small):
                sum_sq[i], sum_zero[i] = sq[k], zero_count[k]
                specs = layout.slices_of(i)
                if specs:
                    offset = self.group_offsets[i]
                    part = tf.reshape(
                        running[offset : offset + sizes[k]], layout.shapes[i] or [1]
                    )
                    out = stats.running_sum_sums(part, sizes[k], [s for _, s in specs])
                    for (pos, _), value in zip(specs, out[2:], strict=True):
                        slice_sq[pos] = value
        if self.fused.running:
            pairs = {i: layout.slices_of(i) for i in self.fused.indices}
            out = self.fused.close({i: [s for _, s in p] for i, p in pairs.items()})
            start = 0
            for i, p in pairs.items():
                sum_sq[i], sum_zero[i] = out[start], out[start + 1]
                for k, (pos, _) in enumerate(p):
                    slice_sq[pos] = out[start + 2 + k]
                start += 2 + len(p)
        for i, running in self.running.items():
            owner = 0 if self.owner is None else self.owner[i]
            if replica is not None and owner != replica:
                continue
            reset.append(running)
            specs = layout.slices_of(i)
            out = stats.running_sum_sums(
                self._read_own(running, owner),
                layout.sizes[i],
                [s for _, s in specs],
            )
            sum_sq[i], sum_zero[i] = out[0], out[1]
            for (pos, _), value in zip(specs, out[2:], strict=True):
                slice_sq[pos] = value
        vector = tf.stack([*sum_sq, *sum_zero, *slice_sq])
        with tf.control_dependencies([vector]):
            for running in reset:
                running.assign(tf.zeros_like(running))
        return tf.identity(vector)

    def _read_own(self, running, owner):
        """A running sum as its owner replica added to it."""
        if self.owner is None or applied_gradients.replica_context() is not None:
            # One replica, or this replica's own copy in its step.
            return running.read_value()
        return running.values[owner].read_value()

    def window_close(self, skipped, step):
        """In the step: closes a window of ``variance_window`` steps at its end.

        Returns:
            ``(closed, running)``: 1.0 when the window closed at this step,
            and :meth:`running_close`'s vector then (zeros otherwise).
        """
        width = 2 * self.layout.num_variables + len(self.layout.slices)
        if self.variance_window == "epoch":
            return tf.constant(0.0), tf.zeros([width], tf.float32)
        close = tf.logical_and(
            tf.logical_not(skipped),
            tf.equal(step % int(self.variance_window), 0),
        )
        running = tf.cond(
            close, self.running_close, lambda: tf.zeros([width], tf.float32)
        )
        return tf.cast(close, tf.float32), running


def _owners(sizes, small, large, replicas: int) -> dict[int, int]:
    """The replica that reduces each variable, ``{index: replica}``.

    The small variables (one group) go to the first replica, then each large
    one, largest first, to the replica with the fewest entries so far.
    """
    owner = dict.fromkeys(small, 0)
    load = [0] * replicas
    load[0] = sum(sizes[i] for i in small)
    for i in sorted(large, key=lambda i: -sizes[i]):
        r = load.index(min(load))
        owner[i] = r
        load[r] += sizes[i]
    return owner


def _flat_float32(tensors):
    return tf.concat([tf.reshape(stats.as_float32(t), [-1]) for t in tensors], 0)


def _running_variable(shape) -> tf.Variable:
    """A float32 running sum of that shape, each replica adding to its own copy.

    Every replica adds the same global gradient, so the copies stay equal
    without a merge call and a broadcast of the whole sum at every step
    (what ``ONLY_FIRST_REPLICA`` costs under a distribution strategy).
    """
    return tf.Variable(
        tf.zeros(shape, tf.float32),
        trainable=False,
        synchronization=tf.VariableSynchronization.ON_WRITE,
        aggregation=tf.VariableAggregation.NONE,
    )

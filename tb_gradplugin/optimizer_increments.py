"""In the step: the increment an optimizer adds to a variable, read where it adds it.

The update norm ``‖Δw‖`` of a variable is the norm of the parameters after an
update minus those before. Computed that way it costs a difference the size
of the variable and a pass over it; measured on a 2-core CPU with a
25 M-entry kernel and Adam, ~10-15 % of the step (a fresh temporary of 100 MB
and two passes), the largest cost of the statistics at that size.

Keras's optimizers write each update through their own ``assign_add`` /
``assign_sub`` methods (Adam, SGD, RMSprop, Lion, ...: ``update_step`` ends in
``self.assign_sub(variable, increment)``), so the increment is already a
tensor of the step: its sum of squares is one read, no temporary.
:class:`IncrementRecorder` records those calls while an optimizer's ``apply``
is traced, and :meth:`IncrementRecorder.single_increments` keeps a variable's
increment only when it is certainly the whole update: exactly one dense
``assign_add``/``assign_sub`` of the variable's shape in float32, traced in
the step's own graph, and no other op of the ``apply`` writing the variable
(weight decay, a constraint, a conditional update under loss scaling or
gradient accumulation, a scatter). Every other variable keeps the difference.

The norm of the increment is the norm of what the optimizer added; the
parameters stored after it differ from ``before + increment`` by float32
rounding of each entry (relative ~1e-7 of ``|w|``), which is why variables of
other dtypes keep the difference.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import tensorflow as tf

# Ops that read a variable's resource without writing it.
_READS = frozenset(
    {
        "ReadVariableOp",
        "VarIsInitializedOp",
        "VariableShape",
        "ResourceGather",
        "ResourceGatherNd",
    }
)
_INCREMENT_OPS = frozenset({"AssignAddVariableOp", "AssignSubVariableOp"})
_METHODS = ("assign", "assign_add", "assign_sub")


def _keys_of(graph) -> Any:
    """What names a resource tensor of ``graph``, the same for each capture of it.

    A traced function may capture one variable's handle more than once (one
    placeholder per capture): they are named by the captured outer tensor.
    """
    outer = {}
    for external, internal in getattr(graph, "captures", ()):
        outer[(internal.op.name, internal.value_index)] = ("capture", id(external))

    def key(tensor):
        own = (tensor.op.name, tensor.value_index)
        return outer.get(own, own)

    return key


class IncrementRecorder:
    """Records the increments optimizers add to variables while their apply traces.

    Args:
        optimizers: The optimizers whose ``assign``, ``assign_add`` and
            ``assign_sub`` methods to record (a loss-scale optimizer and its
            inner optimizer, for instance).
        variables: ``{id of a keras.Variable or of its tf.Variable: index}``
            of the variables whose increments are wanted.
        shapes: The variables' shapes, by index.

    Example:
        >>> with IncrementRecorder([opt], ids, shapes) as record:  # doctest: +SKIP
        ...     opt.apply(grads, variables)
        >>> record.single_increments(created_ops)  # doctest: +SKIP
    """

    def __init__(
        self,
        optimizers: Iterable[Any],
        variables: Mapping[int, int],
        shapes: Sequence[Sequence[int]],
    ):
        self.optimizers = [o for o in optimizers if o is not None]
        self.variables = dict(variables)
        self.shapes = [tuple(s) for s in shapes]
        self.calls: list[tuple[int, str, list]] = []
        self._saved: list[tuple[Any, str, Any]] = []

    def __enter__(self) -> IncrementRecorder:
        for opt in self.optimizers:
            for name in _METHODS:
                if name not in vars(opt) and hasattr(type(opt), name):
                    self._saved.append((opt, name, getattr(opt, name)))
                    setattr(opt, name, self._recording(name, getattr(opt, name)))
        return self

    def __exit__(self, *exc) -> None:
        for opt, name, _ in self._saved:
            if name in vars(opt):
                delattr(opt, name)
        self._saved = []

    def _recording(self, kind: str, method):
        def record(variable, value):
            index = self.variables.get(id(variable))
            if index is None:  # an optimizer slot, an unmonitored variable
                return method(variable, value)
            graph = tf.compat.v1.get_default_graph()
            start = len(graph.get_operations())
            result = method(variable, value)
            self.calls.append((index, kind, graph.get_operations()[start:]))
            return result

        return record

    def single_increments(self, created: Sequence[Any]) -> dict[int, Any]:
        """The increments that are certainly each variable's whole update.

        Args:
            created: Every op the traced ``apply`` created in the step's graph.

        Returns:
            ``{variable index: float32 increment tensor}``.
        """
        graph = tf.compat.v1.get_default_graph()
        key = _keys_of(graph)
        by_index: dict[int, list] = {}
        for call in self.calls:
            by_index.setdefault(call[0], []).append(call)
        handles: dict[tuple[str, int], int] = {}
        mine: set[str] = set()
        found = {}
        for index, calls in by_index.items():
            if len(calls) != 1:
                continue
            _, kind, ops = calls[0]
            writes = [op for op in ops if op.type in _INCREMENT_OPS]
            if kind == "assign" or len(writes) != 1 or writes[0].graph is not graph:
                continue
            # What the op adds (the value given, read if it was a variable:
            # SGD with momentum adds its momentum slot).
            value = writes[0].inputs[1]
            if value.dtype != tf.float32 or tuple(value.shape) != self.shapes[index]:
                continue
            handles[key(writes[0].inputs[0])] = index
            mine.add(writes[0].name)
            found[index] = value
        # Any other op of the apply that takes the variable's handle and is
        # not a read writes it too (weight decay, a constraint, a branch).
        for op in created:
            if op.name in mine or op.type in _READS:
                continue
            for tensor in op.inputs:
                index = handles.get(key(tensor))
                if index is not None:
                    found.pop(index, None)
        return found

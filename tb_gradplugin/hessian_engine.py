"""The TensorFlow engine of the curvature: Hessian blocks and Hessian-vector products.

For a compiled Keras model, :class:`Engine` compiles the training loss (the
model's own compiled loss, ``training=False``), its gradient norm, the Hessian
of a group of trainable variables (the batched Jacobian of the gradient,
``tf.GradientTape.jacobian`` vectorised with ``pfor``, in chunks that fit a
memory budget) and batches of Hessian-vector products. Both second-order
functions share one tape helper: the gradient is taken while an outer
persistent tape records. Compiled functions are cached per model
(:func:`engine_for`) and retrace only when the probe batch's shapes or the
trainable variables change. :mod:`tb_gradplugin.hessian_spectra` turns the
results into spectra; this is the only curvature module that imports TensorFlow.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import tensorflow as tf

__all__ = ["Engine", "batch_size", "engine_for", "to_tensors"]

_PFOR_BUDGET_BYTES = 2 * 2**30
"""Memory for one vectorised chunk of Hessian rows. Each row of a ``pfor``
Jacobian holds the activations of a forward and two reverse passes over the
probe batch; rows are computed in chunks that fit this budget. A chunk costs a
second ``pfor`` conversion when tracing (measured: 2.0 s against 0.9 s for a
1,090-parameter MLP), so small models get no chunking."""

_UNKNOWN_CHUNK = 256
"""Rows per chunk when the activation size is unknown (subclassed models)."""

_ACTIVATION_COPIES = 3
"""Forward activations, their gradient and its tangent: copies per row."""


class Engine:
    """Compiled loss, gradient, Hessian-block and HVP functions of one model.

    Args:
        model: A compiled Keras model; held by a weak reference.
    """

    def __init__(self, model: Any) -> None:
        self._model_ref = weakref.ref(model)
        self.variables = list(model.trainable_variables)
        self.key = tuple(id(v) for v in self.variables)
        self.sizes = [int(np.prod(v.shape)) for v in self.variables]
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes)]).astype(int)
        self.n_params = int(self.offsets[-1])
        self._loss_grad = tf.function(self._loss_grad_impl)
        self._hessian_fns: dict[tuple[tuple[int, ...], int | None], Any] = {}
        self._hvp_fns: dict[tuple[int, ...], Any] = {}

    def _loss(self, x: Any, y: Any, sample_weight: Any) -> tf.Tensor:
        model = self._model_ref()
        y_pred = model(x, training=False)
        if hasattr(model, "_compute_loss"):
            loss = model._compute_loss(
                x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=False
            )
        else:
            loss = model.compute_loss(
                x=x, y=y, y_pred=y_pred, sample_weight=sample_weight
            )
        return tf.cast(loss, tf.float32)

    def _flat(self, tensors: Sequence[tf.Tensor]) -> tf.Tensor:
        return tf.concat([tf.reshape(tf.cast(t, tf.float32), [-1]) for t in tensors], 0)

    def _loss_grad_impl(self, x: Any, y: Any, sample_weight: Any) -> Any:
        with tf.GradientTape() as tape:
            loss = self._loss(x, y, sample_weight)
        grads = tape.gradient(
            loss, self.variables, unconnected_gradients=tf.UnconnectedGradients.ZERO
        )
        return loss, tf.linalg.norm(self._flat(grads))

    def loss_grad(self, x: Any, y: Any, sample_weight: Any) -> tuple[float, float]:
        """Returns the loss and the norm of its gradient over all variables."""
        loss, norm = self._loss_grad(x, y, sample_weight)
        return float(loss), float(norm)

    def _group_vars(self, group: tuple[int, ...]) -> list[tf.Variable]:
        return [self.variables[i] for i in group]

    def _taped_gradient(
        self, x: Any, y: Any, sw: Any, sources: list[tf.Variable]
    ) -> tuple[tf.GradientTape, tf.Tensor, tf.Tensor]:
        """Returns a persistent tape holding the flat gradient, the loss and it.

        The Hessian is the Jacobian of the gradient, so the gradient must be
        computed while the outer tape records; the caller differentiates the
        flat gradient once more (all rows, or against some vectors).
        """
        with tf.GradientTape(persistent=True) as outer:
            with tf.GradientTape() as inner:
                loss = self._loss(x, y, sw)
            grads = inner.gradient(
                loss, sources, unconnected_gradients=tf.UnconnectedGradients.ZERO
            )
            flat = self._flat(grads)
        return outer, loss, flat

    def _jacobian_rows(
        self,
        tape: tf.GradientTape,
        target: tf.Tensor,
        sources: list[tf.Variable],
        chunk: int | None = None,
    ) -> tf.Tensor:
        rows = tape.jacobian(
            target,
            sources,
            unconnected_gradients=tf.UnconnectedGradients.ZERO,
            parallel_iterations=chunk,
            experimental_use_pfor=True,
        )
        n_rows = tf.shape(target)[0]
        return tf.concat(
            [tf.reshape(tf.cast(r, tf.float32), [n_rows, -1]) for r in rows], axis=1
        )

    def activations_per_example(self) -> int | None:
        """Returns the layer outputs' size per example, when Keras knows it."""
        model = self._model_ref()
        total = 0
        try:
            for layer in model.layers:
                for out in tf.nest.flatten(layer.output):
                    total += int(np.prod([d or 1 for d in out.shape[1:]]))
        except (AttributeError, ValueError, TypeError):
            return None  # subclassed models have no symbolic outputs
        return total

    def pfor_chunk(self, rows: int, batch_size: int) -> int | None:
        """Returns the rows per vectorised chunk (``None``: all at once)."""
        per_example = self.activations_per_example()
        if per_example is None:
            return None if rows <= _UNKNOWN_CHUNK else _UNKNOWN_CHUNK
        per_row = 4 * _ACTIVATION_COPIES * max(1, batch_size) * per_example
        chunk = max(1, _PFOR_BUDGET_BYTES // per_row)
        return None if chunk >= rows else int(chunk)

    def hessian(
        self, group: tuple[int, ...], x: Any, y: Any, sw: Any, batch_size: int
    ) -> Any:
        """Returns the loss, the group's gradient norm and its Hessian."""
        rows = sum(self.sizes[i] for i in group)
        chunk = self.pfor_chunk(rows, batch_size)
        fn = self._hessian_fns.get((group, chunk))
        if fn is None:
            sources = self._group_vars(group)

            def impl(x: Any, y: Any, sw: Any) -> Any:
                outer, loss, flat = self._taped_gradient(x, y, sw, sources)
                hessian = self._jacobian_rows(outer, flat, sources, chunk)
                return loss, tf.linalg.norm(flat), hessian

            fn = tf.function(impl)
            self._hessian_fns[(group, chunk)] = fn
        return fn(x, y, sw)

    def hvp(self, group: tuple[int, ...], x: Any, y: Any, sw: Any, v: Any) -> Any:
        """Returns ``V H`` for a ``[b, n_group]`` batch ``V``.

        The forward pass and the gradient are shared by the ``b`` products;
        each product is one more reverse pass (for a few vectors this is faster
        than ``pfor``: measured 2.9 ms for 4 separate products against 5.5 ms
        vectorised on a 2,196-parameter MLP).
        """
        fn = self._hvp_fns.get(group)
        if fn is None:
            sources = self._group_vars(group)

            def impl(x: Any, y: Any, sw: Any, v: tf.Tensor) -> tf.Tensor:
                outer, _, flat = self._taped_gradient(x, y, sw, sources)
                rows = []
                for j in range(v.shape[0]):
                    row = outer.gradient(
                        flat,
                        sources,
                        output_gradients=v[j],
                        unconnected_gradients=tf.UnconnectedGradients.ZERO,
                    )
                    rows.append(self._flat(row))
                return tf.stack(rows)

            fn = tf.function(impl)
            self._hvp_fns[group] = fn
        return fn(x, y, sw, v)

    def matvec(
        self, group: tuple[int, ...], x: Any, y: Any, sw: Any
    ) -> Callable[[np.ndarray], np.ndarray]:
        """Returns the group's Hessian as a numpy operator, for Lanczos.

        Args:
            group: Indices of the trainable variables of the block.
            x: The probe inputs (tensors).
            y: The probe targets.
            sw: The sample weights, or ``None``.

        Returns:
            A function mapping a float64 ``[b, n_group]`` batch ``V`` to
            ``V H`` in float64 (computed in float32).
        """

        def apply(v: np.ndarray) -> np.ndarray:
            out = self.hvp(group, x, y, sw, tf.constant(v, tf.float32))
            return out.numpy().astype(np.float64)

        return apply


def to_tensors(data: Any) -> Any:
    """Converts a probe batch's nested arrays to tensors (``None`` stays ``None``).

    Args:
        data: Arrays or nested structures of them, as ``model.fit`` takes them.

    Returns:
        The same structure of tensors.
    """
    if data is None:
        return None
    return tf.nest.map_structure(tf.convert_to_tensor, data)


def batch_size(x: Any) -> int:
    """The probe batch's number of examples (1 when its first input has no batch axis).

    Args:
        x: The probe inputs (tensors).

    Returns:
        The leading dimension of the first input.
    """
    leading = tf.nest.flatten(x)[0].shape
    return int(leading[0]) if leading.rank and leading[0] is not None else 1


_ENGINES: weakref.WeakKeyDictionary[Any, Engine] = weakref.WeakKeyDictionary()


def engine_for(model: Any) -> Engine:
    """Returns the model's engine, built anew when its trainable variables changed.

    Args:
        model: A compiled Keras model.

    Returns:
        The engine whose compiled functions serve this model.
    """
    engine = _ENGINES.get(model)
    key = tuple(id(v) for v in model.trainable_variables)
    if engine is None or engine.key != key:
        engine = Engine(model)
        _ENGINES[model] = engine
    return engine

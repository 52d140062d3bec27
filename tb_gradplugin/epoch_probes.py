"""At epoch ends: the curvature on a fixed probe batch and the trajectory snapshot.

The callback never sees the data that ``fit`` gets; the train step does, so
:class:`ProbeCapture` keeps the first training batch in variables as the
curvature's probe (unless the user passes ``probe_data``). Every
``hessian_freq`` epochs the curvature of that batch is computed
(``curvature.py``); every ``trajectory_freq`` epochs a random projection of the
parameters is written (``trajectory.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from tb_gradplugin import user_warnings


class ProbeCapture:
    """Keeps the first training batch in variables, as the curvature probe.

    The copy is made once, in the graph, on the first step.
    """

    def __init__(self):
        self.vars = None
        self.structure = None
        self.captured = None

    def capture(self, data) -> None:
        """In the step: copies ``data`` once, when its shapes are static."""
        flat = tf.nest.flatten(data)
        if self.vars is None:
            if not all(t.shape.is_fully_defined() for t in flat):
                return
            with tf.init_scope():
                self.vars = [
                    tf.Variable(tf.zeros(t.shape, t.dtype), trainable=False)
                    for t in flat
                ]
                self.captured = tf.Variable(False, trainable=False)
            self.structure = data
        if len(flat) != len(self.vars) or any(
            t.shape != v.shape for t, v in zip(flat, self.vars, strict=True)
        ):
            return

        def store():
            for v, t in zip(self.vars, flat, strict=True):
                v.assign(t)
            self.captured.assign(True)
            return tf.constant(True)

        tf.cond(self.captured, lambda: tf.constant(False), store)

    def batch(self):
        """Returns ``(x, y, sample_weight)`` of the captured batch, or ``None``."""
        if self.vars is None or not bool(self.captured.numpy()):
            return None
        data = tf.nest.pack_sequence_as(self.structure, [v.numpy() for v in self.vars])
        return keras.utils.unpack_x_y_sample_weight(data)


def probe_batch(probe_data: tuple | None, capture: ProbeCapture | None):
    """The probe batch ``(x, y, sample_weight)``: the user's, else the captured one.

    Returns:
        The batch, or ``None`` when there is none yet.
    """
    if probe_data is not None:
        return keras.utils.unpack_x_y_sample_weight(tuple(probe_data))
    return capture.batch() if capture is not None else None


def write_curvature(
    model: keras.Model,
    batch,
    writer,
    max_exact_params: int,
    guarded: Callable[..., Any],
) -> None:
    """Computes the curvature on ``batch`` and writes it at the optimizer's step.

    A failure of the computation is warned of and skipped: curvature is a
    diagnostic and must not end the training.

    Args:
        model: The model.
        batch: ``(x, y, sample_weight)``.
        writer: The run's event writer (``event_writer.EventWriter``).
        max_exact_params: Largest Hessian block computed exactly.
        guarded: Runs the write so that a write failure never breaks training.
    """
    from tb_gradplugin import curvature

    x, y, sw = batch
    try:
        result = curvature.compute_curvature(
            model, x, y, sw, max_exact_params=max_exact_params
        )
    except (ValueError, tf.errors.OpError) as err:
        user_warnings.warn(f"GradientHealthCallback: curvature skipped ({err})")
        return
    step = int(model.optimizer.iterations.numpy())
    size = int(tf.nest.flatten(x)[0].shape[0])

    def write():
        curvature.write_summary(result, step, size, writer)

    guarded(write)


def write_trajectory(model: keras.Model, writer, dim: int, seed: int) -> None:
    """Writes a random projection of the trainable parameters at the current step.

    Args:
        model: The model.
        writer: The run's event writer (``event_writer.EventWriter``).
        dim: Dimension of the projection.
        seed: Seed of the projection (the same for every run).
    """
    from tb_gradplugin import summary
    from tb_gradplugin.trajectory import project_parameters

    variables = model.trainable_variables
    vector = project_parameters(variables, dim=dim, seed=seed)
    n_params = int(sum(np.prod(v.shape) for v in variables))
    step = int(model.optimizer.iterations.numpy())
    summary.write_trajectory(writer, vector, step, seed, n_params)

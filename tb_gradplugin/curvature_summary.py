"""Writes a curvature result as summaries: ``hessian/*``, ``hessian_layer/*``, density.

The tags, their texts and content keys are named in :mod:`tb_gradplugin.metadata`;
the plugin reads them back (``views.curvature_impl``). Written on the host,
once per curvature computation, as one event through the run's event writer.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np

from tb_gradplugin import metadata, spectrum
from tb_gradplugin.event_writer import tensor_value

if TYPE_CHECKING:
    from tb_gradplugin.curvature import CurvatureResult
    from tb_gradplugin.event_writer import EventWriter

__all__ = ["write_summary"]


def write_summary(
    result: CurvatureResult, step: int, probe_size: int, writer: EventWriter
) -> None:
    """Writes a curvature result through the run's event writer, in one event.

    Tags: ``hessian/<stat>`` scalars (:data:`metadata.HESSIAN_SCALARS`),
    ``hessian_layer/<stat>`` tensors ``[n_variables]``
    (:data:`metadata.HESSIAN_LAYER_STATS`) and
    :data:`metadata.HESSIAN_SPECTRUM_TAG`, a float32 tensor
    ``[1 + 3 · points]``: the broadening σ, then the grid, the density and the
    exact histogram (NaN on the Lanczos path), one after the other.

    Args:
        result: The result of :func:`tb_gradplugin.curvature.compute_curvature`.
        step: The optimizer step the curvature belongs to.
        probe_size: Examples in the probe batch.
        writer: The run's event writer.
    """
    content = {
        "method": result.method,
        "tolerance": float(result.tolerance),
        "resolution": float(result.resolution),
        "eps": spectrum.FLOAT32_EPS,
        "probe_size": int(probe_size),
        "n_params": int(result.n_params),
    }

    values: list[bytes] = []

    def write(tag: str, value: Any, text: str, extra: dict, tensor: bool) -> None:
        meta = metadata.create_summary_metadata(
            text, {**content, **extra}, tensor=tensor
        )
        values.append(tensor_value(tag, value, meta.SerializeToString()))

    for stat, text in metadata.HESSIAN_SCALARS.items():
        value = np.float32(float(getattr(result, stat)))
        write(metadata.hessian_tag(stat), value, text, {}, tensor=False)
    names = {
        "variables": list(result.variables),
        "layer_method": list(result.layer_method),
    }
    for stat, text in metadata.HESSIAN_LAYER_STATS.items():
        value = np.asarray(getattr(result, "layer_" + stat), np.float32)
        write(metadata.hessian_layer_tag(stat), value, text, names, tensor=True)
    points = int(result.density_grid.size)
    hist = result.histogram
    # σ changes from step to step while a tag's content is fixed by its first
    # write, so it leads the row.
    row = np.concatenate(
        [
            [result.broadening],
            result.density_grid,
            result.density,
            hist if hist is not None else np.full(points, math.nan),
        ]
    ).astype(np.float32)
    write(
        metadata.HESSIAN_SPECTRUM_TAG,
        row,
        metadata.HESSIAN_SPECTRUM_TEXT,
        {"points": points},
        tensor=True,
    )
    writer.write(step, values)

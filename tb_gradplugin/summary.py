"""Host-side summaries written once per epoch: curvature and trajectory.

The per-step statistics are written from the graph (``callback.py``); these are
rare and come from numpy results, so they are written eagerly.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import tensorflow as tf

from tb_gradplugin import metadata


def _meta(text: str, content: dict[str, Any], tensor: bool = False) -> bytes:
    return metadata.create_summary_metadata(
        text, content, tensor=tensor
    ).SerializeToString()


def write_curvature(result: Any, step: int, probe_size: int) -> None:
    """Writes a curvature result as ``hessian/*`` scalars and tensors.

    Args:
        result: A ``curvature.CurvatureResult``.
        step: The optimizer step the curvature belongs to.
        probe_size: Examples in the probe batch.
    """
    content = {
        "method": result.method,
        "tolerance": float(result.tolerance),
        "zero_tolerance": float(result.zero_tolerance),
        "probe_size": int(probe_size),
        "n_params": int(result.n_params),
    }
    for stat, text in metadata.HESSIAN_SCALARS.items():
        tf.summary.write(
            metadata.hessian_tag(stat),
            tf.constant(float(getattr(result, stat)), tf.float32),
            step=step,
            metadata=_meta(text, content),
        )
    layer_content = {
        **content,
        "variables": list(result.variables),
        "layer_method": list(result.layer_method),
    }
    for stat, text in metadata.HESSIAN_LAYER_STATS.items():
        tf.summary.write(
            metadata.hessian_layer_tag(stat),
            tf.constant(np.asarray(getattr(result, "layer_" + stat), np.float32)),
            step=step,
            metadata=_meta(text, layer_content, tensor=True),
        )


def write_trajectory(vector: np.ndarray, step: int, seed: int, n_params: int) -> None:
    """Writes one projected parameter snapshot as ``trajectory/projection``.

    Args:
        vector: The projection, shape ``[dim]``.
        step: The optimizer step of the snapshot.
        seed: The projection's seed (the same for every run).
        n_params: Number of projected parameters.
    """
    vector = np.asarray(vector, np.float32).reshape(-1)
    tf.summary.write(
        metadata.TRAJECTORY_TAG,
        tf.constant(vector),
        step=step,
        metadata=_meta(
            "random projection of the trainable parameters",
            {"seed": int(seed), "dim": int(vector.size), "n_params": int(n_params)},
            tensor=True,
        ),
    )

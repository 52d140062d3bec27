"""Host-side summaries written once per epoch: the parameter trajectory.

The per-step statistics are written from the graph (``callback.py``); these are
rare and come from numpy results, so they are written eagerly; the curvature's
are written by ``curvature.write_summary``.
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

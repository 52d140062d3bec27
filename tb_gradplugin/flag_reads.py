"""Reads what the diagnosis needs of a run, the per-variable steps only on demand.

The per-step scalars of a 100,000-step run are ~1 MB each; its per-variable
tensors ~40 MB each and a second or more to read through the data server. The
diagnosis gets the scalars read and each tensor as a
:class:`tb_gradplugin.diagnosis.DeferredTensor` that carries the tensor's block
summaries (:mod:`tb_gradplugin.blocks`) when the run has them: the rules decide
from the blocks where they can and read the steps only where they cannot, with
the same flags either way. Imports no TensorFlow.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np

from tb_gradplugin import blocks, diagnosis, metadata, reader

BLOCK_ROWS_USED = ("count", "min", "max", "nonfinite")
"""The block rows that :mod:`tb_gradplugin.diagnosis.coarse` reads."""

GRAD_KEY = "step/grad_norm"
"""The per-step scalar written at every step a per-variable row is: its point
count tells whether a tensor's blocks cover every row."""


def split_keys(keys) -> tuple[list[str], list[str], list[str]]:
    """Sorts the keys of a run's listing for a diagnosis.

    Args:
        keys: The listed keys.

    Returns:
        ``(scalars, tensors, block_keys)``: the keys the rules read whole, the
        per-variable ones they read on demand, and the block summaries of those.
    """
    keys = set(keys)
    tensors = sorted(k for k in diagnosis.TENSOR_KEYS if k in keys)
    scalars = sorted(k for k in diagnosis.SERIES_KEYS if k in keys and k not in tensors)
    block_keys = [blocks.block_key(k) for k in tensors if blocks.block_key(k) in keys]
    return scalars, tensors, block_keys


def deferred_tensors(
    tensors: Mapping[str, tuple[bytes, int]],
    summaries: Mapping[str, reader.Series],
    grad: reader.Series | None,
    read: Callable[[str], reader.Series | None],
) -> dict[str, diagnosis.DeferredTensor]:
    """The per-variable series of a run, each read on demand.

    A tensor's blocks are handed on only when they line up with its rows: the
    tensor is written at the steps of ``step/grad_norm``, and each block ends
    at the step of the row its counts say it ends at. The rows after the last
    block (a live run between two block ends) are left to the rules as unknown.

    Args:
        tensors: Key -> ``(PluginData content bytes, last step)`` from a listing.
        summaries: ``block/<key>`` -> block series; looked up only when a
            rule first asks about the series' blocks (a
            :class:`LazySummaries` then reads it).
        grad: The run's ``step/grad_norm``, or ``None``.
        read: Reads every step of one key.

    Returns:
        Key -> deferred series.
    """
    out = {}
    for key, (raw, max_step) in tensors.items():
        try:
            content = metadata.parse_plugin_content(raw)
        except ValueError:
            content = {}

        def block_view(key=key, max_step=max_step):
            summary = summaries.get(blocks.block_key(key))
            rows = _rows_of(summary, grad, max_step)
            if rows is None:
                return None, None
            return {n: blocks.row(summary, n) for n in BLOCK_ROWS_USED}, rows

        out[key] = diagnosis.DeferredTensor(
            lambda key=key: read(key), content, block_view
        )
    return out


class LazySummaries(Mapping):
    """Block summaries read one key at a time, when a rule first asks about it.

    The rules ask about the blocks of some per-variable series only (a healthy
    run's diagnosis never asks about ``layer/nonfinite_grads``): each block
    series of a 100,000-step, 100-variable run is ~4 MB on the data server's
    wire.

    Args:
        keys: The ``block/<key>`` keys the run has.
        read: Reads one of them (``None`` when it cannot).

    Example:
        >>> lazy = LazySummaries(["block/layer/grad_norm"], lambda key: None)
        >>> list(lazy), lazy.get("block/layer/grad_norm")
        (['block/layer/grad_norm'], None)
    """

    def __init__(self, keys, read: Callable[[str], reader.Series | None]):
        self._keys = list(keys)
        self._read = read

    def __getitem__(self, key: str) -> reader.Series:
        if key not in self._keys:
            raise KeyError(key)
        found = self._read(key)
        if found is None:
            raise KeyError(key)
        return found

    def __iter__(self):
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)


def _rows_of(
    summary: reader.Series | None, grad: reader.Series | None, max_step
) -> int | None:
    """A tensor's number of rows when its blocks summarise its first rows.

    The tensor is written at the steps of ``step/grad_norm``; a listing made
    while the data server loads may show it a few steps behind, so its rows
    are the grad steps up to its last one. ``None`` when the blocks do not
    line up with those steps.
    """
    if summary is None or grad is None or not len(summary) or not len(grad):
        return None
    if np.any(np.diff(grad.steps) <= 0):
        return None
    rows = int(np.searchsorted(grad.steps, int(max_step), side="right"))
    if rows < 1 or int(grad.steps[rows - 1]) != int(max_step):
        return None
    ends = np.cumsum(blocks.row(summary, "count")[:, 0].astype(np.int64))
    if ends[-1] > rows or np.any(np.diff(ends) < 1) or ends[0] < 1:
        return None
    return rows if np.array_equal(grad.steps[ends - 1], summary.steps) else None


def run_report(provider, run: str) -> dict:
    """Diagnoses one run of a data provider, reading per-variable steps on demand.

    For a caller without a :class:`tb_gradplugin.cached_reader.CachedReader`
    (the command line): one listing of the run, its scalars and block
    summaries read, its per-variable series deferred.

    Args:
        provider: A TensorBoard data provider.
        run: The run.

    Returns:
        :func:`tb_gradplugin.diagnosis.run_report`'s object.
    """
    listing = reader.listing(provider, run)
    scalars, tensors, block_keys = split_keys(listing)

    def read(keys) -> reader.RunData:
        return reader.read_run(provider, run, listed={k: listing[k][:2] for k in keys})

    data = read(scalars)
    summaries = LazySummaries(block_keys, lambda key: read([key]).tensors.get(key))
    deferred = deferred_tensors(
        {k: (listing[k][1], listing[k][2]) for k in tensors},
        summaries,
        data.scalar(GRAD_KEY),
        lambda key: read([key]).tensors.get(key),
    )
    last_step = max((v[2] for v in listing.values()), default=None)
    return diagnosis.run_report(data, last_step=last_step, deferred=deferred)

"""The per-block summaries the callback writes beside the per-step series (numpy).

A view of a long run draws from these instead of reading every step
(``blocks.py`` reads them, ``http_api.md`` documents them). Every
:data:`BLOCK_STEPS` logged steps, each per-step key (the ``step/*`` scalars and
the ``layer/*`` tensors) gets one summary of that block of its values,
``blocks.summarize(steps, values)``, logged at the key's last step in the block
as ``block/<key>``. A key written at only some steps (``step/loss`` where the
step's loss is unknown) is summarised over the steps it was written at.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from tb_gradplugin import blocks

BLOCK_STEPS = 100
"""Logged steps per block: a 100,000-step run has 1,000 blocks per key, so a view
reads a few thousand points, and a block costs ~17 events per 100 logged steps."""


class BlockSummaries:
    """Collects logged rows and makes the summary of each finished block.

    Args:
        columns: ``{per-step key: column index or slice of a packed row}``.
        known: ``{per-step key: column of a 0/1 flag}`` for keys written only
            where the flag is 1. Defaults to none.
        block_steps: Logged steps per block. Defaults to :data:`BLOCK_STEPS`.
    """

    def __init__(
        self,
        columns: Mapping[str, int | slice],
        known: Mapping[str, int] | None = None,
        block_steps: int = BLOCK_STEPS,
    ):
        self.columns = dict(columns)
        self.known = dict(known or {})
        self.block_steps = int(block_steps)
        self._rows: list[np.ndarray] = []
        self._steps: list[np.ndarray] = []
        self._count = 0

    def add(self, rows: np.ndarray, steps: np.ndarray) -> list[tuple]:
        """Takes logged rows in step order; returns the blocks they finish.

        Args:
            rows: Packed rows as written, ``[n, width]`` float32.
            steps: Their steps, ``[n]``.

        Returns:
            ``[(key, step, summary)]`` of every finished block, oldest first.
        """
        out = []
        start = 0
        while start < len(steps):
            take = min(self.block_steps - self._count, len(steps) - start)
            self._rows.append(rows[start : start + take])
            self._steps.append(steps[start : start + take])
            self._count += take
            start += take
            if self._count == self.block_steps:
                out.extend(self.flush())
        return out

    def flush(self) -> list[tuple]:
        """The summaries of the unfinished block (the end of training); resets.

        Returns:
            ``[(key, step, summary)]``: one per key written in the block.
        """
        if not self._count:
            return []
        rows = np.concatenate(self._rows)
        steps = np.concatenate(self._steps).astype(np.int64)
        self._rows, self._steps, self._count = [], [], 0
        # summarize works column by column: the keys written at every step
        # are summarised in one call (one call per key cost ~10 µs per logged
        # step, measured), then split.
        every = [key for key in self.columns if key not in self.known]
        columns = np.arange(rows.shape[1])
        parts = [np.atleast_1d(columns[self.columns[key]]) for key in every]
        summaries = {}
        if every:
            table = blocks.summarize(steps, rows[:, np.concatenate(parts)])
            bounds = np.cumsum([0] + [np.size(p) for p in parts])
            for key, start, stop in zip(every, bounds[:-1], bounds[1:], strict=True):
                scalar = isinstance(self.columns[key], (int, np.integer))
                summaries[key] = (
                    int(steps[-1]),
                    table[:, start] if scalar else table[:, start:stop],
                )
        for key, flag in self.known.items():
            present = rows[:, flag] > 0
            if key in self.columns and present.any():
                values = rows[present][:, self.columns[key]]
                summaries[key] = (
                    int(steps[present][-1]),
                    blocks.summarize(steps[present], values),
                )
        return [(key, *summaries[key]) for key in self.columns if key in summaries]

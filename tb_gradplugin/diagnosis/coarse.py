"""What the block summaries of a per-variable series prove about its steps.

A rule that needs one figure of a late window of a per-variable series (a
median, a quantile, a maximum) first asks :class:`Screen` whether the block
summaries (:mod:`tb_gradplugin.blocks`: per block its logged steps, smallest
and largest finite value and non-finite count) already decide the rule's
comparison. Each answer is a bound that holds for every possible set of steps
with those summaries, so a rule that skips the steps on a ``True`` answer gives
exactly the flags it gives from every step; on ``False`` the rule reads the
steps. Rows of the series are its logged steps in order; block ``b`` holds rows
``starts[b] .. ends[b] - 1``. The blocks may end before the series does (a live
run between two block ends): the rows after them are unknown to every bound.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from tb_gradplugin.diagnosis.run_view import DeferredTensor

__all__ = ["Screen"]


@dataclasses.dataclass(frozen=True)
class Screen:
    """The block summaries of one per-variable series, as row ranges.

    Attributes:
        rows: The series' number of rows (logged steps), the unsummarised
            tail included.
        starts: First row of each block, int ``[n_blocks]``.
        ends: One past the last row of each block, int ``[n_blocks]``.
        low: Smallest finite value per block and variable, ``[n_blocks, k]``
            (NaN where a block has none).
        high: Largest finite value, ``[n_blocks, k]``.
        nonfinite: Non-finite values per block and variable, ``[n_blocks, k]``.
    """

    rows: int
    starts: np.ndarray
    ends: np.ndarray
    low: np.ndarray
    high: np.ndarray
    nonfinite: np.ndarray

    @classmethod
    def of(cls, tensor: DeferredTensor | None) -> Screen | None:
        """The screen of a deferred series, or ``None`` without usable blocks.

        Args:
            tensor: The series; its ``blocks`` must summarise its first rows,
                and its ``rows`` say how many it has.

        Returns:
            A screen, or ``None`` when the series is already read (its steps
            are then cheaper to use than bounds), has no blocks, or has none
            with a logged step.
        """
        if tensor is None or tensor.loaded or not tensor.blocks:
            return None
        counts = tensor.blocks["count"][:, 0].astype(np.int64)
        if not counts.size or counts.min() < 1:
            return None
        ends = np.cumsum(counts)
        rows = int(ends[-1]) if tensor.rows is None else tensor.rows
        if rows < ends[-1]:
            return None
        return cls(
            rows=rows,
            starts=ends - counts,
            ends=ends,
            low=tensor.blocks["min"],
            high=tensor.blocks["max"],
            nonfinite=tensor.blocks["nonfinite"],
        )

    @property
    def width(self) -> int:
        """The number of variables per row."""
        return int(self.high.shape[1])

    def all_below(self, column: int, first_row: int, bound: float) -> bool:
        """Whether every finite value of rows ``first_row..`` is below ``bound``.

        Args:
            column: The variable's column.
            first_row: The first row of the window.
            bound: The bound.

        Returns:
            True when proven (the blocks cover every row, and every block
            overlapping the window has its finite maximum below ``bound``, or no
            finite value); False when unknown.
        """
        if self.ends[-1] < self.rows:
            return False
        high = self.high[self.ends > first_row, column]
        high = high[np.isfinite(high)]
        return bool(not high.size or high.max() < bound)

    def absent(self, first_row: int) -> frozenset[int] | None:
        """The variables with no finite value in rows ``first_row..``.

        Args:
            first_row: The first row of the window.

        Returns:
            Their columns, or ``None`` when the blocks cannot tell for some
            variable (its only finite values are in a block that straddles
            ``first_row``).
        """
        sizes = (self.ends - self.starts)[:, None]
        finite = sizes - self.nonfinite
        inside = (finite[self.starts >= first_row] > 0).any(axis=0)
        overlap = (finite[self.ends > first_row] > 0).any(axis=0)
        if np.any(overlap & ~inside):
            return None
        if self.ends[-1] < self.rows and not inside.all():
            return None  # the unknown tail may hold its values
        return frozenset(np.flatnonzero(~overlap).tolist())

    def quantile_below(
        self, column: int, first_row: int, end_row: int, q: float, bound: float
    ) -> bool:
        """Whether the q-quantile of rows ``first_row..end_row - 1`` is below bound.

        For a quantile of values that are each at most the row's own value
        (a rolling minimum's), as ``np.quantile`` of the finite ones computes
        it: with at most ``T`` finite values its virtual index is at most
        ``(T - 1) q``, so more known-finite values below ``bound`` than
        ``ceil((T - 1) q)`` put the quantile below it. Known: those of the
        blocks wholly inside the rows whose largest finite value is below.

        Args:
            column: The variable's column.
            first_row: The first row.
            end_row: One past the last row.
            q: The quantile in ``[0, 1]``.
            bound: The bound.

        Returns:
            True when proven; False when unknown.
        """
        inside = (self.starts >= first_row) & (self.ends <= end_row)
        sizes = self.ends - self.starts
        finite = sizes - self.nonfinite[:, column]
        below = int(finite[inside & (self.high[:, column] < bound)].sum())
        most = end_row - first_row
        return most >= 1 and below >= math.ceil((most - 1) * q) + 1

    def median_at_least(self, column: int, first_row: int, bound: float) -> bool:
        """Whether the median of the finite values of rows ``first_row..`` is >= bound.

        More than half of the finite values at or above ``bound`` put the
        median there: counted in the blocks wholly inside the window whose
        smallest finite value is at or above it, against every row of the
        window that is not known to be non-finite.

        Args:
            column: The variable's column.
            first_row: The first row of the window.
            bound: The bound.

        Returns:
            True when proven; False when unknown.
        """
        inside = self.starts >= first_row
        sizes = self.ends - self.starts
        finite = sizes - self.nonfinite[:, column]
        above = int(finite[inside & (self.low[:, column] >= bound)].sum())
        total = self.rows - first_row - int(self.nonfinite[inside, column].sum())
        return total >= 1 and above >= total // 2 + 1

    def some_nonzero(self, column: int, first_row: int) -> bool:
        """Whether some finite value of rows ``first_row..`` is not zero.

        Args:
            column: The variable's column.
            first_row: The first row of the window.

        Returns:
            True when a block wholly inside the window has a finite value
            other than zero; False when unknown.
        """
        inside = self.starts >= first_row
        low, high = self.low[inside, column], self.high[inside, column]
        return bool(np.any((high > 0) | (low < 0)))

"""The flight recorder: every step around an anomaly, whatever ``update_freq`` says.

The writer holds the last :data:`FLIGHT_STEPS` steps' rows before writing them.
When a step is anomalous (a first non-finite loss or gradient, or a
gradient-norm jump of :data:`JUMP_FACTOR` times the median of the last
:data:`JUMP_HISTORY` steps) every step within :data:`FLIGHT_STEPS` before and
after it is written. The rows are held on the host, after each block is read
from the device.
"""

from __future__ import annotations

import bisect
import collections
import dataclasses
import time

import numpy as np

FLIGHT_STEPS = 256
"""Steps written at full resolution before and after an anomalous step."""
JUMP_FACTOR = 10.0
"""A gradient norm this many times the recent median is anomalous (Megatron-LM
checks 10x the running maximum; OLMo-core a z-score over 6 in 128 steps)."""
JUMP_HISTORY = 128
"""Steps of the recent median (OLMo-core's spike window)."""
MAX_HOLD_S = 10.0
"""Seconds a row is held at most, so that slow steps still show promptly."""
_MIN_HISTORY = 8  # steps of history before a jump can be judged


@dataclasses.dataclass
class Held:
    """One step's row, held until it is written or dropped."""

    step: int
    valid: bool
    counts: np.ndarray  # NaN/Inf per variable, NaN/Inf loss, skipped
    row: np.ndarray | None  # the step's row (valid rows), reduced when written
    window: np.ndarray | None  # packed window closed at this step
    arrived: float
    full: bool = False  # within the flight recorder's range of an anomaly
    epoch_last: bool = False  # the epoch's last step (update_freq="epoch")


class FlightRecorder:
    """Holds step rows and marks those around an anomaly to be written.

    Args:
        flight_steps: Steps kept before writing and written around an
            anomaly; ``0`` turns the recorder off (rows are still held until
            released). Defaults to ``None``: :data:`FLIGHT_STEPS`.
    """

    def __init__(self, flight_steps: int | None = None):
        self.flight_steps = int(FLIGHT_STEPS if flight_steps is None else flight_steps)
        self.held: collections.deque[Held] = collections.deque()
        self.norms: collections.deque[float] = collections.deque(maxlen=JUMP_HISTORY)
        # The same norms in order: the median of each step in O(log n) rather
        # than a partition of the history per step, on the writer thread that
        # shares the CPU with training.
        self.sorted_norms: list[float] = []
        self.finite_before = True
        self.full_until = -1
        self.release_to = -1
        self.anomalies: list[int] = []

    def in_range(self, step: int) -> bool:
        """Whether ``step`` follows a recent anomaly within the recorder's range."""
        return step <= self.full_until

    def watch(self, held: Held, grad_norm: float, finite: bool) -> None:
        """Judges a valid step: a first non-finite step, or a norm jump.

        Args:
            held: The step's held row (marked ``full`` when anomalous).
            grad_norm: The step's global gradient norm.
            finite: Whether its loss, gradients and norm are finite.
        """
        anomalous = not finite and self.finite_before
        if finite:
            if len(self.norms) >= _MIN_HISTORY:
                anomalous = grad_norm >= JUMP_FACTOR * self.recent_median() > 0
            self._remember(float(grad_norm))
        self.finite_before = finite
        if anomalous:
            self.anomalies.append(held.step)
        if anomalous and self.flight_steps > 0:
            self.full_until = max(self.full_until, held.step + self.flight_steps)
            self.release_to = max(self.release_to, held.step)
            for other in self.held:
                if other.step >= held.step - self.flight_steps:
                    other.full = True
            held.full = True

    def recent_median(self) -> float:
        """The median of the last :data:`JUMP_HISTORY` finite norms, as np.median."""
        ordered, n = self.sorted_norms, len(self.sorted_norms)
        if n == 0:
            return float("nan")
        mid = n // 2
        return ordered[mid] if n % 2 else (ordered[mid - 1] + ordered[mid]) / 2

    def _remember(self, grad_norm: float) -> None:
        if len(self.norms) == self.norms.maxlen:
            del self.sorted_norms[bisect.bisect_left(self.sorted_norms, self.norms[0])]
        self.norms.append(grad_norm)
        bisect.insort(self.sorted_norms, grad_norm)

    def hold(self, held: Held) -> None:
        """Keeps a step's row until :meth:`take` releases it."""
        self.held.append(held)

    def holds(self, held: Held) -> bool:
        """Whether ``held`` is still held."""
        return any(h is held for h in self.held)

    def take(self, final: bool, keep_last: bool) -> list[Held]:
        """The held rows that no later anomaly can still ask for, oldest first.

        Args:
            final: Take every held row (the end of a ``fit``).
            keep_last: Keep the last row held (it may yet be an epoch's last).
        """
        if not self.held:
            return []
        limit = max(self.held[-1].step - self.flight_steps, self.release_to)
        stale = time.monotonic() - MAX_HOLD_S
        out = []
        while self.held:
            first = self.held[0]
            if not (final or first.step <= limit or first.arrived < stale):
                break
            if not final and len(self.held) == 1 and keep_last:
                break
            out.append(self.held.popleft())
        return out

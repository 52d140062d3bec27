"""Live diagnosis: the flag rules run on a run's own event files while it trains.

Each check reads only the records appended since the last one and keeps only
the series the rules read (:mod:`tb_gradplugin.live_series`); the same rules as
the CLI and the tab then run on the whole series, the per-variable ones decided
from their block summaries where those suffice, as in the tab
(:class:`LiveDiagnosis`). :class:`LiveReports` runs them on the callback's
writer thread, rate-limited, and reports the flags on the training thread.
Imports no TensorFlow.
"""

from __future__ import annotations

import logging
import time

from tb_gradplugin import diagnosis, live_series, user_warnings

logger = logging.getLogger(__name__)

LIVE_INTERVAL_S = 5.0
"""Seconds between live diagnoses at epoch ends, however short the epochs."""

LIVE_SHARE = 0.01
"""Most share of the wall time the live diagnosis may take with ``on_flag="warn"``.

Reading costs in proportion to the new records, but the rules go over the
per-step scalars whole (their cost grows with the run: ~0.45 µs a logged
step), so after a run of ``t`` seconds the next waits at least
``t / LIVE_SHARE``.
"""


class LiveDiagnosis:
    """Reads one run's new events and reports error flags the first time they show.

    Args:
        log_dir: The run's directory (where the callback writes).
        thresholds: The rules' thresholds. Defaults to ``None``: the defaults.

    Example:
        >>> live = LiveDiagnosis("runs/exp1")  # doctest: +SKIP
        >>> [f.kind for f in live.new_errors()]  # doctest: +SKIP
        ['exploding_gradient']
    """

    def __init__(self, log_dir: str, thresholds: diagnosis.Thresholds | None = None):
        self.thresholds = thresholds
        self.series = live_series.RunSeries(log_dir)
        self._seen: set[tuple[str, str | None]] = set()
        self.last_step: int | None = None

    def new_errors(self) -> list[diagnosis.Flag]:
        """Reads the new events and returns error flags not reported before.

        Returns:
            The flags of severity ``error`` whose (kind, layer) is new. Also sets
            :attr:`last_step`, the last step the events held.
        """
        if not self.series.update() and self.last_step is not None:
            return []  # nothing new: no new flag
        self.last_step = self.series.last_step
        data, deferred = self.series.run_data()
        fresh = []
        for flag in diagnosis.diagnose(data, self.thresholds, deferred=deferred):
            key = (flag.kind, flag.layer)
            if flag.severity == "error" and key not in self._seen:
                self._seen.add(key)
                fresh.append(flag)
        return fresh


class LiveReports:
    """Runs the live diagnosis beside training and reports its error flags.

    Args:
        on_flag: ``"warn"`` warns of each new error flag, ``"stop"`` also asks
            training to stop, ``None`` runs nothing.
    """

    def __init__(self, on_flag: str | None):
        self.on_flag = on_flag
        # (flag, last step written when it was found), filled on the writer thread.
        self.flags: list[tuple[diagnosis.Flag, int | None]] = []
        self._live: LiveDiagnosis | None = None
        self._last = -float("inf")
        self._wait = LIVE_INTERVAL_S

    def due(self, urgent: bool, epoch_end: bool, final: bool = False) -> bool:
        """Whether to run now.

        At once after an anomalous step (``urgent``), else at an epoch end at
        most every :data:`LIVE_INTERVAL_S` seconds. With ``on_flag="warn"``
        both wait too until the last run's duration is :data:`LIVE_SHARE` of
        the time since it: the rules' cost grows with the run, their share of
        the training does not. ``"stop"`` is not delayed by that share (it
        must stop within an epoch of the flag). At the end of a ``fit``
        (``final``) always: a short training still gets its warnings, and a
        check with nothing new since the last costs no rules.

        Args:
            urgent: An anomalous step was written since the last run.
            epoch_end: An epoch ended since the last run.
            final: The ``fit`` ended. Defaults to ``False``.

        Returns:
            Whether to run the live diagnosis now.
        """
        if self.on_flag is None:
            return False
        if final:
            return True
        since = time.monotonic() - self._last
        if self.on_flag == "warn" and since < self._wait:
            return False
        return urgent or (epoch_end and since >= LIVE_INTERVAL_S)

    def run(self, log_dir: str) -> None:
        """On the writer thread: keeps the new error flags of ``log_dir``'s events.

        A failure is logged once and turns the live diagnosis off: a
        diagnostic never ends training. The first run in a folder reads what
        it already held (a resumed run's history: 19 s for 122,000 steps of 100
        variables), a one-off that does not delay the next run by the share.
        """
        start = time.monotonic()
        first = self._live is None
        try:
            if first:
                self._live = LiveDiagnosis(log_dir)
            found = self._live.new_errors()
            self.flags.extend((flag, self._live.last_step) for flag in found)
        except Exception as err:  # noqa: BLE001 - a diagnostic never ends training
            logger.warning("GradientHealthCallback: live diagnosis failed: %s", err)
            self.on_flag = None
        self._last = time.monotonic()
        self._wait = LIVE_INTERVAL_S if first else (self._last - start) / LIVE_SHARE

    def forget_run(self) -> None:
        """The run's folder changed: the next run reads the new one."""
        self._live = None

    def report(self, when: str) -> bool:
        """On the training thread: warns of the flags found since the last report.

        Args:
            when: Where training is, for the message (e.g. ``"epoch 3"``).

        Returns:
            Whether training should stop (``on_flag="stop"`` and a new flag).
        """
        flags = []
        while self.flags:  # appended on the writer thread; pop is atomic
            flags.append(self.flags.pop(0))
        for flag, as_of in flags:
            # The flag describes the steps written when it was found; the rows
            # of later steps may still be on their way to the event file.
            seen = f", in the steps written up to step {as_of}" if as_of else ""
            text = diagnosis.format_flag(flag)
            # One channel (a Python warning): a log line as well printed it twice.
            user_warnings.warn(f"GradientHealthCallback: {when}{seen}\n{text}")
        return bool(flags) and self.on_flag == "stop"

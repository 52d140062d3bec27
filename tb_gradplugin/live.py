"""Live diagnosis: the flag rules run on a run's own event files while it trains.

The events are read back with TensorBoard's loader, incrementally (each reload
reads only what was appended), and the same rules as the CLI and the tab run on
the whole series (:class:`LiveDiagnosis`). :class:`LiveReports` runs them on
the callback's writer thread, rate-limited, and reports the flags on the
training thread. Imports no TensorFlow.
"""

from __future__ import annotations

import logging
import time
import warnings

from tensorboard.backend.event_processing import data_provider as tb_data_provider

from tb_gradplugin import diagnosis, reader

logger = logging.getLogger(__name__)

_RUN = "live"

LIVE_INTERVAL_S = 5.0
"""Seconds between live diagnoses at epoch ends, however short the epochs."""


class LiveDiagnosis:
    """Re-reads one run's events and reports error flags the first time they show.

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
        self._multiplexer = reader.event_multiplexer()
        self._multiplexer.AddRun(log_dir, name=_RUN)
        self._provider = tb_data_provider.MultiplexerDataProvider(
            self._multiplexer, log_dir
        )
        self._seen: set[tuple[str, str | None]] = set()
        self.last_step: int | None = None

    def new_errors(self) -> list[diagnosis.Flag]:
        """Reloads the events and returns error flags not reported before.

        Returns:
            The flags of severity ``error`` whose (kind, layer) is new. Also sets
            :attr:`last_step`, the last step the events held.
        """
        self._multiplexer.Reload()
        run = reader.read_run(self._provider, _RUN)
        self.last_step = run.last_step
        fresh = []
        for flag in diagnosis.diagnose(run, self.thresholds):
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

    def due(self, urgent: bool, epoch_end: bool) -> bool:
        """Whether to run now.

        At once after an anomalous step (``urgent``), else at an epoch end at
        most every :data:`LIVE_INTERVAL_S` seconds.
        """
        return self.on_flag is not None and (
            urgent or (epoch_end and time.monotonic() - self._last >= LIVE_INTERVAL_S)
        )

    def run(self, log_dir: str) -> None:
        """On the writer thread: keeps the new error flags of ``log_dir``'s events.

        A failure is logged once and turns the live diagnosis off: a
        diagnostic never ends training.
        """
        self._last = time.monotonic()
        try:
            if self._live is None:
                self._live = LiveDiagnosis(log_dir)
            found = self._live.new_errors()
            self.flags.extend((flag, self._live.last_step) for flag in found)
        except Exception as err:  # noqa: BLE001 - a diagnostic never ends training
            logger.warning("GradientHealthCallback: live diagnosis failed: %s", err)
            self.on_flag = None

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
            warnings.warn(
                f"GradientHealthCallback: {when}{seen}\n{text}",
                RuntimeWarning,
                stacklevel=3,
            )
        return bool(flags) and self.on_flag == "stop"

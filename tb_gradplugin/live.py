"""Live diagnosis: the flag rules run on a run's own event files while it trains.

The events are read back with TensorBoard's loader, incrementally (each reload
reads only what was appended), and the same rules as the CLI and the tab run on
the whole series. Imports no TensorFlow.
"""

from __future__ import annotations

import logging

from tensorboard.backend.event_processing import data_provider as tb_data_provider

from tb_gradplugin import diagnosis, reader

logger = logging.getLogger(__name__)

_RUN = "live"


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

    def new_errors(self) -> list[diagnosis.Flag]:
        """Reloads the events and returns error flags not reported before.

        Returns:
            The flags of severity ``error`` whose (kind, layer) is new.
        """
        self._multiplexer.Reload()
        run = reader.read_run(self._provider, _RUN)
        fresh = []
        for flag in diagnosis.diagnose(run, self.thresholds):
            key = (flag.kind, flag.layer)
            if flag.severity == "error" and key not in self._seen:
                self._seen.add(key)
                fresh.append(flag)
        return fresh

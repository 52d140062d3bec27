"""Live diagnosis: the flag rules run on a run's own event files while it trains.

The events are read back with TensorBoard's loader, incrementally: each reload
reads only what was appended, and only the new points are converted to arrays
(:class:`LiveDiagnosis`; converting every point again at each run cost ~0.2 ms
a logged step, 2 s a run at 8,000 steps). The same rules as the CLI and the tab
then run on the whole series. :class:`LiveReports` runs them on the callback's
writer thread, rate-limited, and reports the flags on the training thread.
Imports no TensorFlow.
"""

from __future__ import annotations

import logging
import time
import warnings

import numpy as np
from tensorboard.compat.proto import summary_pb2, types_pb2
from tensorboard.util import tensor_util

from tb_gradplugin import diagnosis, metadata, reader

logger = logging.getLogger(__name__)

_RUN = "live"

LIVE_INTERVAL_S = 5.0
"""Seconds between live diagnoses at epoch ends, however short the epochs."""

LIVE_SHARE = 0.01
"""Most share of the wall time the live diagnosis may take with ``on_flag="warn"``.

The rules run over the whole series (their cost grows with the run), so after
a run of ``t`` seconds the next waits at least ``t / LIVE_SHARE``.
"""


class _Points:
    """The points of one tag converted so far, in chunks."""

    def __init__(self):
        self.steps: list[np.ndarray] = []
        self.wall_times: list[np.ndarray] = []
        self.values: list[np.ndarray] = []
        self.count = 0
        self.last: tuple[int, float] | None = None

    def continued_by(self, events) -> bool:
        """Whether ``events`` (all of the tag's) begin with the points held."""
        if self.count > len(events):
            return False
        if not self.count:
            return True
        last = events[self.count - 1]
        return (last.step, last.wall_time) == self.last

    def add(self, events, tensor: bool) -> None:
        """Converts ``events`` (TensorEvents after the ones held) and keeps them."""
        if not events:
            return
        self.steps.append(np.array([e.step for e in events], np.int64))
        self.wall_times.append(np.array([e.wall_time for e in events], np.float64))
        self.values.append(_values(events, tensor))
        self.count += len(events)
        self.last = (events[-1].step, events[-1].wall_time)

    def series(self, content: dict, tensor: bool) -> reader.Series:
        """All the points held, as one series."""
        if tensor:
            width = max(v.shape[1] for v in self.values)
            values = np.concatenate(
                [
                    np.pad(v, ((0, 0), (0, width - v.shape[1])), constant_values=np.nan)
                    for v in self.values
                ]
            )
        else:
            values = np.concatenate(self.values)
        return reader.Series(
            steps=np.concatenate(self.steps),
            values=values,
            wall_times=np.concatenate(self.wall_times),
            content=content,
        )


def _values(events, tensor: bool) -> np.ndarray:
    """The float64 values of TensorEvents: ``[n]``, or ``[n, k]`` for tensors.

    The callback writes each value as the float32 bytes of the tensor's
    content: those of all the events are read at once; anything else is
    converted one by one, as TensorBoard's data provider does.
    """
    protos = [e.tensor_proto for e in events]
    sizes = {len(p.tensor_content) for p in protos}
    if (
        len(sizes) == 1
        and 0 not in sizes
        and all(p.dtype == types_pb2.DT_FLOAT for p in protos)
    ):
        flat = np.frombuffer(b"".join(p.tensor_content for p in protos), np.float32)
        values = flat.reshape(len(protos), -1).astype(np.float64)
    else:
        values = reader.stack_rows([tensor_util.make_ndarray(p) for p in protos])
    return values if tensor else values[:, 0]


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
        self._points: dict[str, _Points] = {}
        self._seen: set[tuple[str, str | None]] = set()
        self.last_step: int | None = None

    def read(self) -> reader.RunData:
        """Reloads the events; the run's series, converting only the new points.

        Returns:
            The run's gradient-health series, as ``reader.read_run`` reads them.
        """
        self._multiplexer.Reload()
        accumulator = self._multiplexer.GetAccumulator(_RUN)
        run = reader.RunData(run=_RUN)
        for tag in accumulator.Tags().get("tensors", []):
            key = metadata.tag_key(tag)
            if key is None:
                continue
            meta = accumulator.SummaryMetadata(tag)
            if meta.plugin_data.plugin_name != metadata.PLUGIN_NAME:
                continue
            tensor = meta.data_class == summary_pb2.DATA_CLASS_TENSOR
            if not tensor and meta.data_class != summary_pb2.DATA_CLASS_SCALAR:
                continue
            events = accumulator.Tensors(tag)
            points = self._points.get(tag)
            if points is not None and not points.continued_by(events):
                points = None  # TensorBoard purged steps (a restarted run)
            if points is None:
                points = self._points[tag] = _Points()
            points.add(events[points.count :], tensor)
            if points.count:
                content = reader.parse_content(meta.plugin_data.content)
                target = run.tensors if tensor else run.scalars
                target[key] = points.series(content, tensor)
        return run

    def new_errors(self) -> list[diagnosis.Flag]:
        """Reloads the events and returns error flags not reported before.

        Returns:
            The flags of severity ``error`` whose (kind, layer) is new. Also sets
            :attr:`last_step`, the last step the events held.
        """
        run = self.read()
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
        self._wait = LIVE_INTERVAL_S

    def due(self, urgent: bool, epoch_end: bool) -> bool:
        """Whether to run now.

        At once after an anomalous step (``urgent``), else at an epoch end at
        most every :data:`LIVE_INTERVAL_S` seconds. With ``on_flag="warn"``
        both wait too until the last run's duration is :data:`LIVE_SHARE` of
        the time since it: the rules' cost grows with the run, their share of
        the training does not. ``"stop"`` is not delayed by that share (it
        must stop within an epoch of the flag).
        """
        if self.on_flag is None:
            return False
        since = time.monotonic() - self._last
        if self.on_flag == "warn" and since < self._wait:
            return False
        return urgent or (epoch_end and since >= LIVE_INTERVAL_S)

    def run(self, log_dir: str) -> None:
        """On the writer thread: keeps the new error flags of ``log_dir``'s events.

        A failure is logged once and turns the live diagnosis off: a
        diagnostic never ends training.
        """
        start = time.monotonic()
        try:
            if self._live is None:
                self._live = LiveDiagnosis(log_dir)
            found = self._live.new_errors()
            self.flags.extend((flag, self._live.last_step) for flag in found)
        except Exception as err:  # noqa: BLE001 - a diagnostic never ends training
            logger.warning("GradientHealthCallback: live diagnosis failed: %s", err)
            self.on_flag = None
        self._last = time.monotonic()
        self._wait = (self._last - start) / LIVE_SHARE

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

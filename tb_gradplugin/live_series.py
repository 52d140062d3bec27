"""The series the diagnosis reads of a run being written, fed from its event files.

The live diagnosis runs every few seconds on a run that only grows. Reading it
through TensorBoard's event accumulator kept every event's protocol buffer in
memory (4.2 GB for a 122,000-step run of 100 variables) and joined every tag's
points into new arrays at each check (2.3 s at that size). :class:`RunSeries`
instead reads only the records appended since its last read (TensorBoard's
``DirectoryWatcher`` over raw records, the files in the order TensorBoard reads
them), keeps of each record only the values of the series the rules read
(:data:`tb_gradplugin.diagnosis.SERIES_KEYS` and the block summaries of the
per-variable ones), and appends them to arrays that grow by doubling, so that a
read costs in proportion to the new records and a check hands the rules views of
those arrays. The per-variable series are kept in float32 (the values written)
and converted only when a rule asks for their steps. Imports no TensorFlow.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import numpy as np
from google.protobuf import message
from tensorboard.backend.event_processing import (
    directory_watcher,
    event_file_loader,
    io_wrapper,
)
from tensorboard.compat.proto import event_pb2, summary_pb2, types_pb2
from tensorboard.util import tensor_util

from tb_gradplugin import blocks, data_server, diagnosis, flag_reads, metadata, reader

logger = logging.getLogger(__name__)

_MIN_CAPACITY = 64
_CHUNK_RECORDS = 4096


class GrowingSeries:
    """One tag's points, appended in amortised O(new points).

    The arrays double when full; :meth:`series` returns views of the filled
    rows, which later appends never change (they write past them, or into a
    new array).

    Args:
        dtype: The values' dtype as kept; values of a finer dtype widen it
            (float32 rows then float64 ones keep both exactly). Defaults to
            float64.

    Example:
        >>> s = GrowingSeries()
        >>> s.extend([1, 2], [0.0, 0.5], np.array([3.0, 4.0]))
        >>> s.series({}).values.tolist()
        [3.0, 4.0]
    """

    def __init__(self, dtype=np.float64):
        self.dtype = np.dtype(dtype)
        self.count = 0
        self._steps = np.empty(0, np.int64)
        self._walls = np.empty(0, np.float64)
        self._values: np.ndarray | None = None

    def extend(self, steps, wall_times, values: np.ndarray) -> None:
        """Appends points.

        Args:
            steps: Their steps, ``[n]``.
            wall_times: Their wall times in seconds, ``[n]``.
            values: ``[n]`` for a scalar series or ``[n, k]`` for a tensor one;
                a tensor narrower than the rows held is padded with NaN, a wider
                one widens every row held (NaN in the new columns), as
                :func:`tb_gradplugin.reader.stack_rows` does.
        """
        n = len(steps)
        if not n:
            return
        values = np.asarray(values)
        if self._values is None:
            self._values = np.empty((0, *values.shape[1:]), self.dtype)
        if np.promote_types(values.dtype, self.dtype) != self.dtype:
            # Values finer than those kept (float64 from another writer).
            self.dtype = np.promote_types(values.dtype, self.dtype)
            self._values = self._values.astype(self.dtype)
        if values.ndim == 2 and values.shape[1] != self._values.shape[1]:
            width = max(values.shape[1], self._values.shape[1])
            values = _widen(values, width)
            self._values = _widen(self._values, width)
        end = self.count + n
        if end > len(self._steps):
            capacity = max(_MIN_CAPACITY, end, 2 * len(self._steps))
            self._steps = _grow(self._steps, capacity, self.count)
            self._walls = _grow(self._walls, capacity, self.count)
            self._values = _grow(self._values, capacity, self.count)
        self._steps[self.count : end] = steps
        self._walls[self.count : end] = wall_times
        self._values[self.count : end] = values
        self.count = end

    def series(self, content: dict, dtype=None) -> reader.Series:
        """The points held, as a series of views (or a converted copy).

        Args:
            content: The series' content.
            dtype: The values' dtype; a copy when it is not the one kept.
                Defaults to ``None``: the one kept, no copy.

        Returns:
            The series.
        """
        values = self._values[: self.count]
        if dtype is not None and np.dtype(dtype) != self.dtype:
            values = values.astype(dtype)
        return reader.Series(
            steps=self._steps[: self.count],
            values=values,
            wall_times=self._walls[: self.count],
            content=content,
        )


def _grow(array: np.ndarray, capacity: int, filled: int) -> np.ndarray:
    """A larger array holding the first ``filled`` rows of ``array``."""
    grown = np.empty((capacity, *array.shape[1:]), array.dtype)
    grown[:filled] = array[:filled]
    return grown


def _widen(values: np.ndarray, width: int) -> np.ndarray:
    """``[n, k]`` values padded with NaN to ``[n, width]``."""
    if values.shape[1] == width:
        return values
    wide = np.full((values.shape[0], width), np.nan, values.dtype)
    wide[:, : values.shape[1]] = values
    return wide


class _Tag:
    """What is kept of one tag: its key, kind and content."""

    def __init__(self, key: str, tensor: bool, raw_content: bytes):
        self.key = key
        self.tensor = tensor
        self.raw_content = raw_content
        self.content = reader.parse_content(raw_content)


def kept_keys() -> frozenset[str]:
    """The keys a live diagnosis keeps: those the rules read, and their blocks.

    Returns:
        :data:`tb_gradplugin.diagnosis.SERIES_KEYS` and the ``block/<key>`` of
        each per-variable key the rules read.
    """
    return frozenset(diagnosis.SERIES_KEYS) | {
        blocks.block_key(k) for k in diagnosis.TENSOR_KEYS
    }


class RunSeries:
    """A run directory's diagnosis series, read incrementally as it is written.

    Args:
        log_dir: The run's directory.
        keys: The keys to keep. Defaults to ``None``: :func:`kept_keys`.

    Example:
        >>> series = RunSeries("runs/exp1")  # doctest: +SKIP
        >>> series.update()  # doctest: +SKIP
        1200
        >>> data, deferred = series.run_data()  # doctest: +SKIP
    """

    def __init__(self, log_dir: str, keys: Iterable[str] | None = None):
        self.keys = frozenset(kept_keys() if keys is None else keys)
        self._watcher = directory_watcher.DirectoryWatcher(
            log_dir,
            event_file_loader.RawEventFileLoader,
            io_wrapper.IsSummaryEventsFile,
        )
        self._tags: dict[str, _Tag | None] = {}  # None: a tag not kept
        self._points: dict[str, GrowingSeries] = {}
        self.records_read = 0

    def update(self) -> int:
        """Reads the records appended since the last update.

        Returns:
            How many records it read.

        Raises:
            tensorboard.backend.event_processing.directory_watcher.DirectoryDeletedError:
                When the directory was removed.
        """
        pending: dict[_Tag, tuple[list, list, list]] = {}
        read = 0
        for record in self._watcher.Load():
            read += 1
            try:
                event = event_pb2.Event.FromString(record)
            except message.DecodeError:
                # A record whose checksum held but whose event does not parse:
                # skipped, so that it costs no other record.
                logger.warning("skipping an undecodable event record in a run")
                continue
            if event.WhichOneof("what") != "summary":
                continue
            for value in event.summary.value:
                tag = self._tag(value)
                if tag is None:
                    continue
                steps, walls, values = pending.setdefault(tag, ([], [], []))
                steps.append(event.step)
                walls.append(event.wall_time)
                values.append(_raw(value.tensor))
            if read % _CHUNK_RECORDS == 0:
                # The values' bytes wait in lists until appended: in chunks.
                self._append(pending)
        self._append(pending)
        self.records_read += read
        return read

    def _append(self, pending: dict[_Tag, tuple[list, list, list]]) -> None:
        """Appends the points gathered to the series held; empties ``pending``."""
        for tag, (steps, walls, values) in pending.items():
            points = self._points.get(tag.key)
            if points is None:
                # The per-variable series in the float32 they were written in.
                dtype = np.float32 if tag.key in diagnosis.TENSOR_KEYS else np.float64
                points = self._points[tag.key] = GrowingSeries(dtype)
            points.extend(steps, walls, _rows(values, tag.tensor))
        pending.clear()

    def _tag(self, value: summary_pb2.Summary.Value) -> _Tag | None:
        """What is kept of a value's tag, decided at its first value."""
        tag = self._tags.get(value.tag, False)
        if tag is not False:
            return tag
        # TensorBoard keeps a tag's first metadata: a tag without it is not ours.
        meta = value.metadata
        key = metadata.tag_key(value.tag)
        kept = None
        if (
            key in self.keys
            and meta.plugin_data.plugin_name == metadata.PLUGIN_NAME
            and meta.data_class
            in (summary_pb2.DATA_CLASS_SCALAR, summary_pb2.DATA_CLASS_TENSOR)
        ):
            tensor = meta.data_class == summary_pb2.DATA_CLASS_TENSOR
            kept = _Tag(key, tensor, meta.plugin_data.content)
        self._tags[value.tag] = kept
        return kept

    def run_data(
        self, run: str = "live"
    ) -> tuple[reader.RunData, dict[str, diagnosis.DeferredTensor]]:
        """The series read so far, as :func:`tb_gradplugin.diagnosis.diagnose` takes.

        Args:
            run: The run's name in the result. Defaults to ``"live"``.

        Returns:
            ``(data, deferred)``: the scalars and block summaries (views, no
            copy), and each per-variable series the rules read as a deferred
            series that converts its float32 rows to float64 only when a rule
            asks for them.
        """
        data = reader.RunData(run=run)
        summaries, tensors = {}, {}
        for tag in self._tags.values():
            points = None if tag is None else self._points.get(tag.key)
            if points is None:
                continue
            if tag.key in diagnosis.TENSOR_KEYS:
                tensors[tag.key] = tag
            elif tag.key.startswith(blocks.BLOCK_FAMILY):
                summaries[tag.key] = points.series(tag.content)
            else:
                target = data.tensors if tag.tensor else data.scalars
                target[tag.key] = points.series(tag.content)
        deferred = flag_reads.deferred_tensors(
            {k: (t.raw_content, self._last(k)) for k, t in tensors.items()},
            summaries,
            data.scalar(flag_reads.GRAD_KEY),
            lambda key: self._points[key].series(tensors[key].content, np.float64),
        )
        return data, deferred

    def _last(self, key: str) -> int:
        """The last step of a series held."""
        points = self._points[key]
        return int(points.series({}).steps[points.count - 1])

    @property
    def last_step(self) -> int | None:
        """The largest step of the series kept, or ``None`` before any."""
        ends = [self._last(k) for k, p in self._points.items() if p.count]
        return max(ends) if ends else None


def _raw(tensor) -> bytes | float | np.ndarray:
    """A value's tensor as cheaply as it can be kept until :func:`_rows`.

    The callback and ``tf.summary`` write float32 bytes (``tensor_content``),
    kept as they are; TensorBoard's ``make_tensor_proto`` writes a scalar as
    one ``float_val``, kept as a float; anything else goes through
    TensorBoard's ``make_ndarray``.
    """
    if tensor.dtype == types_pb2.DT_FLOAT:
        if tensor.tensor_content:
            return tensor.tensor_content
        if not tensor.tensor_shape.dim and len(tensor.float_val) == 1:
            return tensor.float_val[0]
    return np.asarray(tensor_util.make_ndarray(tensor), np.float64).reshape(-1)


def _rows(values: list, tensor: bool) -> np.ndarray:
    """Values kept by :func:`_raw`: ``[n, k]`` for a tensor tag, else ``[n]``."""
    kinds = {type(v) for v in values}
    if kinds == {bytes}:
        # The callback's values: every one the same float32 bytes, read at once.
        rows = data_server.float32_rows(values)
        if rows is not None:
            return rows if tensor else rows[:, 0]
    if kinds == {float}:
        flat = np.array(values, np.float32)
        return flat[:, None] if tensor else flat
    arrays = [
        np.frombuffer(v, np.float32)
        if isinstance(v, bytes)
        else np.asarray(v, np.float64).reshape(-1)
        for v in values
    ]
    return reader.stack_rows(arrays) if tensor else np.concatenate(arrays)

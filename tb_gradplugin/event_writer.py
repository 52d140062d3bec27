"""One run's event file, written with no TensorFlow op per summary.

Every summary the callback writes into a run directory goes through one
:class:`EventWriter`, so through one event file: TensorBoard's Python loader
reads only the newest file of a directory once it has moved on, so a second
file written at the same time would lose data.

Why not ``tf.summary``: each ``tf.summary.write`` is an eager op (~4 µs on the
host, more with its ``tf.constant`` conversions), and a logged step writes ~20
series, each one event of its own. Here a logged step is one ``Event`` holding
all its values: each tag's ``Summary.Value`` is built once with the protocol
buffers library and only its ``tensor_content`` (the float32 bytes of the packed
row) changes; the record is framed by TensorFlow's C++ record writer
(``tf.io.TFRecordWriter``). Not TensorBoard's own ``EventFileWriter``: its
record checksum is a Python loop, ~200 µs for a 1.4 KB event (measured here),
as dear as the writes it replaces.

The values are what ``tf.summary.write`` writes for a float32 tensor (dtype,
shape, ``tensor_content``, the tag's metadata on its first value), so both
TensorBoard loaders read the same tags, steps, values and metadata
(``tests/test_event_writer.py`` compares them).
"""

from __future__ import annotations

import itertools
import math
import os
import socket
import threading
import time
import weakref
from collections.abc import Iterable, Sequence

import numpy as np
from tensorboard.compat.proto import event_pb2, summary_pb2, types_pb2

FILE_VERSION = "brain.Event:2"
"""The event file version TensorBoard expects; with ``brain.Event:1`` its Python
loader would drop points at a step written again (its out-of-order purge)."""

SOURCE_WRITER = "tb_gradplugin"
"""Names this writer in the file's first event (``source_metadata.writer``)."""

_uid = itertools.count()


class TensorTag:
    """Encodes one tag's float32 values of a fixed shape as summary values.

    The ``Summary.Value`` is built once with the protocol buffers library; a
    value only sets its ``tensor_content``. The tag's metadata goes with its
    first value only, as with ``tf.summary`` writers (TensorBoard keeps a
    tag's first metadata); :attr:`described` says whether it went. One
    instance is used by one thread at a time.

    Args:
        tag: The summary tag.
        shape: The values' shape (``()`` for a scalar).
        metadata: The serialized ``SummaryMetadata``. Defaults to none.

    Example:
        >>> t = TensorTag("a", ())
        >>> t.value(np.float32(1.5).tobytes()) == tensor_value("a", 1.5)
        True
    """

    def __init__(self, tag: str, shape: Sequence[int], metadata: bytes = b""):
        self.tag = tag
        self.shape = tuple(int(n) for n in shape)
        self.nbytes = 4 * math.prod(self.shape)
        self.described = not metadata
        self._summary = summary_pb2.Summary()
        value = self._summary.value.add(tag=tag)
        value.tensor.dtype = types_pb2.DT_FLOAT
        value.tensor.tensor_shape.SetInParent()  # a scalar's empty shape, as TF's
        for n in self.shape:
            value.tensor.tensor_shape.dim.add(size=n)
        self._value = value
        self._metadata = summary_pb2.SummaryMetadata.FromString(metadata)

    def value(self, content: bytes) -> bytes:
        """The encoded value, with the metadata the first time.

        Args:
            content: The values' float32 bytes in native order
                (``ndarray.tobytes()``), :attr:`nbytes` long.

        Returns:
            A serialized ``Summary`` of this one value: the items of
            :meth:`EventWriter.write` concatenate into one ``Summary`` (the
            protocol buffers encoding of a repeated field).
        """
        self._value.tensor.tensor_content = content
        if self.described:
            return self._summary.SerializeToString()
        self.described = True
        self._value.metadata.CopyFrom(self._metadata)
        try:
            return self._summary.SerializeToString()
        finally:
            self._value.ClearField("metadata")


def tensor_value(tag: str, values, metadata: bytes = b"") -> bytes:
    """Encodes a float32 tensor as one ``Summary.Value``, as ``tf.summary.write``.

    Args:
        tag: The summary tag.
        values: A number or array; written as float32 (TensorBoard's Rust data
            server drops float64 scalars).
        metadata: The serialized ``SummaryMetadata``. Defaults to none.

    Returns:
        A serialized ``Summary`` of this one value: one item of
        :meth:`EventWriter.write`.
    """
    array = np.asarray(values, np.float32)
    return TensorTag(tag, array.shape, metadata).value(array.tobytes())


class EventWriter:
    """Writes events of summary values to a new event file in ``log_dir``.

    Thread-safe: the writer thread writes the steps while the training thread
    writes an epoch's curvature or trajectory. The file is named as
    ``tf.summary`` writers name theirs (TensorBoard orders a run's files by
    name), with its own suffix so that no ``tf.summary`` writer of the same
    process can pick the same name, and a zero-padded number so that a later
    writer of the same process and second sorts after the earlier ones (the
    writer after the ninth had sorted first). Records go to the file as written,
    through a buffer; :meth:`flush` makes them readable.

    Args:
        log_dir: The run's directory; made when missing.

    Raises:
        tf.errors.OpError: When the directory or the file cannot be made.
    """

    def __init__(self, log_dir: str | os.PathLike):
        import tensorflow as tf

        log_dir = os.fspath(log_dir)
        tf.io.gfile.makedirs(log_dir)
        name = (
            f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}"
            f".{os.getpid()}.{next(_uid):08d}.gradient-health"
        )
        self.path = os.path.join(log_dir, name)
        self._lock = threading.Lock()
        self._records = tf.io.TFRecordWriter(self.path)
        # Flushes and closes the file if the writer is never closed.
        self._finalizer = weakref.finalize(self, self._records.close)
        first = event_pb2.Event(wall_time=time.time(), file_version=FILE_VERSION)
        first.source_metadata.writer = SOURCE_WRITER
        self._records.write(first.SerializeToString())
        self.flush()

    def write(self, step: int, values: Iterable[bytes]) -> None:
        """Writes one ``Event`` at ``step`` holding the given summary values.

        Args:
            step: The event's step.
            values: Encoded values (:meth:`TensorTag.value`,
                :func:`tensor_value`), in order.

        Raises:
            ValueError: When the writer is closed.
        """
        event = event_pb2.Event(wall_time=time.time(), step=int(step))
        event.summary.MergeFromString(b"".join(values))
        record = event.SerializeToString()
        with self._lock:
            if not self._finalizer.alive:
                raise ValueError(f"the event writer of {self.path} is closed")
            self._records.write(record)

    def flush(self) -> None:
        """Makes every event written so far readable from the file."""
        with self._lock:
            if self._finalizer.alive:
                self._records.flush()

    def close(self) -> None:
        """Flushes and closes the file; later writes raise ``ValueError``."""
        with self._lock:
            self._finalizer()

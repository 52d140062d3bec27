"""One run's event file, written with no TensorFlow op per summary.

Every summary the callback writes into a run directory goes through one
:class:`EventWriter`, so through one event file: TensorBoard's Python loader
reads only the newest file of a directory once it has moved on, so a second
file written at the same time would lose data.

Why not ``tf.summary``: each ``tf.summary.write`` is an eager op (~4 µs on the
host, more with its ``tf.constant`` conversions), and a logged step writes ~20
series, each one event of its own. Here a logged step is one ``Event`` holding
all its values, encoded by hand from the float32 bytes of its packed row, and
framed by TensorFlow's C++ record writer (``tf.io.TFRecordWriter``). Not
TensorBoard's own ``EventFileWriter``: its record checksum is a Python loop,
~200 µs for a 1.4 KB event (measured here), as dear as the writes it replaces.

The values are encoded exactly as ``tf.summary.write`` encodes a float32
tensor (dtype, shape, ``tensor_content``; the tag's metadata after the
tensor), so both TensorBoard loaders read the same tags, steps, values and
metadata (``tests/test_event_writer.py`` compares them). The encoding follows
the protocol buffers wire format: a field is its number and wire type in one
varint, then a varint length and the bytes for a length-delimited field.
"""

from __future__ import annotations

import itertools
import math
import os
import socket
import struct
import threading
import time
import weakref
from collections.abc import Iterable, Sequence

import numpy as np

FILE_VERSION = "brain.Event:2"
"""The event file version TensorBoard expects; with ``brain.Event:1`` its Python
loader would drop points at a step written again (its out-of-order purge)."""

SOURCE_WRITER = "tb_gradplugin"
"""Names this writer in the file's first event (``source_metadata.writer``)."""

_DT_FLOAT = 1  # tensorflow.DataType.DT_FLOAT
_uid = itertools.count()


def _varint(value: int) -> bytes:
    """The base-128 varint of an int64 (a negative one as its two's complement)."""
    value &= (1 << 64) - 1
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited field (strings, bytes, messages)."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _shape(shape: Sequence[int]) -> bytes:
    """A ``TensorShapeProto``: one ``dim`` per axis, a size 0 left out (proto3)."""
    return b"".join(_field(2, _varint(8) + _varint(n) if n else b"") for n in shape)


class TensorTag:
    """Encodes one tag's float32 values of a fixed shape as summary values.

    Everything but the values' bytes is encoded once. The tag's metadata goes
    with its first value only, as with ``tf.summary`` writers (TensorBoard
    keeps a tag's first metadata); :attr:`described` says whether it went.

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
        self._meta = _field(9, metadata) if metadata else b""
        content = _varint(4 << 3 | 2) + _varint(self.nbytes) if self.nbytes else b""
        tensor = _varint(1 << 3) + _varint(_DT_FLOAT) + _field(2, _shape(self.shape))
        tensor_len = len(tensor) + len(content) + self.nbytes
        head = _field(1, tag.encode()) + _varint(8 << 3 | 2) + _varint(tensor_len)
        head += tensor + content
        size = len(head) + self.nbytes
        # The Summary.value field around it: with and without the metadata.
        self._lead = _varint(1 << 3 | 2) + _varint(size) + head
        self._lead_described = (
            _varint(1 << 3 | 2) + _varint(size + len(self._meta)) + head
        )

    def value(self, content: bytes) -> bytes:
        """The encoded value, with the metadata the first time.

        Args:
            content: The values' float32 bytes in native order
                (``ndarray.tobytes()``), :attr:`nbytes` long.

        Returns:
            The ``Summary.value`` field: one item of :meth:`EventWriter.write`.
        """
        if self.described:
            return self._lead + content
        self.described = True
        return self._lead_described + content + self._meta


def tensor_value(tag: str, values, metadata: bytes = b"") -> bytes:
    """Encodes a float32 tensor as one ``Summary.Value``, as ``tf.summary.write``.

    Args:
        tag: The summary tag.
        values: A number or array; written as float32 (TensorBoard's Rust data
            server drops float64 scalars).
        metadata: The serialized ``SummaryMetadata``. Defaults to none.

    Returns:
        The ``Summary.value`` field: one item of :meth:`EventWriter.write`.
    """
    array = np.asarray(values, np.float32)
    return TensorTag(tag, array.shape, metadata).value(array.tobytes())


class EventWriter:
    """Writes events of summary values to a new event file in ``log_dir``.

    Thread-safe: the writer thread writes the steps while the training thread
    writes an epoch's curvature or trajectory. The file is named as
    ``tf.summary`` writers name theirs (TensorBoard orders a run's files by
    name), with its own suffix so that no ``tf.summary`` writer of the same
    process can pick the same name. Records go to the file as written,
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
            f".{os.getpid()}.{next(_uid)}.gradient-health"
        )
        self.path = os.path.join(log_dir, name)
        self._lock = threading.Lock()
        self._records = tf.io.TFRecordWriter(self.path)
        # Flushes and closes the file if the writer is never closed.
        self._finalizer = weakref.finalize(self, self._records.close)
        first = _varint(9) + struct.pack("<d", time.time())
        first += _field(3, FILE_VERSION.encode())
        first += _field(10, _field(1, SOURCE_WRITER.encode()))
        self._records.write(first)
        self.flush()

    def write(self, step: int, values: Iterable[bytes]) -> None:
        """Writes one ``Event`` at ``step`` holding the given summary values.

        Args:
            step: The event's step.
            values: Encoded values (:meth:`TensorTag.value`,
                :func:`tensor_value`).

        Raises:
            ValueError: When the writer is closed.
        """
        summary = b"".join(values)
        event = _varint(9) + struct.pack("<d", time.time())
        if step:
            event += _varint(2 << 3) + _varint(int(step))
        event += _varint(5 << 3 | 2) + _varint(len(summary)) + summary
        with self._lock:
            if not self._finalizer.alive:
                raise ValueError(f"the event writer of {self.path} is closed")
            self._records.write(event)

    def flush(self) -> None:
        """Makes every event written so far readable from the file."""
        with self._lock:
            if self._finalizer.alive:
                self._records.flush()

    def close(self) -> None:
        """Flushes and closes the file; later writes raise ``ValueError``."""
        with self._lock:
            self._finalizer()

"""Event files on disk: finding them and telling whether one ends mid-record.

TensorBoard's Rust data server logs an event file whose records fail their
checksum, but not one that ends with a partial record (a file still being
written, or cut off by a crash): it waits for the rest. The command line says
so itself, from the TFRecord framing of each record: an 8-byte little-endian
data length, the 4-byte masked CRC-32C of those 8 bytes, the data, and the
4-byte masked CRC-32C of the data. Imports no TensorFlow.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator

from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c

_HEADER_BYTES = 12  # length (8) + its CRC (4)
_FOOTER_BYTES = 4  # CRC of the data


def event_file_paths(logdir: str | os.PathLike) -> Iterator[str]:
    """Yields the event files under a log directory, as TensorBoard finds them.

    Args:
        logdir: The log directory.

    Yields:
        The path of every file whose name holds ``tfevents``, under ``logdir``
        joined with the folders below it.
    """
    for folder, dirs, files in os.walk(os.fspath(logdir)):
        dirs.sort()
        for name in sorted(files):
            if "tfevents" in name:
                yield os.path.join(folder, name)


def ends_with_partial_record(path: str | os.PathLike) -> bool:
    """Tells whether an event file's last record is cut short.

    Walks the records by their lengths alone (no data is read or checked, so a
    file of hundreds of megabytes takes well under a second). The record that
    reaches past the end of the file counts as partial only when its length
    passes its checksum: a length that fails it means a corrupt file, which
    the data server reports itself.

    Args:
        path: The event file.

    Returns:
        ``True`` when the file ends inside a record; ``False`` when its last
        record is whole, when the file is empty, or when the overrunning record
        has a corrupt length.

    Raises:
        OSError: When the file cannot be read.
    """
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        offset = 0
        while offset < size:
            header = f.read(_HEADER_BYTES)
            if len(header) < _HEADER_BYTES:
                return True
            length_bytes, (length_crc,) = header[:8], struct.unpack("<I", header[8:])
            (length,) = struct.unpack("<Q", length_bytes)
            end = offset + _HEADER_BYTES + length + _FOOTER_BYTES
            if end > size:
                return masked_crc32c(length_bytes) == length_crc
            f.seek(end)
            offset = end
    return False

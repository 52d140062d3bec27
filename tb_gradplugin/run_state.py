"""Continuing a run in a used ``log_dir``: its last step and its variable labels.

A second ``fit`` (a recompiled model, a new callback on the same ``log_dir``)
must go on from the run's last step and keep every per-layer value under its
own variable's label. Both are read from the event files already there, from
record headers and each event's first bytes, so that a long run costs a
sequential read rather than a parse of every event.
"""

from __future__ import annotations

import itertools
import os
import struct

from tb_gradplugin import metadata

_PARSED_RECORDS = 1000  # records of a file parsed whole while looking for labels


def record_step(data: bytes) -> int | None:
    """The step of a serialized ``Event`` that starts ``wall_time, step``.

    Args:
        data: One record's payload (a serialized ``Event``).

    Returns:
        The step, or ``None`` when the record does not start that way.
    """
    if len(data) < 10 or data[0] != 0x09 or data[9] != 0x10:
        return None
    step, shift = 0, 0
    for byte in data[10:20]:
        step |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return step
    return None


def event_files(log_dir: str) -> list[str]:
    """The names of the event files in ``log_dir`` (none when it is missing)."""
    try:
        return [f for f in os.listdir(log_dir) if ".tfevents." in f]
    except OSError:
        return []


def run_state(log_dir: str) -> tuple[int, list[str] | None]:
    """What the events already in ``log_dir`` hold.

    Reads record headers and each event's first bytes (its step), parsing
    whole events only at the start of a file.

    Args:
        log_dir: The run's folder.

    Returns:
        ``(last, paths)``: the largest step (``0``: none) and the variable
        paths of the first ``layer/*`` tag metadata (``None``: none), the
        labels TensorBoard keeps for the run.
    """
    from tensorboard.compat.proto import event_pb2

    last, paths = 0, None
    tag = metadata.layer_tag("grad_norm")
    for name in sorted(event_files(log_dir)):
        with open(os.path.join(log_dir, name), "rb") as f:
            for count in itertools.count():
                header = f.read(12)
                if len(header) < 12:
                    break
                (length,) = struct.unpack("<Q", header[:8])
                data = f.read(length + 4)[:length]
                if len(data) < length:
                    break  # a record being written
                step = record_step(data)
                if paths is None and count < _PARSED_RECORDS or step is None:
                    try:
                        event = event_pb2.Event.FromString(data)
                    except Exception:  # noqa: BLE001 - a damaged record is skipped
                        continue
                    if not event.HasField("summary"):
                        continue
                    step = int(event.step)
                    for value in event.summary.value if paths is None else ():
                        content = value.metadata.plugin_data.content
                        if value.tag == tag and content:
                            paths = metadata.parse_plugin_content(content).get(
                                "variables"
                            )
                last = max(last, step)
    return last, paths


def folder_for_labels(base: str, paths: list[str]) -> tuple[str, int]:
    """The sub-run of ``base`` whose per-layer labels are ``paths``.

    TensorBoard keeps a tag's first metadata, so rows over other variables
    would show under the first ones' names: such rows go to the first folder
    ``variables-<k>`` (``k = 2, 3, ...``) that is unused or holds these labels.

    Args:
        base: The ``log_dir`` the callback was given.
        paths: The variable paths of the rows to write.

    Returns:
        ``(folder, last)``: the folder and the last step already in it.
    """
    k = 2
    while True:
        folder = os.path.join(base, f"variables-{k}")
        last, recorded = run_state(folder)
        if recorded is None or list(recorded) == list(paths):
            return folder, last
        k += 1

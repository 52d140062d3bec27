"""Tests of finding event files and spotting a partial last record, on real files."""

from __future__ import annotations

import os

import numpy as np

from tb_gradplugin import event_files
from tests import eventfiles


def small_run(logdir, run="exp"):
    steps = np.arange(1, 21)
    return eventfiles.write_run(logdir, run, steps=steps, loss=1.0 / steps)


def test_whole_file_has_no_partial_record(tmp_path):
    """A file the writer closed ends on a record boundary."""
    assert not event_files.ends_with_partial_record(small_run(tmp_path))


def test_cut_data_is_a_partial_record(tmp_path):
    """Bytes cut off the last record's data or CRC make it partial."""
    path = small_run(tmp_path)
    eventfiles.truncate_event_file(path, 5)
    assert event_files.ends_with_partial_record(path)


def test_cut_header_is_a_partial_record(tmp_path):
    """A file ending inside a record's 12-byte header is partial."""
    path = small_run(tmp_path)
    with open(path, "ab") as f:
        f.write(b"\x10\x00\x00\x00\x00\x00")
    assert event_files.ends_with_partial_record(path)


def test_corrupt_length_is_not_reported_as_partial(tmp_path):
    """A length that fails its CRC is corruption, which the data server reports."""
    path = eventfiles.write_garbage_event_file(tmp_path)
    assert not event_files.ends_with_partial_record(path)


def test_empty_file_has_no_partial_record(tmp_path):
    """An event file with no bytes yet is not cut off."""
    path = tmp_path / "events.out.tfevents.1.empty"
    path.write_bytes(b"")
    assert not event_files.ends_with_partial_record(path)


def test_event_file_paths_finds_nested_event_files_only(tmp_path):
    """Every file named like an event file is found, in sorted folders; no others."""
    a = small_run(tmp_path, "a")
    b = small_run(tmp_path, os.path.join("b", "train"))
    (tmp_path / "a" / "notes.txt").write_text("not an event file")
    assert list(event_files.event_file_paths(tmp_path)) == [a, b]

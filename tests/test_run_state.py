"""A used log_dir's last step and labels, read from its event files."""

from __future__ import annotations

import os

from tensorboard.compat.proto import event_pb2

from tb_gradplugin import metadata, run_state
from tests.gh_logdirs import Writer

PATHS = ["dense/kernel", "dense/bias"]


def test_record_step_reads_the_step_of_a_serialized_event():
    """The step of an Event's bytes, as protobuf itself parses it; else None."""
    for step in (1, 127, 128, 123_456_789):
        data = event_pb2.Event(wall_time=1.5, step=step).SerializeToString()
        assert run_state.record_step(data) == step
    # Step 0 is not serialized at all (proto3 default): the caller parses.
    unstepped = event_pb2.Event(wall_time=1.5).SerializeToString()
    assert run_state.record_step(unstepped) is None
    assert run_state.record_step(b"\x12\x03abc") is None


def _write(logdir, steps, paths=PATHS):
    writer = Writer(logdir)
    for step in steps:
        writer.write(
            step,
            {
                metadata.layer_tag("grad_norm"): (
                    [1.0] * len(paths),
                    {"variables": paths},
                    True,
                ),
                metadata.step_tag("loss"): (0.5, None, False),
            },
        )
    writer.close()


def test_run_state_finds_the_last_step_and_the_labels(tmp_path):
    """The largest step of every file, and the layer tags' variable paths."""
    logdir = str(tmp_path / "run")
    _write(logdir, range(1, 2001))
    _write(logdir, [2500, 2400])
    assert run_state.run_state(logdir) == (2500, PATHS)
    assert run_state.run_state(str(tmp_path / "missing")) == (0, None)


def test_a_record_being_written_is_not_read(tmp_path):
    """A file cut inside its last record: the records before it count."""
    logdir = str(tmp_path / "run")
    _write(logdir, [1, 2, 3])
    (name,) = run_state.event_files(logdir)
    path = os.path.join(logdir, name)
    with open(path, "rb+") as f:
        f.truncate(os.path.getsize(path) - 5)
    assert run_state.run_state(logdir) == (2, PATHS)


def test_other_labels_go_to_the_first_free_or_matching_subfolder(tmp_path):
    """variables-2 holds other labels: variables-3; it holds these: variables-2."""
    base = str(tmp_path / "run")
    _write(os.path.join(base, "variables-2"), [7], paths=["other/kernel"])
    folder, last = run_state.folder_for_labels(base, PATHS)
    assert folder == os.path.join(base, "variables-3") and last == 0
    _write(folder, [9])
    assert run_state.folder_for_labels(base, PATHS) == (folder, 9)

"""CPU time and event bytes of the callback's writer thread, per logged step.

Fits seed 003's 784-20-20-10 MLP (16 k parameters, batch 200, a cached
``tf.data`` pipeline of 200 steps an epoch) with ``GradientHealthCallback`` and
reports, per logged step:

* the writer thread's CPU time during the timed epochs (``time.thread_time``
  around each of its tasks: reading the ring, reducing, writing, flushing; the
  live diagnosis is off), and the part spent in the summary writer;
* the event-file bytes;
* the CPU time of reducing and writing the same blocks of step rows again,
  replayed alone after the fit into a fresh reducer and run (process CPU
  time, so that work TensorFlow runs on its own threads counts too), the
  best of a few replays; ``--profile`` prints the first replay's profile.

The thread CPU time is what the writer takes from training on a machine whose
cores are all busy; the replay is the steadiest figure on a shared machine.
The first epoch is a warm-up (tracing), not timed.

Usage::

    python benchmarks/writer_cost.py                    # update_freq=1, 3 epochs
    python benchmarks/writer_cost.py --update-freq auto --epochs 5
"""

from __future__ import annotations

import argparse
import copy
import cProfile
import os
import pstats
import sys
import tempfile
import threading
import time


def _parse():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3, help="epochs of 200 steps")
    parser.add_argument("--update-freq", default="1", help="an int, auto or epoch")
    parser.add_argument("--replays", type=int, default=3)
    parser.add_argument(
        "--profile", action="store_true", help="profile the first replay (cProfile)"
    )
    return parser.parse_args()


ARGS = _parse() if __name__ == "__main__" else None

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(_HERE))
sys.path.insert(0, _HERE)
import overhead  # noqa: E402  (the benchmark models)

from tb_gradplugin import (  # noqa: E402
    GradientHealthCallback,
    host_pipeline,
    reader,
    reducer,
    summary,
)
from tb_gradplugin.event_writer import EventWriter  # noqa: E402

_, BATCH, STEPS, _, _ = overhead.MODELS["mlp16k"]


class _Clock:
    """Thread CPU seconds spent in wrapped functions, per thread-local nesting."""

    def __init__(self):
        self.seconds: dict[str, float] = {}
        self._local = threading.local()

    def wrap(self, owner, name: str, label: str) -> None:
        original = getattr(owner, name)

        def timed(*args, **kwargs):
            depth = getattr(self._local, label, 0)
            setattr(self._local, label, depth + 1)
            start = time.thread_time()
            try:
                return original(*args, **kwargs)
            finally:
                setattr(self._local, label, depth)
                if not depth:
                    spent = time.thread_time() - start
                    self.seconds[label] = self.seconds.get(label, 0.0) + spent

        setattr(owner, name, timed)


def _model():
    """Seed 003's MLP, compiled as ``overhead.py`` compiles it."""
    keras.utils.set_random_seed(0)
    model = overhead.MODELS["mlp16k"][0]()
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    return model


def _data():
    x, y = overhead._data("flat", BATCH * STEPS)
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(BATCH).cache()


def _logged_steps(logdir: str) -> int:
    run = reader.read_run(
        reader.provider_for_logdir(os.path.dirname(logdir)), os.path.basename(logdir)
    )
    series = run.scalars.get("step/grad_norm")
    return len(series.steps) if series is not None else 0


def _bytes(logdir: str) -> int:
    return sum(
        os.path.getsize(os.path.join(root, f))
        for root, _, files in os.walk(logdir)
        for f in files
    )


def _replay(warm_calls, calls, make, logdir: str, profile: bool) -> float:
    """Process CPU seconds of reducing and writing the recorded blocks again.

    The warm-up epoch's calls go first, untimed (they trace the writer's
    functions, if any), then the timed epochs' calls.
    """
    red = make()
    writer = EventWriter(logdir)
    red.set_writer(writer, lambda: TAGS)
    for name, args, kw in warm_calls:
        getattr(red, name)(*args, **kw)
    profiler = cProfile.Profile() if profile else None
    start = time.process_time()
    if profiler:
        profiler.enable()
    for name, args, kw in calls:
        getattr(red, name)(*args, **kw)
    writer.flush()
    seconds = time.process_time() - start
    if profiler:
        profiler.disable()
        pstats.Stats(profiler).sort_stats("tottime").print_stats(25)
    writer.close()
    return seconds


TAGS: dict[str, bytes] = {}


def main() -> None:
    args = ARGS
    freq = args.update_freq
    freq = int(freq) if freq.isdigit() else freq
    clock = _Clock()
    for name in ("_process", "_epoch_task", "_final_task"):
        clock.wrap(host_pipeline.Monitor, name, "writer thread")
    for name in ("write", "flush_blocks"):
        clock.wrap(summary.StepSummaryWriter, name, "of which writing summaries")
    calls: list[tuple[str, tuple, dict]] = []
    originals = {}
    depth = threading.local()
    for name in ("add_rows", "epoch_end", "release"):
        originals[name] = getattr(reducer.BlockReducer, name)

        def recording(self, *call, _name=name, **kw):
            # Only the calls from the monitor: add_rows releases by itself.
            if not getattr(depth, "n", 0):
                calls.append((_name, copy.deepcopy(call), kw))
            depth.n = getattr(depth, "n", 0) + 1
            try:
                return originals[_name](self, *call, **kw)
            finally:
                depth.n -= 1

        setattr(reducer.BlockReducer, name, recording)
    loads = os.getloadavg()
    with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR")) as workdir:
        logdir = os.path.join(workdir, "fit")
        model = _model()
        cb = GradientHealthCallback(logdir, update_freq=freq, on_flag=None)
        data = _data()
        # One warm-up epoch: tracing the step (and the writer's functions) is
        # a fixed cost, not a per-step one.
        model.fit(data, epochs=1, verbose=0, callbacks=[cb])
        clock.seconds.clear()
        warm_calls, calls[:] = list(calls), []
        warm, warm_size = _logged_steps(logdir), _bytes(logdir)
        wall, cpu = time.perf_counter(), time.process_time()
        model.fit(data, epochs=args.epochs, verbose=0, callbacks=[cb])
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        cb.close()
        measured = dict(clock.seconds)
        logged = _logged_steps(logdir) - warm
        size = _bytes(logdir) - warm_size
        for name, fn in originals.items():
            setattr(reducer.BlockReducer, name, fn)
        old = cb._monitor.reducer
        TAGS.update(old.tags)

        def make():
            red = reducer.BlockReducer(
                old.layout,
                old.packing,
                old.components,
                freq,
                old.window,
                old.mixed_precision,
            )
            if old.output.optimizers:
                red.output.set_optimizers(old.output.optimizers)
            return red

        replays = [
            _replay(
                warm_calls,
                calls,
                make,
                os.path.join(workdir, f"replay{i}"),
                args.profile and i == 0,
            )
            for i in range(args.replays)
        ]
    steps = args.epochs * STEPS
    print(
        f"mlp16k, update_freq={freq}, {steps} steps timed after a warm-up epoch, "
        f"{logged} logged; load average "
        f"{loads[0]:.2f} at the start, {os.getloadavg()[0]:.2f} at the end"
    )
    print(f"fit: {1e3 * wall / steps:.2f} ms/step wall, {1e3 * cpu / steps:.2f} CPU")
    for label, seconds in measured.items():
        print(f"{label}: {1e6 * seconds / logged:.1f} µs thread CPU per logged step")
    print(
        f"replayed alone (reducing and writing): {1e6 * min(replays) / logged:.1f} "
        f"µs process CPU per logged step (best of {len(replays)}: "
        + ", ".join(f"{1e6 * r / logged:.1f}" for r in replays)
        + ")"
    )
    print(f"event bytes: {size / logged:.0f} per logged step ({size} in all)")


if __name__ == "__main__":
    main()

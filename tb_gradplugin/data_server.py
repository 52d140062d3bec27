"""Reading through TensorBoard's Rust data server, the way TensorBoard does, faster.

``tensorboard --load_fast=true`` serves its data from the Rust data server that the
``tensorboard-data-server`` package ships. Its gRPC answers hold each series as packed
arrays; :func:`read_points` hands them to numpy in one call each, where TensorBoard's
``GrpcDataProvider`` builds one Python object per point. :func:`data_server_provider`
loads a log directory once with that server, for the command line. Imports no
TensorFlow.
"""

from __future__ import annotations

import contextlib
import operator
import os
import subprocess
import tempfile
import threading
from collections.abc import Iterator

import grpc
import numpy as np
from tensorboard.compat.proto import types_pb2
from tensorboard.data import grpc_provider, server_ingester
from tensorboard.data import provider as tb_provider
from tensorboard.data.proto import data_provider_pb2

from tb_gradplugin import metadata

_BLOCK_TAG_PREFIX = metadata.TAG_PREFIX + "block/"


def float32_rows(contents: list[bytes]) -> np.ndarray | None:
    """Float32 ``tensor_content`` bytes of one length as ``[n, k]``, in one call.

    Args:
        contents: Each value's ``tensor_content``.

    Returns:
        float32 ``[len(contents), k]``, or ``None`` when there are none, one is
        empty or their lengths differ (the caller reads them one by one).
    """
    if not contents or not contents[0] or len(set(map(len, contents))) != 1:
        return None
    flat = np.frombuffer(b"".join(contents), dtype=np.float32)
    return flat.reshape(len(contents), -1)


def _tensor_matrix(protos) -> np.ndarray | None:
    """Stacks float32 ``TensorProto``s of one shape without a numpy call per proto.

    A tag's dtype is fixed by its writer, so the first proto's dtype stands for
    all. ``None`` for any other encoding (the caller reads it the slow way).
    """
    if not protos or protos[0].dtype != types_pb2.DT_FLOAT:
        return None
    rows = float32_rows(list(map(operator.attrgetter("tensor_content"), protos)))
    return None if rows is None else rows.astype(np.float64)


Points = tuple[np.ndarray, np.ndarray, np.ndarray]
"""``(steps, wall_times, values)`` of one series."""


def read_points(
    provider, kind: str, experiment_id: str, run: str, tags, downsample: int
) -> dict[str, Points] | None:
    """Reads one run's series from TensorBoard's Rust data server, decoded by numpy.

    ``GrpcDataProvider.read_*`` builds one Python object per point (and calls
    ``make_ndarray`` per tensor): 100,000 steps of a 100-variable tensor took
    seconds there. The wire format holds steps, wall times and scalar values as
    packed arrays, which numpy takes in one call each. Per-step tensors are
    asked for one tag per call, as such a tag alone is ~42 MB of the 256 MB a
    TensorBoard gRPC answer may hold; block summaries share one call.

    Args:
        provider: A data provider.
        kind: ``"scalar"`` or ``"tensor"``.
        experiment_id: The experiment.
        run: The run.
        tags: The tags to read.
        downsample: Most points per series.

    Returns:
        Tag -> ``(steps, wall_times, values)``; ``None`` when the provider is not
        a gRPC one, a call fails or a tensor is not float32 of one shape (the
        caller then uses the public API, which also turns gRPC errors into
        TensorBoard's).
    """
    found = read_points_of_runs(provider, kind, experiment_id, [run], tags, downsample)
    return None if found is None else found.get(run, {})


def read_points_of_runs(
    provider, kind: str, experiment_id: str, runs, tags, downsample: int
) -> dict[str, dict[str, Points]] | None:
    """Reads the same tags of several runs in one call per group of tags.

    As :func:`read_points`, for many runs at once: the health table reads the
    scalars of 200 runs in one call instead of 200 (a call costs 10-40 ms on
    the Rust data server whatever it holds). Only for series small enough to
    share an answer (scalars, block summaries).

    Args:
        provider: A data provider.
        kind: ``"scalar"`` or ``"tensor"``.
        experiment_id: The experiment.
        runs: The runs.
        tags: The tags to read (a run without one of them is skipped for it).
        downsample: Most points per series.

    Returns:
        Run -> tag -> ``(steps, wall_times, values)``, or ``None`` as for
        :func:`read_points`.
    """
    stub = getattr(provider, "_stub", None)
    if not isinstance(provider, grpc_provider.GrpcDataProvider) or stub is None:
        return None
    if kind == "scalar":
        new_request, call = data_provider_pb2.ReadScalarsRequest, stub.ReadScalars
        # One call a tag, all under way at once: the server answers them on
        # several threads (7 series of 100,000 steps: 93-283 ms in one call,
        # 75-178 ms so, measured on 2 cores).
        groups = [[t] for t in sorted(tags)]
    else:
        new_request, call = data_provider_pb2.ReadTensorsRequest, stub.ReadTensors
        # Block summaries are small (a row per block), and a call costs
        # 10-150 ms on a busy machine: they share one.
        small = sorted(t for t in tags if t.startswith(_BLOCK_TAG_PREFIX))
        groups = [[t] for t in sorted(tags) if t not in small] + [small] * bool(small)
    out: dict[str, dict[str, Points]] = {}
    pending = []
    for group in groups:
        req = new_request()
        req.experiment_id = experiment_id
        req.plugin_filter.plugin_name = metadata.PLUGIN_NAME
        req.run_tag_filter.runs.names[:] = sorted(runs)
        req.run_tag_filter.tags.names[:] = group
        req.downsample.num_points = downsample
        pending.append(call.future(req))
    for answer in pending:
        try:
            res = answer.result()
        except grpc.RpcError:
            for other in pending:
                other.cancel()
            return None
        for run_entry in res.runs:
            found = out.setdefault(run_entry.run_name, {})
            for tag_entry in run_entry.tags:
                d = tag_entry.data
                values = (
                    np.array(d.value, dtype=np.float64)
                    if kind == "scalar"
                    else _tensor_matrix(d.value)
                )
                if values is None:
                    return None
                found[tag_entry.tag_name] = (
                    np.array(d.step, dtype=np.int64),
                    np.array(d.wall_time, dtype=np.float64),
                    values,
                )
    return out


DATA_SERVER_LOADED = "Finished load cycle"
"""The line the data server logs (with ``-v``) when a load cycle is done."""


@contextlib.contextmanager
def data_server_provider(
    logdir: str | os.PathLike,
    timeout_s: float = 3600.0,
    log_lines: list[str] | None = None,
) -> Iterator[tb_provider.DataProvider]:
    """Loads a log directory once with TensorBoard's Rust data server.

    The ``tensorboard-data-server`` package ships the server that
    ``tensorboard --load_fast=true`` runs. It reads event files several times
    faster than TensorBoard's Python loader (:func:`provider_for_logdir`), and
    :func:`tb_gradplugin.reader.read_run` decodes its answers with
    numpy (:func:`read_points`). The server loads the
    directory once (``--reload=once``), keeps every point, and is stopped when
    the block exits.

    Args:
        logdir: The log directory.
        timeout_s: Most seconds to wait for the load. Defaults to 3600.
        log_lines: When given, the server's log lines up to the end of the load
            are appended to it (a damaged event file is logged as
            ``WARN ... Read error in PATH: ...``). Defaults to ``None``.

    Yields:
        A data provider over the loaded runs.

    Raises:
        FileNotFoundError: When ``logdir`` is not a directory.
        tensorboard.data.server_ingester.NoDataServerError: When no data server
            binary is installed.
        TimeoutError: When the server does not finish loading in time.
        OSError: When the server exits before it finished loading.
    """
    path = os.fspath(logdir)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"log directory not found: {path}")
    binary = server_ingester.get_server_binary()
    with tempfile.TemporaryDirectory(prefix="gradient_health_") as tmp:
        port_file = os.path.join(tmp, "port")
        proc = subprocess.Popen(
            [
                binary.path,
                f"--logdir={path}",
                "--reload=once",
                "--samples-per-plugin=gradient_health=all",
                "--host=localhost",
                "--port=0",
                f"--port-file={port_file}",
                "--die-after-stdin",
                "--verbose",
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            lines = _wait_loaded(proc, timeout_s)
            if log_lines is not None:
                log_lines.extend(lines)
            with open(port_file) as f:
                addr = f"localhost:{int(f.read())}"
            channel = grpc.insecure_channel(
                addr, options=[("grpc.max_receive_message_length", 256 << 20)]
            )
            with channel:
                yield grpc_provider.GrpcDataProvider(
                    addr, grpc_provider.make_stub(channel)
                )
        finally:
            proc.stdin.close()  # --die-after-stdin: the server exits
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            proc.stderr.close()


def _wait_loaded(proc: subprocess.Popen, timeout_s: float) -> list[str]:
    """Reads the server's log until its load cycle is done; returns its lines."""
    done = threading.Event()
    lines: list[str] = []

    def watch():
        for line in proc.stderr:
            lines.append(line)
            if DATA_SERVER_LOADED in line:
                done.set()
                break
        done.set()

    threading.Thread(target=watch, daemon=True).start()
    if not done.wait(timeout_s):
        raise TimeoutError(f"the data server did not load in {timeout_s:.0f} s")
    if not any(DATA_SERVER_LOADED in line for line in lines):
        tail = "".join(lines[-3:]).strip()
        raise OSError(f"the data server stopped before loading: {tail[-300:]}")
    return lines

"""Writes synthetic gradient-health runs in the callback's format, without TensorFlow.

The helper writes real event files with TensorBoard's own writer
(``EventFileWriter``) and the package's summary metadata
(:func:`tb_gradplugin.metadata.create_summary_metadata`): float32 values, the
data class set, the plugin content on the first write of each tag only, as
``tf.summary`` does. The tags and contents follow ``docs/INTERFACES.md``:

* ``step/<stat>`` float32 scalars, one point per logged step;
* ``layer/<stat>`` float32 tensors ``[n_variables]`` whose content names the
  variables (``{"variables": [...]}``);
* any other scalar or tensor tag through ``scalars=`` and ``tensors=``.

:func:`build_run` returns the same data as an in-memory
:class:`tb_gradplugin.reader.RunData`, for tests of the rules that need no
files. :func:`truncate_event_file` and :func:`write_garbage_event_file` make the
partial and corrupt files that readers must survive.

Example:
    >>> import numpy as np
    >>> from tests import eventfiles
    >>> steps = np.arange(1, 101)
    >>> path = eventfiles.write_run(
    ...     "/tmp/logs", "exp1", steps=steps, loss=np.exp(-steps / 50),
    ...     grad_norm=np.ones(100), param_norm=np.full(100, 10.0))
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.summary.writer.event_file_writer import EventFileWriter
from tensorboard.util import tensor_util

from tb_gradplugin import metadata, reader

__all__ = [
    "build_run",
    "points",
    "truncate_event_file",
    "write_garbage_event_file",
    "write_run",
]

# Keyword arguments of write_run/build_run that are per-step scalars.
STEP_KEYS = tuple(metadata.STEP_SCALARS)

# A series given to ``scalars=``/``tensors=``: values aligned with ``steps``, or
# ``(steps, values)``, or ``(steps, values, content)``.
SeriesSpec = Any


def _as_points(
    spec: SeriesSpec, steps: np.ndarray
) -> tuple[np.ndarray, np.ndarray, dict]:
    content: dict = {}
    if isinstance(spec, tuple):
        if len(spec) == 3:
            own_steps, values, content = spec
        else:
            own_steps, values = spec
        own_steps = np.asarray(own_steps, dtype=np.int64).reshape(-1)
    else:
        own_steps, values = steps, spec
    values = np.asarray(values, dtype=np.float32)
    if values.shape[0] != own_steps.shape[0]:
        raise ValueError(
            f"{values.shape[0]} values for {own_steps.shape[0]} steps; they must match"
        )
    return own_steps, values, dict(content or {})


def points(
    *,
    steps: Sequence[int] | np.ndarray,
    variables: Sequence[str] | None = None,
    layers: Mapping[str, Any] | None = None,
    scalars: Mapping[str, SeriesSpec] | None = None,
    tensors: Mapping[str, SeriesSpec] | None = None,
    **step_values: Any,
) -> tuple[dict[str, tuple], dict[str, tuple]]:
    """Normalises the series of a synthetic run.

    Args:
        steps: The logged steps (the first step is 1).
        variables: Variable paths, in order, of the ``layers`` tensors. Defaults
            to ``None``: ``var0``, ``var1``, ...
        layers: ``{stat: array [len(steps), n_variables]}`` for ``layer/<stat>``.
            Defaults to ``None``: none.
        scalars: Other scalar series by key without the prefix (e.g.
            ``"hessian/min_ratio"``). Defaults to ``None``.
        tensors: Other tensor series by key without the prefix. Defaults to
            ``None``.
        **step_values: Per-step scalars by stat name (``loss``, ``grad_norm``,
            ... as in :data:`tb_gradplugin.metadata.STEP_SCALARS`), aligned with
            ``steps``; ``None`` leaves a series out.

    Returns:
        ``(scalars, tensors)``, each ``{key: (steps, float32 values, content)}``.

    Raises:
        ValueError: On an unknown step stat or lengths that do not match.
    """
    steps = np.asarray(steps, dtype=np.int64).reshape(-1)
    out_s: dict[str, tuple] = {}
    out_t: dict[str, tuple] = {}
    for stat, values in step_values.items():
        if values is None:
            continue
        if stat not in metadata.STEP_SCALARS:
            raise ValueError(f"unknown per-step scalar {stat!r}")
        out_s[f"step/{stat}"] = _as_points(values, steps)
    for key, spec in (scalars or {}).items():
        out_s[key] = _as_points(spec, steps)
    for stat, values in (layers or {}).items():
        arr = np.asarray(values, dtype=np.float32)
        if arr.ndim != 2 or arr.shape[0] != steps.shape[0]:
            raise ValueError(f"layers[{stat!r}] must have shape [len(steps), n_vars]")
        names = (
            list(variables) if variables else [f"var{i}" for i in range(arr.shape[1])]
        )
        if len(names) != arr.shape[1]:
            raise ValueError(f"{len(names)} variables for {arr.shape[1]} columns")
        out_t[f"layer/{stat}"] = (steps, arr, {"variables": names})
    for key, spec in (tensors or {}).items():
        own_steps, values, content = _as_points(spec, steps)
        if variables and "variables" not in content and key.startswith("layer"):
            content["variables"] = list(variables)
        out_t[key] = (own_steps, values, content)
    return out_s, out_t


def build_run(run: str = "run", **kwargs: Any) -> reader.RunData:
    """Builds a run in memory, as :func:`reader.read_run` would return it.

    Values pass through float32 as in the event files, then become float64.

    Args:
        run: The run name. Defaults to ``"run"``.
        **kwargs: The series, as for :func:`points`.

    Returns:
        The run's data.
    """
    scalars, tensors = points(**kwargs)
    data = reader.RunData(run=run)
    for key, (steps, values, content) in scalars.items():
        data.scalars[key] = reader.Series(
            steps=steps.astype(np.int64),
            values=values.astype(np.float64).reshape(-1),
            wall_times=np.zeros(steps.shape[0]),
            content={"version": metadata.CONTENT_VERSION, **content},
        )
    for key, (steps, values, content) in tensors.items():
        vals = values.astype(np.float64).reshape(steps.shape[0], -1)
        data.tensors[key] = reader.Series(
            steps=steps.astype(np.int64),
            values=vals,
            wall_times=np.zeros(steps.shape[0]),
            content={"version": metadata.CONTENT_VERSION, **content},
        )
    return data


def write_run(
    logdir: str | os.PathLike,
    run: str = "",
    *,
    wall_time: float | None = None,
    filename_suffix: str = "",
    **kwargs: Any,
) -> str:
    """Writes a synthetic run as a real event file.

    Args:
        logdir: The log directory (TensorBoard's ``--logdir``).
        run: The run's folder relative to ``logdir``; ``""`` writes into
            ``logdir`` itself (the run ``.``). Defaults to ``""``.
        wall_time: Wall time of the first event in seconds since the epoch; each
            step adds one second. Defaults to ``None``: now.
        filename_suffix: Appended to the event file's name. Defaults to ``""``.
        **kwargs: The series, as for :func:`points` (``steps=``, ``loss=``,
            ``grad_norm=``, ``variables=``, ``layers=``, ``scalars=``,
            ``tensors=``, ...).

    Returns:
        The path of the event file written.

    Example:
        >>> write_run(tmp, "exp1", steps=[1, 2], loss=[0.7, 0.6])  # doctest: +SKIP
    """
    scalars, tensors = points(**kwargs)
    directory = os.path.join(os.fspath(logdir), run) if run else os.fspath(logdir)
    os.makedirs(directory, exist_ok=True)
    start = time.time() if wall_time is None else float(wall_time)
    rows = []
    for is_tensor, series in ((False, scalars), (True, tensors)):
        for key, (steps, values, content) in series.items():
            description = _describe(key)
            meta = metadata.create_summary_metadata(
                description, content, tensor=is_tensor
            )
            for i, step in enumerate(steps):
                rows.append((int(step), key, is_tensor, values[i], meta, i == 0))
    rows.sort(key=lambda r: (r[0], r[1]))
    writer = EventFileWriter(directory, filename_suffix=filename_suffix)
    try:
        for step, key, _is_tensor, value, meta, first in rows:
            proto = tensor_util.make_tensor_proto(np.asarray(value, dtype=np.float32))
            summary_value = summary_pb2.Summary.Value(
                tag=metadata.TAG_PREFIX + key, tensor=proto
            )
            if first:
                summary_value.metadata.CopyFrom(meta)
            event = event_pb2.Event(
                wall_time=start + step,
                step=step,
                summary=summary_pb2.Summary(value=[summary_value]),
            )
            writer.add_event(event)
    finally:
        writer.close()
    return writer._file_name  # noqa: SLF001 - TensorBoard exposes no getter


def _describe(key: str) -> str:
    group, _, stat = key.partition("/")
    table = {
        "step": metadata.STEP_SCALARS,
        "layer": metadata.LAYER_STATS,
        "window": metadata.WINDOW_SCALARS,
        "window_layer": metadata.WINDOW_LAYER_STATS,
        "hessian": metadata.HESSIAN_SCALARS,
        "hessian_layer": metadata.HESSIAN_LAYER_STATS,
    }.get(group, {})
    return table.get(stat, key)


def truncate_event_file(path: str | os.PathLike, drop_bytes: int = 7) -> None:
    """Cuts the last bytes off an event file, as a crash mid-write leaves it.

    Args:
        path: The event file.
        drop_bytes: How many bytes to remove from its end. Defaults to ``7``.
    """
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        f.truncate(max(0, size - drop_bytes))


def write_garbage_event_file(
    directory: str | os.PathLike, content: bytes = b"\x00not an event file\xff" * 8
) -> str:
    """Writes a file named like an event file whose records are not valid.

    Args:
        directory: Where to put it (created if missing).
        content: The bytes to write. Defaults to a short run of garbage.

    Returns:
        The path of the file.
    """
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(
        os.fspath(directory), f"events.out.tfevents.{int(time.time()):010d}.corrupt"
    )
    with open(path, "wb") as f:
        f.write(content)
    return path

"""Writing the gradient-health summaries (TensorFlow, on the writer thread).

* :class:`StepSummaryWriter` writes the logged steps' rows and the closed
  windows packed by ``reducer.py``, in step order, from one graph function per
  writer, and every block of logged steps the block summaries
  (``block_summaries.py``);
* :func:`tag_metadata` makes every per-step and window tag's metadata;
* :func:`write_loss_components` and :func:`write_trajectory` write the rare
  values (per-epoch components, a first step's) eagerly; the curvature's are
  written by ``curvature.write_summary``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import tensorflow as tf

from tb_gradplugin import blocks, metadata, ring, stats
from tb_gradplugin.block_summaries import BlockSummaries

# Column orders: the tag families of metadata.py, in their order. The loss scale
# and skipped steps are written only under mixed precision.
STEP_STATS = tuple(metadata.STEP_SCALARS)
MIXED_PRECISION_ONLY = ("skipped_steps", "loss_scale")
LAYER_STATS = tuple(metadata.LAYER_STATS)
WINDOW_LAYER_STATS = tuple(metadata.WINDOW_LAYER_STATS)


OPTIMIZER_STATS = tuple(metadata.OPTIMIZER_STATS)


def row_packing(
    num_variables: int, num_components: int, num_optimizers: int = 0
) -> ring.Packing:
    """The columns of a packed logged row.

    Scalars first, then the per-variable blocks, then one block per
    :data:`OPTIMIZER_STATS` entry of ``num_optimizers`` columns (written when
    several optimizers step the model).
    """
    return ring.Packing(
        [(name, 1) for name in STEP_STATS]
        + [("components", num_components), ("loss_known", 1)]
        + [("v_" + name, num_variables) for name in LAYER_STATS]
        + [("o_" + name, num_optimizers) for name in OPTIMIZER_STATS]
    )


def window_packing(num_variables: int, num_slices: int) -> ring.Packing:
    """The columns of a packed closed window."""
    return ring.Packing(
        [(name, 1) for name in metadata.WINDOW_SCALARS]
        + [("layer_" + name, num_variables) for name in WINDOW_LAYER_STATS]
        + [("slice_" + name, num_slices) for name in metadata.SLICE_STATS]
    )


class StepSummaryWriter:
    """Writes packed logged rows and closed windows as summaries, oldest first.

    Args:
        layout: The variables' layout.
        components: Names of the per-step loss components in the rows.
        mixed_precision: Whether the loss scale and skipped steps are written.
    """

    def __init__(
        self, layout: stats.Layout, components: Sequence[str], mixed_precision: bool
    ):
        self.layout = layout
        self.components = list(components)
        self.mixed_precision = bool(mixed_precision)
        self.optimizers: list[str] = []
        self.rows = row_packing(layout.num_variables, len(self.components))
        self.blocks = self._block_summaries()
        self.windows = window_packing(layout.num_variables, len(layout.slices))
        self.writer = None
        self._tags_fn: Callable[[], Mapping[str, bytes]] | None = None
        self.tags: dict[str, bytes] = {}
        self._write_fn = None
        self._meta: dict[str, tf.Tensor] = {}
        self._described = {"rows": False, "windows": False}
        self._blocks_described: set[str] = set()

    def _block_summaries(self) -> BlockSummaries:
        """The block summaries of every per-step key this writer writes."""
        index = self.rows.index
        columns: dict[str, int | slice] = {}
        for stat in STEP_STATS:
            if self.mixed_precision or stat not in MIXED_PRECISION_ONLY:
                columns[f"step/{stat}"] = index[stat].start
        for stat in LAYER_STATS:
            columns[f"layer/{stat}"] = index["v_" + stat]
        return BlockSummaries(columns, {"step/loss": index["loss_known"].start})

    def set_writer(self, writer, tags_fn: Callable[[], Mapping[str, bytes]]) -> None:
        """Sets the summary writer and what makes the tags' metadata (lazily).

        Args:
            writer: A ``tf.summary`` writer.
            tags_fn: Returns ``{tag: serialized metadata}``; called at the
                first write, once the step has been traced.
        """
        if writer is not self.writer:
            self.writer = writer
            self._tags_fn = tags_fn
            self.tags = {}
            self._write_fn = None
            self._described = {"rows": False, "windows": False}
            self._blocks_described = set()

    def set_optimizers(self, names: Sequence[str]) -> None:
        """Adds per-optimizer columns to the rows (before the first row is packed).

        Args:
            names: The optimizers' attribute names, in column order.
        """
        self.optimizers = list(names)
        self.rows = row_packing(
            self.layout.num_variables, len(self.components), len(self.optimizers)
        )
        # The optimizers' columns come last: the blocks' columns stay as they are.
        self._write_fn = None

    def write(self, rows, row_steps, windows, window_steps) -> None:
        """Writes packed logged rows and closed windows, oldest first.

        Args:
            rows: ``[n, self.rows.width]`` float32.
            row_steps: ``[n]`` int64.
            windows: ``[m, self.windows.width]`` float32.
            window_steps: ``[m]`` int64.
        """
        if self.writer is None:
            return
        if not self.tags:
            self.tags = dict(self._tags_fn())
        if self._write_fn is None:
            self._write_fn = tf.function(
                self._write_all, autograph=False
            ).get_concrete_function(
                tf.TensorSpec([None, self.rows.width], tf.float32),
                tf.TensorSpec([None], tf.int64),
                tf.TensorSpec([None, self.windows.width], tf.float32),
                tf.TensorSpec([None], tf.int64),
                tf.TensorSpec([], tf.bool),
                tf.TensorSpec([], tf.bool),
            )
        self._write_fn(
            tf.constant(rows, tf.float32),
            tf.constant(row_steps, tf.int64),
            tf.constant(windows, tf.float32),
            tf.constant(window_steps, tf.int64),
            tf.constant(not self._described["rows"]),
            tf.constant(not self._described["windows"]),
        )
        self._described["rows"] |= bool(len(row_steps))
        self._described["windows"] |= bool(len(window_steps))
        if len(row_steps):
            self._write_blocks(self.blocks.add(np.asarray(rows), row_steps))

    def flush_blocks(self) -> None:
        """Writes the summary of the unfinished block (at the end of a ``fit``)."""
        if self.writer is not None:
            self._write_blocks(self.blocks.flush())

    def _write_blocks(self, done) -> None:
        """Writes finished block summaries, eagerly: a few events per block."""
        if not done:
            return
        with self.writer.as_default():
            for key, step, value in done:
                tag = metadata.key_tag(blocks.block_key(key))
                meta = b""
                if tag not in self._blocks_described:
                    self._blocks_described.add(tag)
                    meta = self._block_metadata(key)
                tf.summary.write(tag, tf.constant(value), step=step, metadata=meta)

    def _block_metadata(self, key: str) -> bytes:
        content: dict[str, Any] = {"key": key, "block_steps": self.blocks.block_steps}
        if metadata.is_tensor_key(key):
            content["variables"] = self.layout.paths
        return metadata.create_summary_metadata(
            f"block summary of {key} ({', '.join(blocks.BLOCK_ROWS)})",
            content,
            tensor=True,
        ).SerializeToString()

    def _write_all(
        self, rows, row_steps, windows, window_steps, describe_rows, describe_windows
    ):
        # A tag's metadata goes with its first event only, as TF1's FileWriter
        # does; both TensorBoard loaders keep the first (parsing it again for
        # every event measured ~1 µs per scalar write, more per layer tensor).
        self._meta = {
            tag: tf.where(
                describe_windows
                if metadata.is_window_key(metadata.tag_key(tag) or "")
                else describe_rows,
                tf.constant(meta),
                tf.constant(b""),
            )
            for tag, meta in self.tags.items()
        }
        with self.writer.as_default():
            done = self._write_each(rows, row_steps, self._write_row)
            with tf.control_dependencies([done]):
                return self._write_each(windows, window_steps, self._write_window)

    def _write_each(self, rows, steps, write):
        """Writes each packed row at its step, oldest first, in a graph loop."""

        def body(i):
            write(rows[i], steps[i])
            return (i + 1,)

        loop = tf.while_loop(lambda i: i < tf.shape(rows)[0], body, (tf.constant(0),))
        return loop[0]

    def _summary(self, tag, value, step):
        tf.summary.write(tag, value, step=step, metadata=self._meta[tag])

    def _summary_op(self, tag, value, step):
        # Written at some steps only: its first event, whichever it is, must
        # carry the metadata, so every event does.
        return tf.summary.write(tag, value, step=step, metadata=self.tags[tag])

    def _write_row(self, row, step):
        # One unstack per part rather than one slice op per tag.
        width = self.rows.index["loss_known"].stop
        scalars = tf.unstack(row[:width], num=width)
        count, v = len(LAYER_STATS), self.layout.num_variables
        layers = tf.unstack(
            tf.reshape(row[width : width + count * v], [count, v]), num=count
        )
        known = scalars[self.rows.index["loss_known"].start] > 0
        for i, stat in enumerate(STEP_STATS):
            if stat == "loss":
                # No value where the step's loss is unknown (a custom step
                # with no metric named "loss"): no point rather than a 0.
                tf.cond(
                    known,
                    lambda v=scalars[i]: self._summary_op(
                        metadata.step_tag("loss"), v, step
                    ),
                    lambda: tf.constant(False),
                )
            elif self.mixed_precision or stat not in MIXED_PRECISION_ONLY:
                self._summary(metadata.step_tag(stat), scalars[i], step)
        first = self.rows.index["components"].start
        for i, name in enumerate(self.components):
            self._summary(metadata.loss_component_tag(name), scalars[first + i], step)
        for stat, value in zip(LAYER_STATS, layers, strict=True):
            self._summary(metadata.layer_tag(stat), value, step)
        if self.optimizers:
            start = width + count * v
            values = tf.unstack(row[start:], num=self.rows.width - start)
            for j, stat in enumerate(OPTIMIZER_STATS):
                for i, name in enumerate(self.optimizers):
                    value = values[j * len(self.optimizers) + i]
                    self._summary(metadata.optimizer_tag(name, stat), value, step)

    def _write_window(self, row, step):
        index = self.windows.index
        v, s = self.layout.num_variables, len(self.layout.slices)
        width = len(metadata.WINDOW_SCALARS)
        scalars = tf.unstack(row[:width], num=width)
        for stat, value in zip(metadata.WINDOW_SCALARS, scalars, strict=True):
            self._summary(metadata.window_tag(stat), value, step)
        start = index["layer_" + next(iter(WINDOW_LAYER_STATS))].start
        count = len(WINDOW_LAYER_STATS)
        layers = tf.unstack(
            tf.reshape(row[start : start + count * v], [count, v]), num=count
        )
        for stat, value in zip(WINDOW_LAYER_STATS, layers, strict=True):
            self._summary(metadata.window_layer_tag(stat), value, step)
        if not s:
            return
        start = index["slice_" + next(iter(metadata.SLICE_STATS))].start
        count = len(metadata.SLICE_STATS)
        values = tf.unstack(row[start : start + count * s], num=count * s)
        for j, stat in enumerate(metadata.SLICE_STATS):
            for i, sl in enumerate(self.layout.slices):
                self._summary(
                    metadata.slice_tag(sl.name, stat), values[j * s + i], step
                )


def tag_metadata(
    layout: stats.Layout,
    update_freq: int | str,
    window: int | str,
    loss_components: Sequence[str],
    step_components: Sequence[str],
    sparse_variables: Sequence[str] = (),
    optimizers: Mapping[str, Sequence[str]] | None = None,
) -> dict[str, bytes]:
    """The serialized summary metadata of every per-step and window tag.

    Args:
        layout: The variables' layout (names the entries of layer tensors).
        update_freq: The ``update_freq`` in force (the adaptive default's
            choice, an int, or ``"epoch"``).
        window: The variance window.
        loss_components: Every recorded loss component.
        step_components: Those recorded per step (the rest per epoch).
        sparse_variables: Paths of the variables whose gradient arrived as
            ``tf.IndexedSlices`` (rows of a table); listed in the layer tags'
            content as ``"sparse_variables"``. Defaults to none.
        optimizers: ``{optimizer: [paths it updates]}`` when optimizers other
            than ``model.optimizer`` step the model (a GAN's): in the
            ``step/*`` and ``layer/*`` tags' content as ``"optimizers"``; the
            global norms cover all of them, and each optimizer's global norm
            is the root of the summed squares of its paths' ``layer`` norms.
            With two or more, each has its ``optimizer/<name>/<stat>`` tags
            (content ``{"optimizer": name, "variables": paths}``). Defaults to
            ``None``: not written.

    Returns:
        ``{tag: serialized SummaryMetadata}``.
    """
    variables: dict[str, Any] = {
        "variables": layout.paths,
        metadata.SPARSE_VARIABLES: list(sparse_variables),
    }
    common: dict[str, Any] = {"update_freq": update_freq}
    if optimizers:
        common["optimizers"] = {k: list(v) for k, v in optimizers.items()}
    tags: dict[str, Any] = {}
    for stat, text in metadata.STEP_SCALARS.items():
        tags[metadata.step_tag(stat)] = metadata.create_summary_metadata(text, common)
    for stat, text in metadata.LAYER_STATS.items():
        tags[metadata.layer_tag(stat)] = metadata.create_summary_metadata(
            text, {**variables, **common}, tensor=True
        )
    several = optimizers if optimizers and len(optimizers) > 1 else {}
    for name, paths in several.items():
        content = {
            "optimizer": name,
            "variables": list(paths),
            "update_freq": update_freq,
        }
        for stat, text in metadata.OPTIMIZER_STATS.items():
            tags[metadata.optimizer_tag(name, stat)] = metadata.create_summary_metadata(
                text, content
            )
    win = {"window": window}
    for stat, text in metadata.WINDOW_SCALARS.items():
        tags[metadata.window_tag(stat)] = metadata.create_summary_metadata(text, win)
    for stat, text in metadata.WINDOW_LAYER_STATS.items():
        tags[metadata.window_layer_tag(stat)] = metadata.create_summary_metadata(
            text, {**variables, **win}, tensor=True
        )
    for s in layout.slices:
        content = {"variable": s.variable, "start": s.start, "stop": s.stop, **win}
        for stat, text in metadata.SLICE_STATS.items():
            tags[metadata.slice_tag(s.name, stat)] = metadata.create_summary_metadata(
                text, content
            )
    for name in loss_components:
        tags[metadata.loss_component_tag(name)] = metadata.create_summary_metadata(
            f"loss component {name}", {"per_step": name in step_components}
        )
    return {k: v.SerializeToString() for k, v in tags.items()}


def write_loss_components(
    values: Mapping[str, float], step: int, tags: Mapping[str, bytes]
) -> None:
    """Writes loss components at one step, eagerly (under the default writer).

    Args:
        values: ``{component name: value}``, e.g. from the epoch's logs.
        step: The step they belong to.
        tags: :func:`tag_metadata`'s result.
    """
    for name, value in values.items():
        tag = metadata.loss_component_tag(name)
        tf.summary.write(
            tag, tf.constant(value, tf.float32), step=step, metadata=tags[tag]
        )


def _meta(text: str, content: dict[str, Any], tensor: bool = False) -> bytes:
    return metadata.create_summary_metadata(
        text, content, tensor=tensor
    ).SerializeToString()


def write_trajectory(vector: np.ndarray, step: int, seed: int, n_params: int) -> None:
    """Writes one projected parameter snapshot as ``trajectory/projection``.

    Args:
        vector: The projection, shape ``[dim]``.
        step: The optimizer step of the snapshot.
        seed: The projection's seed (the same for every run).
        n_params: Number of projected parameters.
    """
    vector = np.asarray(vector, np.float32).reshape(-1)
    tf.summary.write(
        metadata.TRAJECTORY_TAG,
        tf.constant(vector),
        step=step,
        metadata=_meta(
            "random projection of the trainable parameters",
            {"seed": int(seed), "dim": int(vector.size), "n_params": int(n_params)},
            tensor=True,
        ),
    )

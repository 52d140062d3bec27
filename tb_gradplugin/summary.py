"""Writing the gradient-health summaries (on the writer thread, no TensorFlow op).

* :class:`StepSummaryWriter` writes the logged steps' rows and the closed
  windows packed by ``reducer.py``, in step order, one event per step, and
  every block of logged steps the block summaries (``block_summaries.py``);
* :func:`tag_metadata` makes every per-step and window tag's metadata;
* :func:`write_loss_components` and :func:`write_trajectory` write the rare
  values (per-epoch components, a first step's); the curvature's are written
  by ``curvature.write_summary``.

All of them write through the run's one :class:`~event_writer.EventWriter`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from tb_gradplugin import blocks, metadata, ring, stats
from tb_gradplugin.block_summaries import BlockSummaries
from tb_gradplugin.event_writer import EventWriter, TensorTag, tensor_value

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

    Each logged step is one event holding its row's values and the window it
    closes, if any, encoded from the packed float32 bytes
    (``event_writer.py``): no TensorFlow op per value.

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
        self.writer: EventWriter | None = None
        self._tags_fn: Callable[[], Mapping[str, bytes]] | None = None
        self.tags: dict[str, bytes] = {}
        # (tag, first byte, last byte) of each value in a packed row's bytes.
        self._row_plan: list[tuple[TensorTag, int, int]] | None = None
        self._window_plan: list[tuple[TensorTag, int, int]] = []
        self._loss_tag: TensorTag | None = None
        self._loss_column = self.rows.index["loss"]
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

    def set_writer(
        self, writer: EventWriter | None, tags_fn: Callable[[], Mapping[str, bytes]]
    ) -> None:
        """Sets the event writer and what makes the tags' metadata (lazily).

        Args:
            writer: The run's event writer.
            tags_fn: Returns ``{tag: serialized metadata}``; called at the
                first write, once the step has been traced.
        """
        if writer is not self.writer:
            self.writer = writer
            self._tags_fn = tags_fn
            self.tags = {}
            self._row_plan = None
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
        self._row_plan = None

    def write(self, rows, row_steps, windows, window_steps) -> None:
        """Writes packed logged rows and closed windows, oldest first.

        A step's row and window go in one event.

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
        if self._row_plan is None:
            self._make_plans()
        rows = np.asarray(rows, np.float32)
        known = rows[:, self.rows.index["loss_known"].start] > 0
        events: dict[int, list[bytes]] = {}
        for step, row, loss_known in zip(
            np.asarray(row_steps).tolist(), rows, known.tolist(), strict=True
        ):
            events[step] = self._values(self._row_plan, row.tobytes())
            if loss_known:
                # No value where the step's loss is unknown (a custom step
                # with no metric named "loss"): no point rather than a 0.
                loss = self._loss_tag
                events[step].append(loss.value(row[self._loss_column].tobytes()))
        windows = np.asarray(windows, np.float32)
        for step, row in zip(np.asarray(window_steps).tolist(), windows, strict=True):
            values = self._values(self._window_plan, row.tobytes())
            events.setdefault(step, []).extend(values)
        for step in sorted(events):
            self.writer.write(step, events[step])
        if len(row_steps):
            self._write_blocks(self.blocks.add(rows, np.asarray(row_steps)))

    @staticmethod
    def _values(plan, data: bytes) -> list[bytes]:
        return [tag.value(data[start:stop]) for tag, start, stop in plan]

    def _make_plans(self) -> None:
        """Encodes every row and window tag once, with its columns' bytes."""
        v = (self.layout.num_variables,)

        def tag(name: str, shape=()) -> TensorTag:
            return TensorTag(name, shape, self.tags[name])

        index = self.rows.index
        plan = []
        for stat in STEP_STATS:
            if stat != "loss" and (
                self.mixed_precision or stat not in MIXED_PRECISION_ONLY
            ):
                plan.append((tag(metadata.step_tag(stat)), index[stat]))
        for i, name in enumerate(self.components):
            column = index["components"].start + i
            plan.append((tag(metadata.loss_component_tag(name)), column))
        for stat in LAYER_STATS:
            plan.append((tag(metadata.layer_tag(stat), v), index["v_" + stat]))
        for stat in OPTIMIZER_STATS:
            for i, name in enumerate(self.optimizers):
                column = index["o_" + stat].start + i
                plan.append((tag(metadata.optimizer_tag(name, stat)), column))
        self._row_plan = _byte_plan(plan)
        self._loss_tag = tag(metadata.step_tag("loss"))
        self._loss_column = index["loss"]
        index = self.windows.index
        plan = [
            (tag(metadata.window_tag(stat)), index[stat])
            for stat in metadata.WINDOW_SCALARS
        ]
        for stat in WINDOW_LAYER_STATS:
            plan.append(
                (tag(metadata.window_layer_tag(stat), v), index["layer_" + stat])
            )
        for stat in metadata.SLICE_STATS:
            start = index["slice_" + stat].start
            for i, sl in enumerate(self.layout.slices):
                plan.append((tag(metadata.slice_tag(sl.name, stat)), start + i))
        self._window_plan = _byte_plan(plan)

    def flush_blocks(self) -> None:
        """Writes the summary of the unfinished block (at the end of a ``fit``)."""
        if self.writer is not None:
            self._write_blocks(self.blocks.flush())

    def _write_blocks(self, done) -> None:
        """Writes finished block summaries: one event per step, a few per block."""
        events: dict[int, list[bytes]] = {}
        for key, step, value in done:
            tag = metadata.key_tag(blocks.block_key(key))
            meta = b""
            if tag not in self._blocks_described:
                self._blocks_described.add(tag)
                meta = self._block_metadata(key)
            events.setdefault(step, []).append(tensor_value(tag, value, meta))
        for step in sorted(events):
            self.writer.write(step, events[step])

    def _block_metadata(self, key: str) -> bytes:
        content: dict[str, Any] = {"key": key, "block_steps": self.blocks.block_steps}
        if metadata.is_tensor_key(key):
            content["variables"] = self.layout.paths
        return metadata.create_summary_metadata(
            f"block summary of {key} ({', '.join(blocks.BLOCK_ROWS)})",
            content,
            tensor=True,
        ).SerializeToString()


def _byte_plan(plan) -> list[tuple[TensorTag, int, int]]:
    """``(tag, column or column slice)`` as ``(tag, first byte, last byte)``."""
    out = []
    for tag, column in plan:
        start = column.start if isinstance(column, slice) else column
        out.append((tag, 4 * start, 4 * start + tag.nbytes))
    return out


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
    writer: EventWriter,
    values: Mapping[str, float],
    step: int,
    tags: Mapping[str, bytes],
) -> None:
    """Writes loss components at one step, in one event.

    Args:
        writer: The run's event writer.
        values: ``{component name: value}``, e.g. from the epoch's logs.
        step: The step they belong to.
        tags: :func:`tag_metadata`'s result.
    """
    encoded = []
    for name, value in values.items():
        tag = metadata.loss_component_tag(name)
        encoded.append(tensor_value(tag, value, tags[tag]))
    if encoded:
        writer.write(step, encoded)


def _meta(text: str, content: dict[str, Any], tensor: bool = False) -> bytes:
    return metadata.create_summary_metadata(
        text, content, tensor=tensor
    ).SerializeToString()


def write_trajectory(
    writer: EventWriter, vector: np.ndarray, step: int, seed: int, n_params: int
) -> None:
    """Writes one projected parameter snapshot as ``trajectory/projection``.

    Args:
        writer: The run's event writer.
        vector: The projection, shape ``[dim]``.
        step: The optimizer step of the snapshot.
        seed: The projection's seed (the same for every run).
        n_params: Number of projected parameters.
    """
    vector = np.asarray(vector, np.float32).reshape(-1)
    meta = _meta(
        "random projection of the trainable parameters",
        {"seed": int(seed), "dim": int(vector.size), "n_params": int(n_params)},
        tensor=True,
    )
    writer.write(step, [tensor_value(metadata.TRAJECTORY_TAG, vector, meta)])

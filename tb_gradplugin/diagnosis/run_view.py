"""The series the rules read, looked up and cleaned once per run.

The per-variable series (``layer/*``, ``window_layer/*``) of a long run are most
of its bytes: a 100,000-step, 100-variable one is ~40 MB on the data server's
wire and takes a second or more to read. A :class:`DeferredTensor` reads one only
when a rule needs every step of it; with the series' block summaries
(:mod:`tb_gradplugin.blocks`), the rules first try to decide from them
(:mod:`.coarse`), and read the steps only when the blocks cannot decide.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Mapping

import numpy as np

from tb_gradplugin.reader import RunData, Series

__all__ = ["KEYS", "WEIGHT_NAMES", "DeferredTensor", "RunView", "is_weight"]

# The last path component of variables that hold a layer's weights (as opposed to
# biases and normalisation parameters); the vanishing rule compares the first and
# the last of them, as AutoTrainer compares the first and the last layer.
WEIGHT_NAMES = frozenset(
    {
        "kernel",
        "depthwise_kernel",
        "pointwise_kernel",
        "recurrent_kernel",
        "embeddings",
        "weight",
        "weights",
        "w",
    }
)

# The series :meth:`RunView.of` looks up, by attribute.
_SCALARS = {
    "loss": "step/loss",
    "grad": "step/grad_norm",
    "param": "step/param_norm",
    "update_ratio": "step/update_ratio",
    "nonfinite_grads": "step/nonfinite_grads",
    "nonfinite_loss": "step/nonfinite_loss",
    "skipped": "step/skipped_steps",
}
_TENSORS = {
    "layer_grad": "layer/grad_norm",
    "layer_zero": "layer/zero_fraction",
    "layer_nonfinite": "layer/nonfinite_grads",
    "layer_param": "layer/param_norm",
    "window_zero": "window_layer/zero_fraction",
}
KEYS = frozenset({*_SCALARS.values(), *_TENSORS.values()})
"""Every key a :class:`RunView` reads from the run."""

TENSOR_KEYS = frozenset(_TENSORS.values())
"""The per-variable keys a :class:`RunView` reads, which can be deferred."""


class DeferredTensor:
    """A per-variable series read only when a rule needs every step of it.

    Args:
        load: Reads the series; called at most once. ``None`` for no series.
        content: The series' content from the run's listing (variable names and
            ``sparse_variables``, known without reading a step).
        blocks: Rows of the series' block summaries as
            :func:`tb_gradplugin.blocks.row` gives them, by name (``"count"``,
            ``"min"``, ``"max"``, ``"nonfinite"``: float ``[n_blocks, k]``), for
            blocks that summarise the series' first rows; or a function that
            returns ``(blocks, rows)``, called on the first use of either (a
            rule that never asks about this series reads no block of it).
            Defaults to ``None``: no blocks, every question reads the steps.
        rows: The series' number of rows when the blocks summarise only its
            first ones. Defaults to ``None``: the blocks cover every row.
    """

    def __init__(
        self,
        load: Callable[[], Series | None],
        content: dict,
        blocks: (
            Mapping[str, np.ndarray]
            | Callable[[], tuple[Mapping[str, np.ndarray] | None, int | None]]
            | None
        ) = None,
        rows: int | None = None,
    ):
        self._load = load
        self.content = content
        self._blocks = blocks
        self._rows = rows
        self._lock = threading.Lock()
        self._loaded = False
        self._series: Series | None = None

    def _resolve_blocks(self) -> None:
        with self._lock:
            if callable(self._blocks):  # a mapping once resolved
                self._blocks, self._rows = self._blocks()

    @property
    def blocks(self) -> Mapping[str, np.ndarray] | None:
        """The block rows by name, or ``None`` (read on first use)."""
        self._resolve_blocks()
        return self._blocks

    @property
    def rows(self) -> int | None:
        """The rows when the blocks cover only the first ones, else ``None``."""
        self._resolve_blocks()
        return self._rows

    @classmethod
    def of(cls, series: Series | None) -> DeferredTensor:
        """Wraps a series already read (no blocks needed)."""
        return cls(lambda: series, {} if series is None else series.content)

    @property
    def names(self) -> list[str]:
        """The variable names, from the content."""
        return list(self.content.get("variables", []))

    @property
    def loaded(self) -> bool:
        """Whether the steps were read."""
        return self._loaded

    def get(self) -> Series | None:
        """Every step of the series (read on the first call)."""
        with self._lock:
            if not self._loaded:
                self._series = self._load()
                self._loaded = True
            return self._series

    def before(self, end: int) -> DeferredTensor:
        """The steps before ``end``; the blocks no longer match, so none."""
        return DeferredTensor(lambda: _before(self.get(), end), self.content)


def is_weight(path: str) -> bool:
    """Whether a variable path names a layer's weights (see :data:`WEIGHT_NAMES`).

    Args:
        path: A variable path such as ``"dense_1/kernel"``.

    Returns:
        True for kernels, embeddings and the like; False for biases etc.
    """
    return path.rsplit("/", 1)[-1] in WEIGHT_NAMES


def _deferred_property(name: str) -> property:
    """A :class:`RunView` attribute that reads its per-variable series on first use."""
    return property(
        lambda view: view._tensor(name),
        doc=f"``{_TENSORS[name]}``, read on first use (``None`` when absent).",
    )


@dataclasses.dataclass(frozen=True)
class RunView:
    """One run's series as the rules read them.

    Build it with :meth:`of`; :meth:`before` gives the view of the steps before
    a divergence. Every series is ``None`` when the run lacks it.

    Attributes:
        data: The run's series as read.
        loss: ``step/loss``.
        grad: ``step/grad_norm``.
        param: ``step/param_norm``.
        update_ratio: ``step/update_ratio``.
        nonfinite_grads: ``step/nonfinite_grads``.
        nonfinite_loss: ``step/nonfinite_loss``.
        skipped: ``step/skipped_steps``.
        tensors: The per-variable series by attribute name, each read on
            first use: ``layer_grad`` (``layer/grad_norm``), ``layer_zero``
            (``layer/zero_fraction``), ``layer_nonfinite``
            (``layer/nonfinite_grads``), ``layer_param`` (``layer/param_norm``)
            and ``window_zero`` (``window_layer/zero_fraction``: per variable,
            the share of entries whose gradient was zero at every step of a
            window); the properties of those names return them read.
        skipped_at: Steps skipped for loss-scale overflow.
        healthy_until: The first step of a NaN or a lasting explosion, or
            ``None``; set by :meth:`before`.
    """

    data: RunData
    loss: Series | None
    grad: Series | None
    param: Series | None
    update_ratio: Series | None
    nonfinite_grads: Series | None
    nonfinite_loss: Series | None
    skipped: Series | None
    tensors: Mapping[str, DeferredTensor]
    skipped_at: frozenset[int]
    healthy_until: int | None = None

    def deferred(self, name: str) -> DeferredTensor | None:
        """The per-variable series ``name`` (e.g. ``"layer_grad"``), unread."""
        return self.tensors.get(name)

    def _tensor(self, name: str) -> Series | None:
        found = self.tensors.get(name)
        return None if found is None else found.get()

    layer_grad = _deferred_property("layer_grad")
    layer_zero = _deferred_property("layer_zero")
    layer_nonfinite = _deferred_property("layer_nonfinite")
    layer_param = _deferred_property("layer_param")
    window_zero = _deferred_property("window_zero")

    @classmethod
    def of(
        cls, run: RunData, deferred: Mapping[str, DeferredTensor] | None = None
    ) -> RunView:
        """Looks up the series of a run.

        Args:
            run: The run's series, as :func:`tb_gradplugin.reader.read_run`
                returns them.
            deferred: Per-variable series not in ``run``, by key (e.g.
                ``"layer/grad_norm"``), read only when a rule needs them.
                Defaults to ``None``.

        Returns:
            The view of every step.
        """
        skipped = run.scalar(_SCALARS["skipped"])
        skipped_at: frozenset[int] = frozenset()
        if skipped is not None:
            mask = np.nan_to_num(skipped.values, nan=0.0) > 0
            skipped_at = frozenset(int(s) for s in skipped.steps[mask])
        return cls(
            data=run,
            **{name: run.scalar(key) for name, key in _SCALARS.items()},
            tensors={
                name: (
                    DeferredTensor.of(run.tensor(key))
                    if run.tensor(key) is not None or not deferred
                    else deferred.get(key, DeferredTensor.of(None))
                )
                for name, key in _TENSORS.items()
            },
            skipped_at=skipped_at,
        )

    def before(self, end: int | None) -> RunView:
        """The view of the steps before ``end`` (the wreckage left out).

        After a NaN or a lasting explosion, zero shares, ratios and trends
        describe the wreckage, not the training: the later rules read this.
        The loss is kept whole; :meth:`finite_loss` cuts it.

        Args:
            end: The first step of the divergence, or ``None`` (no cut).

        Returns:
            A new view; a series with no step before ``end`` becomes ``None``.
        """
        if end is None:
            return self
        cut = {
            name: _before(getattr(self, name), end)
            for name in ("grad", "param", "update_ratio")
        }
        tensors = {
            name: tensor.before(end) if name != "layer_nonfinite" else tensor
            for name, tensor in self.tensors.items()
        }
        return dataclasses.replace(self, healthy_until=end, tensors=tensors, **cut)

    def finite_loss(self) -> tuple[np.ndarray, np.ndarray]:
        """Steps and finite values of the loss before :attr:`healthy_until`.

        Returns:
            ``(steps, values)``; both empty when the run diverged so early that
            less than half of its points come before.
        """
        if self.loss is None or not len(self.loss):
            return np.zeros(0, np.int64), np.zeros(0)
        steps, values = self.loss.steps, self.loss.values
        keep = np.isfinite(values)
        if self.healthy_until is not None:
            keep &= steps < self.healthy_until
            if keep.sum() < 0.5 * steps.shape[0]:
                # Diverged early: what came before is too short to judge a trend.
                return np.zeros(0, np.int64), np.zeros(0)
        return steps[keep], values[keep]

    def skipped_mask(self, steps: np.ndarray) -> np.ndarray:
        """Which of ``steps`` a loss-scale optimizer skipped for overflow.

        Args:
            steps: int steps, shape ``[n]``.

        Returns:
            bool ``[n]``.
        """
        if not self.skipped_at:
            return np.zeros(steps.shape[0], dtype=bool)
        return np.isin(steps, np.fromiter(self.skipped_at, dtype=np.int64))

    @staticmethod
    def value_at(series: Series | None, steps: np.ndarray) -> np.ndarray:
        """Values of a scalar series at ``steps``.

        Args:
            series: The series, or ``None``.
            steps: The steps, int, shape ``[n]``.

        Returns:
            Shape ``[n]``; NaN where the series has no point at that step.
        """
        out = np.full(steps.shape[0], np.nan)
        if series is None or not len(series):
            return out
        idx = np.searchsorted(series.steps, steps)
        ok = idx < series.steps.shape[0]
        ok[ok] = series.steps[idx[ok]] == steps[ok]
        out[ok] = series.values[idx[ok]]
        return out


def _before(series: Series | None, end: int) -> Series | None:
    if series is None:
        return None
    keep = series.steps < end
    if not keep.any():
        return None
    return Series(
        steps=series.steps[keep],
        values=series.values[keep],
        wall_times=series.wall_times[keep],
        content=series.content,
    )

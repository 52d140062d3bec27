"""The series the rules read, looked up and cleaned once per run."""

from __future__ import annotations

import dataclasses

import numpy as np

from tb_gradplugin.reader import RunData, Series

__all__ = ["KEYS", "WEIGHT_NAMES", "RunView", "is_weight"]

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


def is_weight(path: str) -> bool:
    """Whether a variable path names a layer's weights (see :data:`WEIGHT_NAMES`).

    Args:
        path: A variable path such as ``"dense_1/kernel"``.

    Returns:
        True for kernels, embeddings and the like; False for biases etc.
    """
    return path.rsplit("/", 1)[-1] in WEIGHT_NAMES


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
        layer_grad: ``layer/grad_norm``.
        layer_zero: ``layer/zero_fraction``.
        layer_nonfinite: ``layer/nonfinite_grads``.
        layer_param: ``layer/param_norm``.
        window_zero: ``window_layer/zero_fraction``: per variable, the share of
            entries whose gradient was zero at every step of a window.
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
    layer_grad: Series | None
    layer_zero: Series | None
    layer_nonfinite: Series | None
    layer_param: Series | None
    window_zero: Series | None
    skipped_at: frozenset[int]
    healthy_until: int | None = None

    @classmethod
    def of(cls, run: RunData) -> RunView:
        """Looks up the series of a run.

        Args:
            run: The run's series, as :func:`tb_gradplugin.reader.read_run`
                returns them.

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
            **{name: run.tensor(key) for name, key in _TENSORS.items()},
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
            for name in (
                "grad",
                "param",
                "update_ratio",
                "layer_grad",
                "layer_zero",
                "layer_param",
                "window_zero",
            )
        }
        return dataclasses.replace(self, healthy_until=end, **cut)

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

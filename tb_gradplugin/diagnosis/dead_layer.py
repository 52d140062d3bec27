"""Rule ``dead_layer``: a layer's units get an exactly zero gradient (dying ReLU).

Sources: AutoTrainer (ICSE 2021) — dying ReLU when ≥ 70 % of the gradient
entries are exactly 0 (``dead_fraction``); this project — an error from 95 %
(``dead_error_fraction``: practically every unit), and the share must hold at
nearly every late step (its ``dead_quantile`` = 10 % quantile), not on average.
A kernel is judged by its layer's bias where there is one: the bias's zero
share is the share of units that no example of the batch activated, while the
kernel's also counts inputs that are zero.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from tb_gradplugin.diagnosis.flags import Flag, figure
from tb_gradplugin.diagnosis.robust import (
    late_window,
    nanmedian,
    nanquantile,
    rolling_median,
)
from tb_gradplugin.diagnosis.run_view import RunView, is_weight
from tb_gradplugin.diagnosis.thresholds import Thresholds

__all__ = ["ZeroShare", "rule", "zero_shares"]


class ZeroShare(NamedTuple):
    """How much of a variable gets no gradient.

    Attributes:
        share: The late window's ``dead_quantile`` quantile of the zero share.
        onset: Index of the logged step from which the share stayed high.
        judged: Index of the variable whose zero share was read (the layer's
            bias for a kernel).
    """

    share: float
    onset: int
    judged: int


def zero_shares(view: RunView, thresholds: Thresholds) -> dict[int, ZeroShare]:
    """The zero share of every variable that can die, by its column index.

    Biases are judged with their kernel; variables before a weight that is
    exactly zero (a zero initialisation that never moved) are left out: that
    weight blocks their gradient, no unit died there.

    Args:
        view: The run before any divergence.
        thresholds: Uses ``dead_quantile`` and ``dead_fraction``.

    Returns:
        Column index of ``layer/zero_fraction`` → its :class:`ZeroShare`.
    """
    zero = view.layer_zero
    if zero is None or not len(zero) or not zero.names:
        return {}
    names = zero.names
    values = zero.values
    n, width = values.shape
    late = values[late_window(n)]
    index = {name: i for i, name in enumerate(names)}
    blocked_before = _zero_weight_before(view, names)
    out = {}
    for i, name in enumerate(names):
        if i <= blocked_before or i >= width:
            continue
        if "embedding" in name.lower():
            continue  # only the rows in the batch get a gradient: sparse by design
        if name.rsplit("/", 1)[-1] == "bias":
            continue  # judged with its layer's kernel
        judged = i
        if is_weight(name) and "/" in name:
            sibling = index.get(name.rsplit("/", 1)[0] + "/bias")
            if sibling is not None and sibling < width:
                judged = sibling
        column = late[:, judged]
        if not np.isfinite(column).any():
            continue
        share = (
            nanquantile(column, thresholds.dead_quantile)
            if column.shape[0] >= 10
            else float(np.nanmin(column))
        )
        smooth = rolling_median(values[:, judged], 5)
        below = np.nonzero(~(smooth >= thresholds.dead_fraction))[0]
        onset = int(below[-1] + 1) if below.size else 0
        out[i] = ZeroShare(share, min(onset, n - 1), judged)
    return out


def _zero_weight_before(view: RunView, names: list[str]) -> int:
    """Index of the last weight that is exactly zero late in the run, or -1."""
    params = view.layer_param
    if params is None or not len(params) or params.names != names:
        return -1
    late = params.values[late_window(params.values.shape[0])]
    last = -1
    for j, name in enumerate(names):
        if is_weight(name) and j < late.shape[1]:
            column = late[:, j]
            if np.isfinite(column).any() and np.nanmax(np.abs(column)) == 0:
                last = j
    return last


def rule(
    view: RunView, thresholds: Thresholds, shares: dict[int, ZeroShare]
) -> list[Flag]:
    """Flags the layers whose units get no gradient.

    Args:
        view: The run before any divergence.
        thresholds: Uses ``dead_fraction`` and ``dead_error_fraction``.
        shares: From :func:`zero_shares`.

    Returns:
        One flag per dead layer: an error from ``dead_error_fraction``.
    """
    if view.grad is not None and len(view.grad):
        late = view.grad.values[late_window(len(view.grad))]
        if np.isfinite(late).any() and nanmedian(late) == 0:
            # No gradient anywhere: a stationary point (see saddle_point and
            # loss_plateau), not units that died.
            return []
    return [
        _dead_flag(view, thresholds, i, found)
        for i, found in shares.items()
        if found.share >= thresholds.dead_fraction
    ]


def _dead_flag(view: RunView, thresholds: Thresholds, i: int, found: ZeroShare) -> Flag:
    zero = view.layer_zero
    share, onset, judged = found
    name = zero.names[i]
    unit = "units" if judged != i else "gradient entries"
    evidence = {
        "zero_fraction_low_quantile": figure(share),
        "quantile": thresholds.dead_quantile,
        "zero_fraction_last": figure(zero.values[-1, judged]),
        "measured_on": zero.names[judged],
        "threshold": thresholds.dead_fraction,
        "error_threshold": thresholds.dead_error_fraction,
    }
    grad = view.layer_grad
    if grad is not None and len(grad) and i < len(grad.names):
        evidence["grad_norm_last"] = figure(grad.values[-1, i])
    since = int(zero.steps[onset])
    return Flag(
        kind="dead_layer",
        severity="error" if share >= thresholds.dead_error_fraction else "warning",
        first_step=since,
        last_step=int(zero.steps[-1]),
        layer=name,
        message=(
            ("All" if share >= 1 else f"At least {share:.0%}")
            + f" of the {unit} of {name} get an exactly zero gradient at nearly "
            f"every step since step {since} (they pass no gradient back, so they "
            "never learn: dying ReLUs, or units stuck by a constant "
            "initialisation)."
        ),
        evidence=evidence,
    )

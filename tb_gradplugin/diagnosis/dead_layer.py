"""Rule ``dead_layer``: a layer's units get an exactly zero gradient (dying ReLU).

Sources: AutoTrainer (ICSE 2021) — dying ReLU when ≥ 70 % of the gradient
entries are exactly 0 (``dead_fraction``); this project — an error from 95 %
(``dead_error_fraction``: practically every unit), and the share must hold at
nearly every late step (its ``dead_quantile`` = 10 % quantile), not on average.
Per-step shares are taken as their minimum over ``dead_touch_steps``
consecutive logged steps: at batch size 1 a live unit is silent at most steps.
A kernel is judged by its layer's bias where there is one: the bias's zero
share is the share of units that no example of the batch activated, while the
kernel's also counts inputs that are zero.

Sparse by design is not death. A lookup table or a per-item bias read with a
gather gets a gradient only in the rows of the batch, so most of its entries
are zero at every step while every row still learns (and rare rows may go
untouched for long). Such a variable's gradient arrives as rows
(``tf.IndexedSlices``), and the writer lists it in the layer tags'
``sparse_variables``: it is not judged. For the other variables, where the run
has ``window_layer/zero_fraction`` (entries whose gradient was zero at *every*
step of a window), that is the share judged: a dead unit is never touched, a
unit that some examples reach is touched at some step. Logs whose writer did
not record ``sparse_variables`` are judged per step, exempting names that
contain "embedding".

A layer whose units are all dead passes no gradient back: every layer before
it gets exactly zero gradient however healthy it is. Such starved layers are
named in the blocking layer's evidence instead of being flagged themselves.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import numpy as np

from tb_gradplugin import metadata
from tb_gradplugin.diagnosis.coarse import Screen
from tb_gradplugin.diagnosis.flags import Flag, figure
from tb_gradplugin.diagnosis.robust import (
    late_window,
    nanmedian,
    nanquantile,
    rolling_median,
    rolling_min,
)
from tb_gradplugin.diagnosis.run_view import RunView, is_weight
from tb_gradplugin.diagnosis.thresholds import Thresholds
from tb_gradplugin.reader import Series

__all__ = ["ZeroShare", "rule", "zero_shares"]

# A whole gradient that is zero: exact zeros are exact, so any share below 1
# means some entry got a gradient.
_ALL_ZERO = 1.0


class ZeroShare(NamedTuple):
    """How much of a variable gets no gradient.

    Attributes:
        share: The late window's ``dead_quantile`` quantile of the zero share.
        first_step: The logged step from which the share stayed high.
        judged: The variable whose zero share was read (the layer's bias for a
            kernel).
        per_window: Whether the share is of entries never touched in a whole
            window (``window_layer/zero_fraction``) rather than per step.
        all_zero: Whether the variable's own gradient (and the judged one's)
            was entirely zero at nearly every late step.
    """

    share: float
    first_step: int
    judged: str
    per_window: bool
    all_zero: bool


def zero_shares(view: RunView, thresholds: Thresholds) -> dict[int, ZeroShare]:
    """The zero share of every variable that can die, by its column index.

    Biases are judged with their kernel; variables before a weight that is
    exactly zero (a zero initialisation that never moved) are left out: that
    weight blocks their gradient, no unit died there. A variable whose share
    the block summaries prove below ``dead_fraction`` is left out too (no
    rule reads such a share), so a healthy long run is judged without reading
    its per-step zero shares.

    Args:
        view: The run before any divergence.
        thresholds: Uses ``dead_quantile``, ``dead_fraction`` and
            ``dead_touch_steps``.

    Returns:
        Column index of ``layer/zero_fraction`` → its :class:`ZeroShare`, for
        at least every variable whose share reaches ``dead_fraction``.
    """
    tensor = view.deferred("layer_zero")
    screen = Screen.of(tensor)
    if screen is not None:
        names = tensor.names[: screen.width]
    else:
        zero = view.layer_zero
        if zero is None or not len(zero) or not zero.names:
            return {}
        names = zero.names[: zero.values.shape[1]]
    if not names:
        return {}
    index = {name: i for i, name in enumerate(names)}
    sparse = tensor.content.get(metadata.SPARSE_VARIABLES)
    # The window share is read where the writer also records the gradient's
    # structure (sparse_variables): a writer without it packed no such share.
    windows = _window_columns(view.window_zero) if sparse is not None else {}
    blocked_before = _zero_weight_before(view, names)
    # One variable per contiguous row: a column of a long [steps, variables]
    # matrix is strided, and each reduction over it misses the cache.
    zero_rows = functools.cache(lambda: np.ascontiguousarray(view.layer_zero.values.T))
    window_rows = np.ascontiguousarray(view.window_zero.values.T) if windows else None
    out = {}
    for i, name in enumerate(names):
        if i <= blocked_before or name.rsplit("/", 1)[-1] == "bias":
            continue  # a bias is judged with its layer's kernel
        judged = _judged(name, index)
        if sparse is not None and (name in sparse or judged in sparse):
            continue  # its gradient arrives as rows: untouched rows are no death
        if judged in windows:
            series, rows, column = view.window_zero, window_rows, windows[judged]
        elif sparse is None and "embedding" in name.lower():
            continue  # a writer without the structure: only the name is left
        elif screen is not None and _below_dead(screen, index[judged], thresholds):
            continue
        else:
            series, rows, column = view.layer_zero, zero_rows(), index[judged]
        per_step = series is view.layer_zero
        found = _share(rows[column], series.steps, thresholds, per_step=per_step)
        if found is None:
            continue
        share, first_step = found
        own = {i, index[judged]}
        all_zero = all(_whole(zero_rows()[j], thresholds) for j in own)
        out[i] = ZeroShare(share, first_step, judged, not per_step, all_zero)
    return out


def _judged(name: str, index: dict[str, int]) -> str:
    """The variable whose zero share judges ``name``: its layer's bias if any."""
    if is_weight(name) and "/" in name:
        sibling = name.rsplit("/", 1)[0] + "/bias"
        if sibling in index:
            return sibling
    return name


def _below_dead(screen: Screen, column: int, thresholds: Thresholds) -> bool:
    """Whether the blocks prove a per-step share below ``dead_fraction``.

    :func:`_share` takes a quantile of the rolling minima in the late half of
    the minima; each minimum is at most the value of the row it starts at, and
    covers only rows at or after the first row of that half.
    """
    rows = screen.rows
    if rows >= thresholds.dead_touch_steps:
        minima = rows - max(1, thresholds.dead_touch_steps) + 1
    else:
        minima = rows  # too short to take minima over: the values themselves
    first_row = late_window(minima).start
    bound = thresholds.dead_fraction
    return screen.all_below(column, first_row, bound) or screen.quantile_below(
        column, first_row, minima, thresholds.dead_quantile, bound
    )


def _window_columns(series: Series | None) -> dict[str, int]:
    if series is None or not len(series):
        return {}
    names = series.names[: series.values.shape[1]]
    return {name: j for j, name in enumerate(names)}


def _share(
    values: np.ndarray, steps: np.ndarray, thresholds: Thresholds, *, per_step: bool
) -> tuple[float, int] | None:
    """(late low quantile of a zero-share column, step it stayed high from)."""
    if per_step and values.shape[0] >= thresholds.dead_touch_steps:
        # A unit touched at any of the consecutive steps is alive.
        values = rolling_min(values, thresholds.dead_touch_steps)
        steps = steps[: values.shape[0]]  # each run of steps from its first
    late = values[late_window(values.shape[0])]
    if not np.isfinite(late).any():
        return None
    share = (
        nanquantile(late, thresholds.dead_quantile)
        if late.shape[0] >= 10
        else float(np.nanmin(late))
    )
    smooth = rolling_median(values, 5)
    below = np.nonzero(~(smooth >= thresholds.dead_fraction))[0]
    onset = min(int(below[-1] + 1) if below.size else 0, values.shape[0] - 1)
    return share, int(steps[onset])


def _whole(column: np.ndarray, thresholds: Thresholds) -> bool:
    late = column[late_window(column.shape[0])]
    if not np.isfinite(late).any():
        return False
    return nanquantile(late, thresholds.dead_quantile) >= _ALL_ZERO


def _zero_weight_before(view: RunView, names: list[str]) -> int:
    """Index of the last weight that is exactly zero late in the run, or -1."""
    tensor = view.deferred("layer_param")
    screen = Screen.of(tensor)
    if screen is not None:
        if tensor.names[: len(names)] != names:
            return -1
        start = late_window(screen.rows).start
        weights = [
            j for j, name in enumerate(names) if is_weight(name) and j < screen.width
        ]
        if all(screen.some_nonzero(j, start) for j in weights):
            return -1
    params = view.layer_param
    if params is None or not len(params) or params.names[: len(names)] != names:
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
        One flag per dead layer (an error from ``dead_error_fraction``),
        except the layers starved by a later one that blocks all gradient.
    """
    if view.grad is not None and len(view.grad):
        late = view.grad.values[late_window(len(view.grad))]
        if np.isfinite(late).any() and nanmedian(late) == 0:
            # No gradient anywhere: a stationary point (see saddle_point and
            # loss_plateau), not units that died.
            return []
    dead = {i: s for i, s in shares.items() if s.share >= thresholds.dead_fraction}
    if not dead:
        return []
    starved = _starved_by(view, thresholds, dead)
    flags = []
    for i, found in dead.items():
        if i in starved:
            continue
        victims = [view.layer_zero.names[j] for j, k in starved.items() if k == i]
        flags.append(_dead_flag(view, thresholds, i, found, victims))
    return flags


def _starved_by(
    view: RunView, thresholds: Thresholds, dead: dict[int, ZeroShare]
) -> dict[int, int]:
    """Dead-looking layer → the later layer that blocks its gradient.

    A layer is starved when its whole gradient is zero and so is every
    variable from it up to a later dead layer whose whole gradient is zero
    too: nothing between passes a gradient back. The blocker is the deepest
    such layer; the layers after it receive a gradient.
    """
    zero = view.layer_zero
    whole = [_whole(row, thresholds) for row in np.ascontiguousarray(zero.values.T)]
    blockers = [
        i
        for i, s in dead.items()
        if s.all_zero and s.share >= thresholds.dead_error_fraction
    ]
    out = {}
    for i, found in dead.items():
        if not found.all_zero:
            continue
        later = [k for k in blockers if k > i and all(whole[i : k + 1])]
        if later:
            out[i] = max(later)
    return out


def _dead_flag(
    view: RunView,
    thresholds: Thresholds,
    i: int,
    found: ZeroShare,
    starved: list[str],
) -> Flag:
    zero = view.layer_zero
    name = zero.names[i]
    unit = "units" if found.judged != name else "gradient entries"
    when = (
        "in every step of nearly every window"
        if found.per_window
        else "at nearly every step"
    )
    series = view.window_zero if found.per_window else zero
    column = series.names.index(found.judged)
    evidence = {
        "zero_fraction_low_quantile": figure(found.share),
        "quantile": thresholds.dead_quantile,
        "zero_fraction_last": figure(series.values[-1, column]),
        "measured_on": found.judged,
        "measured_over": "windows" if found.per_window else "steps",
        "threshold": thresholds.dead_fraction,
        "error_threshold": thresholds.dead_error_fraction,
    }
    grad = view.layer_grad
    if grad is not None and len(grad) and i < len(grad.names):
        evidence["grad_norm_last"] = figure(grad.values[-1, i])
    message = (
        ("All" if found.share >= 1 else f"At least {found.share:.0%}")
        + f" of the {unit} of {name} get an exactly zero gradient {when} since "
        f"step {found.first_step} (they pass no gradient back, so they never "
        "learn: dying ReLUs, or units stuck by a constant initialisation)"
    )
    if starved:
        evidence["starved_layers"] = starved
        message += (
            "; it blocks the gradient of the layers before it, which get none "
            f"and cannot learn either: {', '.join(starved)}"
        )
    return Flag(
        kind="dead_layer",
        severity=(
            "error" if found.share >= thresholds.dead_error_fraction else "warning"
        ),
        first_step=found.first_step,
        last_step=int(series.steps[-1]),
        layer=name,
        message=message + ".",
        evidence=evidence,
    )

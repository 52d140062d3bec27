"""Rule ``vanishing_gradient``: gradients too small to move the weights.

Sources: AutoTrainer (ICSE 2021) — the early layers' gradient vanishes when
‖g_first‖/‖g_last‖ < 1e-3 and ‖g_first‖ < 1e-4; DeepDiagnosis (ICSE 2022) —
the weights do not move when lr·‖∇W‖/‖W‖ < 1e-5; AutoTrainer's ratio applied
to the whole model's ‖g‖/‖w‖ (seed 004's stuck run: 0.0015/3.12 ≈ 5e-4).
Layers that are dead (see :mod:`.dead_layer`) are not compared: their zero
gradient is that finding, not this one. A small first layer while the loss
still improves is only info.
"""

from __future__ import annotations

import numpy as np

from tb_gradplugin.diagnosis.coarse import Screen
from tb_gradplugin.diagnosis.flags import Flag, figure, short
from tb_gradplugin.diagnosis.robust import (
    improvement,
    initial_loss,
    late_window,
    nanmedian,
    rolling_median,
)
from tb_gradplugin.diagnosis.run_view import RunView, is_weight
from tb_gradplugin.diagnosis.thresholds import Thresholds

__all__ = ["loss_not_learning", "rule"]


def loss_not_learning(view: RunView, thresholds: Thresholds) -> bool | None:
    """Whether the loss never got meaningfully below its start.

    Args:
        view: The run before any divergence.
        thresholds: Uses ``plateau_improvement`` and ``min_trend_points``.

    Returns:
        True or False; ``None`` with fewer than 3 loss points.
    """
    _, v = view.finite_loss()
    if v.shape[0] < 3:
        return None
    if v.shape[0] < thresholds.min_trend_points:
        # Few points (e.g. one per epoch): the first against the last.
        return improvement(float(v[0]), float(v[-1])) < thresholds.plateau_improvement
    late = float(np.median(v[late_window(v.shape[0])]))
    return improvement(initial_loss(v), late) < thresholds.plateau_improvement


def rule(
    view: RunView,
    thresholds: Thresholds,
    dead_columns: frozenset[int],
    dead_error: bool,
    stuck: bool,
) -> list[Flag]:
    """Flags a vanishing gradient in the early layers or the whole model.

    Args:
        view: The run before any divergence.
        thresholds: Uses the ``vanish_*`` thresholds.
        dead_columns: Columns of the layer series whose units are dead.
        dead_error: Whether a dead layer is an error (it explains a tiny
            whole-model gradient).
        stuck: Whether the loss is on a plateau.

    Returns:
        At most one flag.
    """
    # A loss stuck on a plateau (e.g. at chance level after a first drop) has
    # stopped learning even if it is below where it started.
    not_learning = bool(stuck or loss_not_learning(view, thresholds))
    layers = _early_layers(view, thresholds, dead_columns, not_learning)
    if layers is not None or dead_error or not not_learning:
        return [layers] if layers is not None else []
    whole = _whole_model(view, thresholds)
    return [whole] if whole is not None else []


def _compared(names: list[str], dead_columns: frozenset[int]) -> tuple[int, int] | None:
    """The columns of the first and the last weight that are not dead."""
    candidates = [i for i, name in enumerate(names) if is_weight(name)]
    if len(candidates) < 2:
        candidates = list(range(len(names)))
    candidates = [i for i in candidates if i not in dead_columns]
    if len(candidates) < 2:
        return None
    return candidates[0], candidates[-1]


def _blocks_rule_out(
    view: RunView, thresholds: Thresholds, dead_columns: frozenset[int]
) -> bool:
    """Whether the block summaries prove the first layer's median is not small."""
    tensor = view.deferred("layer_grad")
    screen = Screen.of(tensor)
    if screen is None or len(tensor.names) < 2:
        return False
    start = late_window(screen.rows).start
    absent = screen.absent(start)
    if absent is None:
        return False
    compared = _compared(tensor.names[: screen.width], dead_columns | absent)
    return compared is None or screen.median_at_least(
        compared[0], start, thresholds.vanish_first_norm
    )


def _early_layers(
    view: RunView,
    thresholds: Thresholds,
    dead_columns: frozenset[int],
    not_learning: bool,
) -> Flag | None:
    """The first weight's gradient against the last one's (AutoTrainer)."""
    if _blocks_rule_out(view, thresholds, dead_columns):
        return None
    series = view.layer_grad
    if series is None or not len(series) or len(series.names) < 2:
        return None
    names = series.names[: series.values.shape[1]]
    # A variable no optimizer updated late in the run (frozen) is absent
    # there, not a gradient to compare.
    late_values = series.values[late_window(len(series))]
    absent = frozenset(np.flatnonzero(~np.isfinite(late_values).any(axis=0)).tolist())
    compared = _compared(names, dead_columns | absent)
    if compared is None:
        return None
    first, last = compared
    grad_first, grad_last = series.values[:, first], series.values[:, last]
    with np.errstate(all="ignore"):
        ratio = np.where(grad_last > 0, grad_first / grad_last, np.nan)
    late = late_window(ratio.shape[0])
    med_ratio = nanmedian(ratio[late])
    med_first = nanmedian(grad_first[late])
    if not (
        med_ratio < thresholds.vanish_layer_ratio
        and med_first < thresholds.vanish_first_norm
    ):
        return None
    smooth = rolling_median(ratio, 5)
    above = np.nonzero(~(smooth < thresholds.vanish_layer_ratio))[0]
    onset = min(int(above[-1] + 1) if above.size else 0, ratio.shape[0] - 1)
    tail = (
        " and the loss is not improving"
        if not_learning
        else "; the loss still improves"
    )
    return Flag(
        kind="vanishing_gradient",
        severity="error" if not_learning else "info",
        first_step=int(series.steps[onset]),
        last_step=int(series.steps[-1]),
        layer=names[first],
        message=(
            f"The gradient of the first layer ({names[first]}, "
            f"median norm {short(med_first)}) is {short(med_ratio)} "
            f"times that of the last ({names[last]}): it vanishes "
            f"on the way back through the network{tail}."
        ),
        evidence={
            "first_layer": names[first],
            "last_layer": names[last],
            "median_ratio_first_to_last": figure(med_ratio),
            "median_first_grad_norm": figure(med_first),
            "ratio_threshold": thresholds.vanish_layer_ratio,
            "norm_threshold": thresholds.vanish_first_norm,
            "loss_not_improving": not_learning,
        },
    )


def _whole_model(view: RunView, thresholds: Thresholds) -> Flag | None:
    """Tiny gradients for the whole model and a loss that never moved."""
    if view.grad is None or len(view.grad) < thresholds.min_trend_points:
        return None
    steps, grad = view.grad.steps, view.grad.values
    param = view.value_at(view.param, steps)
    update = view.value_at(view.update_ratio, steps)
    late = late_window(steps.shape[0])
    with np.errstate(all="ignore"):
        relative = grad / param
    med_relative = nanmedian(relative[late])
    med_update = nanmedian(update[late])
    tiny_grad = med_relative < thresholds.vanish_grad_param_ratio
    frozen = med_update < thresholds.vanish_update_ratio
    if not (tiny_grad or frozen):
        return None
    what = []
    if tiny_grad:
        what.append(f"the gradient norm is {short(med_relative)} of the parameter norm")
    if frozen:
        what.append(
            f"each step changes the weights by {short(med_update)} of their norm"
        )
    return Flag(
        kind="vanishing_gradient",
        severity="error",
        first_step=int(steps[0]),
        last_step=int(steps[-1]),
        layer=None,
        message=(
            "The gradients are too small to move the weights: "
            + " and ".join(what)
            + ", and the loss has not improved."
        ),
        evidence={
            "median_grad_to_param_norm": figure(med_relative),
            "median_update_ratio": figure(med_update),
            "grad_param_threshold": thresholds.vanish_grad_param_ratio,
            "update_ratio_threshold": thresholds.vanish_update_ratio,
        },
    )

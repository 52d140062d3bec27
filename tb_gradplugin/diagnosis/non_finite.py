"""Rule ``non_finite``: a loss, gradient or weight became NaN or Inf.

Sources: AutoTrainer (ICSE 2021) counts any NaN as an explosion; a step that a
loss-scale optimizer skipped for overflow is by design, not a divergence, and
only a loss scale that keeps failing is (Keras' LossScaleOptimizer halves the
scale per overflow and grows it again every 2000 good steps).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from tb_gradplugin.diagnosis.flags import Flag, figure
from tb_gradplugin.diagnosis.run_view import RunView
from tb_gradplugin.diagnosis.thresholds import Thresholds

__all__ = ["NonFinite", "rule"]


class NonFinite(NamedTuple):
    """What the rule found.

    Attributes:
        flags: ``non_finite`` flags.
        first_step: The first step of a real (not skipped) non-finite value,
            or ``None``; the later rules judge only the steps before it.
    """

    flags: list[Flag]
    first_step: int | None


def rule(view: RunView, thresholds: Thresholds) -> NonFinite:
    """Flags NaN/Inf in the loss, the gradients or the weights.

    Args:
        view: The run, every step.
        thresholds: Uses ``skipped_fraction`` and ``skipped_window``.

    Returns:
        The flags and the first non-finite step.
    """
    events = _nonfinite_events(view)
    flags = [_nonfinite_flag(view, events)] if events else []
    failing = _failing_loss_scale(view, thresholds)
    if failing is not None:
        flags.append(failing)
    return NonFinite(flags, min(events) if events else None)


def _nonfinite_events(view: RunView) -> dict[int, set[str]]:
    """Per step, what was non-finite there (skipped overflow steps left out)."""
    events: dict[int, set[str]] = {}

    def mark(steps: np.ndarray, what: str) -> None:
        for s in steps:
            events.setdefault(int(s), set()).add(what)

    def not_skipped(steps: np.ndarray) -> np.ndarray:
        return ~view.skipped_mask(steps)

    if view.loss is not None and len(view.loss):
        mark(view.loss.steps[~np.isfinite(view.loss.values)], "loss")
    if view.nonfinite_loss is not None and len(view.nonfinite_loss):
        counts = np.nan_to_num(view.nonfinite_loss.values, nan=1.0)
        mark(view.nonfinite_loss.steps[counts > 0], "loss")
    if view.grad is not None and len(view.grad):
        bad = ~np.isfinite(view.grad.values) & not_skipped(view.grad.steps)
        mark(view.grad.steps[bad], "gradient")
    if view.nonfinite_grads is not None and len(view.nonfinite_grads):
        counts = np.nan_to_num(view.nonfinite_grads.values, nan=1.0)
        bad = (counts > 0) & not_skipped(view.nonfinite_grads.steps)
        mark(view.nonfinite_grads.steps[bad], "gradient")
    if view.param is not None and len(view.param):
        mark(view.param.steps[~np.isfinite(view.param.values)], "weights")
    return events


def _nonfinite_flag(view: RunView, events: dict[int, set[str]]) -> Flag:
    steps = sorted(events)
    first, last = steps[0], steps[-1]
    what = [
        w
        for w in ("loss", "gradient", "weights")
        if any(w in e for e in events.values())
    ]
    layer = _nonfinite_layer(view, first)
    logged = _count_logged_from(view, first)
    where = f" in {layer}" if layer else ""
    return Flag(
        kind="non_finite",
        severity="error",
        first_step=first,
        last_step=last,
        layer=layer,
        message=(
            f"The {_join(what)} became NaN/Inf{where} at step {first}: "
            f"non-finite values at {len(steps)} of the {logged} logged steps "
            f"from there (the last at step {last})."
        ),
        evidence={
            "first_nonfinite_step": first,
            "nonfinite_logged_steps": len(steps),
            "logged_steps_from_first": logged,
            "what": what,
            "previous_logged_step": _previous_logged(view, first),
        },
    )


def _failing_loss_scale(view: RunView, thresholds: Thresholds) -> Flag | None:
    """A loss scale that keeps overflowing: the float32 gradients are bad too."""
    if view.skipped is None or len(view.skipped) < 2:
        return None
    steps = view.skipped.steps
    counts = np.nan_to_num(view.skipped.values, nan=0.0)
    span_end = int(steps[-1])
    window = thresholds.skipped_window
    start = int(np.searchsorted(steps, span_end - window, "right"))
    start = max(1, min(start, steps.shape[0] - 1))
    span = int(steps[-1] - steps[start - 1])
    skipped = float(counts[start:].sum())
    if span < window or skipped / span < thresholds.skipped_fraction:
        return None
    return Flag(
        kind="non_finite",
        severity="error",
        first_step=int(steps[start]),
        last_step=span_end,
        layer=None,
        message=(
            f"The loss-scale optimizer skipped {int(skipped)} of the "
            f"last {span} steps for non-finite gradients: the "
            "gradients are NaN/Inf even after the loss scale fell, "
            "so the weights no longer change."
        ),
        evidence={
            "skipped_steps": int(skipped),
            "window_steps": span,
            "skipped_fraction": figure(skipped / span),
            "threshold": thresholds.skipped_fraction,
        },
    )


def _join(words: list[str]) -> str:
    if len(words) <= 1:
        return "".join(words)
    return ", ".join(words[:-1]) + " and " + words[-1]


def _previous_logged(view: RunView, step: int) -> int | None:
    """The logged step before ``step`` (counts cover the steps after it)."""
    best = None
    for series in (view.loss, view.grad, view.nonfinite_grads, view.nonfinite_loss):
        if series is None or not len(series):
            continue
        i = int(np.searchsorted(series.steps, step)) - 1
        if i >= 0:
            cand = int(series.steps[i])
            best = cand if best is None else max(best, cand)
    return best


def _count_logged_from(view: RunView, step: int) -> int:
    for series in (
        view.loss,
        view.grad,
        view.nonfinite_grads,
        view.nonfinite_loss,
        view.param,
    ):
        if series is not None and len(series):
            return int(np.sum(series.steps >= step))
    return 0


def _nonfinite_layer(view: RunView, step: int) -> str | None:
    """The deepest variable whose gradient went bad first, when not all did.

    A variable that no optimizer updated at a step is NaN in every per-variable
    statistic there with a non-finite count of 0 (absent): it is never the
    answer. Only logs without the counts are judged by the NaN alone.
    """
    counts = _row_at(view.layer_nonfinite, step)
    if counts is not None:
        bad = np.nan_to_num(counts[0], nan=1.0) > 0
        found = _deepest(bad, counts[1])
        if found is not None:
            return found
    grads = _row_at(view.layer_grad, step)
    if grads is None:
        return None
    row, names = grads
    bad = ~np.isfinite(row)
    if counts is not None and counts[0].shape == row.shape:
        bad &= ~(np.isnan(row) & (counts[0] == 0))  # absent, not non-finite
    return _deepest(bad, names)


def _row_at(series, step: int) -> tuple[np.ndarray, list[str]] | None:
    """The row of a per-variable series at its first step >= ``step``."""
    if series is None or not len(series) or not series.names:
        return None
    idx = np.searchsorted(series.steps, step)
    if idx >= series.steps.shape[0]:
        return None
    return series.values[idx], series.names


def _deepest(bad: np.ndarray, names: list[str]) -> str | None:
    """The last bad variable's name, when some but not all are bad."""
    if bad.any() and not bad.all() and len(names) == bad.shape[0]:
        return names[int(np.nonzero(bad)[0][-1])]
    return None

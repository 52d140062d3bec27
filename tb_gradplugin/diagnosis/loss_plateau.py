"""Rule ``loss_plateau``: the loss stops improving early, or sits at chance level.

Sources: cs231n — the loss of a model that predicts the class prior is ln C
(e.g. ln 2 ≈ 0.693 for two classes); this project — a window whose first and
last thirds differ by less than ``plateau_flat`` is flat, and a run whose loss
fell by less than ``plateau_improvement`` of its start never learned. A loss
that learned and then levelled off is converged, not stuck.
"""

from __future__ import annotations

import math

import numpy as np

from tb_gradplugin.diagnosis.flags import Flag, figure, short
from tb_gradplugin.diagnosis.robust import (
    candidate_starts,
    improvement,
    initial_loss,
    rolling_median,
    thirds,
)
from tb_gradplugin.diagnosis.run_view import RunView
from tb_gradplugin.diagnosis.thresholds import Thresholds

__all__ = ["chance_classes", "rule"]


def chance_classes(level: float, thresholds: Thresholds) -> int | None:
    """The class count C whose chance-level loss ln C equals ``level``.

    Args:
        level: A loss value.
        thresholds: Uses ``chance_classes`` and ``chance_tolerance``.

    Returns:
        C, or ``None`` when the level is no chance level.
    """
    for c in thresholds.chance_classes:
        ln_c = math.log(c)
        if abs(level - ln_c) <= thresholds.chance_tolerance * ln_c:
            return c
    return None


def rule(view: RunView, thresholds: Thresholds, strong_cause: bool) -> list[Flag]:
    """Flags a loss that stopped improving without having learned.

    Args:
        view: The run before any divergence.
        thresholds: Uses ``plateau_flat``, ``plateau_improvement``,
            ``chance_*`` and ``min_trend_points``.
        strong_cause: A known cause (a dead layer) makes the plateau an error.

    Returns:
        At most one flag.
    """
    steps, loss = view.finite_loss()
    n = loss.shape[0]
    if n < thresholds.min_trend_points:
        return []
    initial = initial_loss(loss)
    for start in candidate_starts(n):
        window = loss[start:]
        level = float(np.median(window))
        m1, m3 = thirds(window)
        scale = max(abs(level), 1e-12)
        if abs(m1 - m3) > thresholds.plateau_flat * scale:
            continue
        improved = improvement(initial, level)
        chance = chance_classes(level, thresholds)
        never = improved < thresholds.plateau_improvement
        if not (never or chance):
            continue
        # The plateau begins where the (smoothed) loss first enters its band.
        smooth = rolling_median(loss, 9)
        band = max(thresholds.plateau_flat * scale, 1e-12)
        inside = np.nonzero(np.abs(smooth - level) <= band)[0]
        onset = int(inside[0]) if inside.size else start
        if onset > max(start, n // 2):
            onset = start
        if chance:
            what = f"stuck at chance level ln({chance}) = {math.log(chance):.3f}"
        else:
            what = (
                f"only {max(improved, 0):.0%} below its initial value {short(initial)}"
            )
        severity = "error" if (chance or strong_cause) else "warning"
        return [
            Flag(
                kind="loss_plateau",
                severity=severity,
                first_step=int(steps[onset]),
                last_step=int(steps[-1]),
                layer=None,
                message=(
                    f"The loss stopped improving at step {int(steps[onset])}: it stays "
                    f"at {short(level)}, {what}, for the remaining "
                    f"{n - onset} logged steps."
                ),
                evidence={
                    "plateau_loss": figure(level),
                    "initial_loss": figure(initial),
                    "improvement": figure(improved),
                    "change_over_plateau": figure((m1 - m3) / scale),
                    "chance_classes": chance,
                    "flat_threshold": thresholds.plateau_flat,
                    "improvement_threshold": thresholds.plateau_improvement,
                    "plateau_points": int(n - onset),
                },
            )
        ]
    return []

"""Rule ``saddle_point``: the gradient is ~0 but the Hessian has negative curvature.

Sources: seed 003 — the minimal ratio (share of positive Hessian eigenvalues)
of a saddle leaves ``saddle_negative_ratio`` = 10 % negative eigenvalues; this
project — the gradient counts as near zero below ``saddle_grad_fraction`` of the
run's initial norm, or where the loss has stopped moving (the expected gradient
is then ~0 even when the batch gradient is not).
"""

from __future__ import annotations

import numpy as np

from tb_gradplugin.diagnosis.flags import Flag, figure, short
from tb_gradplugin.diagnosis.robust import nanmedian
from tb_gradplugin.diagnosis.run_view import RunView
from tb_gradplugin.diagnosis.thresholds import Thresholds

__all__ = ["rule"]


def rule(view: RunView, thresholds: Thresholds, plateau: Flag | None) -> list[Flag]:
    """Flags curvature probes taken at a small gradient with negative curvature.

    Args:
        view: The run before any divergence.
        thresholds: Uses ``saddle_negative_ratio`` and ``saddle_grad_fraction``.
        plateau: The run's ``loss_plateau`` flag, or ``None``.

    Returns:
        At most one flag: a warning where the loss is stuck, else info.
    """
    neg = view.data.scalar("hessian/negative_ratio")
    if neg is None or not len(neg):
        mr = view.data.scalar("hessian/min_ratio")
        zr = view.data.scalar("hessian/zero_ratio")
        if mr is None or not len(mr):
            return []
        zero = view.value_at(zr, mr.steps) if zr is not None else np.zeros(len(mr))
        steps, negv = mr.steps, 1.0 - mr.values - np.nan_to_num(zero, nan=0.0)
    else:
        steps, negv = neg.steps, neg.values
    hg = view.data.scalar("hessian/grad_norm")
    g = view.value_at(hg, steps) if hg is not None else np.full(steps.shape[0], np.nan)
    if view.grad is not None and len(view.grad):
        # Nearest logged gradient norm where the probe batch's is missing.
        idx = np.clip(np.searchsorted(view.grad.steps, steps), 0, len(view.grad) - 1)
        g = np.where(np.isfinite(g), g, view.grad.values[idx])
        g0 = nanmedian(view.grad.values[:3])
    else:
        g0 = nanmedian(g[:1])
    if not (np.isfinite(g0) and g0 >= 0):
        return []
    # A run that starts on the critical point (g0 = 0, e.g. zero weights) still
    # counts: an exactly-zero gradient is near zero.
    small = g <= max(thresholds.saddle_grad_fraction * g0, 1e-12)
    # Where the loss has stopped moving, the expected gradient is ~0 even when
    # the batch gradient is not (sampling noise): that also counts as near zero.
    stuck = np.zeros(steps.shape[0], dtype=bool)
    if plateau is not None:
        stuck = steps >= plateau.first_step
    hit = (negv >= thresholds.saddle_negative_ratio) & (small | stuck)
    hit &= np.isfinite(negv)
    if not hit.any():
        return []
    idx = np.nonzero(hit)[0]
    worst = int(idx[np.argmax(negv[idx])])
    loss_stuck = bool(stuck[worst])
    severity = "warning" if loss_stuck else "info"
    return [
        Flag(
            kind="saddle_point",
            severity=severity,
            first_step=int(steps[idx[0]]),
            last_step=int(steps[idx[-1]]),
            layer=None,
            message=(
                f"At {idx.size} curvature probe(s) "
                + (
                    "the loss had stopped moving"
                    if loss_stuck
                    else f"the gradient norm was near zero ({short(g[worst])}; "
                    f"initially {short(g0)})"
                )
                + f" while {negv[worst]:.0%} of the Hessian eigenvalues were "
                f"negative (step {int(steps[worst])}): a saddle point, not a minimum."
            ),
            evidence={
                "negative_ratio": figure(negv[worst]),
                "grad_norm": figure(g[worst]),
                "initial_grad_norm": figure(g0),
                "probes": int(idx.size),
                "loss_stuck": loss_stuck,
                "negative_threshold": thresholds.saddle_negative_ratio,
                "grad_fraction_threshold": thresholds.saddle_grad_fraction,
            },
        )
    ]

"""Rule ``saddle_point``: the gradient is ~0 but the Hessian has negative curvature.

Sources: seed 003 — the minimal ratio (share of positive Hessian eigenvalues)
of a saddle leaves ``saddle_negative_ratio`` = 10 % negative eigenvalues; this
project — the gradient counts as near zero below ``saddle_grad_fraction`` of the
run's initial norm, or where the loss has stopped moving (the expected gradient
is then ~0 even when the batch gradient is not).

The negative share is ``hessian/band_negative_ratio``: the share of all
eigenvalues below ``-r · max|λ|``, ``r`` the tag content's ``resolution``
(``tb_gradplugin/http_api.md``). ``hessian/negative_ratio`` counts every
eigenvalue below the machine tolerance — tiny negatives of a flat bulk on the
exact path, and half of an unresolved bulk on the Lanczos path — so it is read
only from old logs that have no band tag.
"""

from __future__ import annotations

import numpy as np

from tb_gradplugin.diagnosis.flags import Flag, figure, short
from tb_gradplugin.diagnosis.robust import nanmedian
from tb_gradplugin.diagnosis.run_view import RunView
from tb_gradplugin.diagnosis.thresholds import Thresholds

__all__ = ["KEYS", "rule"]


def rule(view: RunView, thresholds: Thresholds, plateau: Flag | None) -> list[Flag]:
    """Flags curvature probes taken at a small gradient with negative curvature.

    Args:
        view: The run before any divergence.
        thresholds: Uses ``saddle_negative_ratio`` and ``saddle_grad_fraction``.
        plateau: The run's ``loss_plateau`` flag, or ``None``.

    Returns:
        At most one flag: a warning where the loss is stuck, else info.
    """
    found = _negative_shares(view)
    if found is None:
        return []
    steps, negative_share, source = found
    grad, initial_grad = _probe_grad_norms(view, steps)
    if not (np.isfinite(initial_grad) and initial_grad >= 0):
        return []
    # A run that starts on the critical point (zero weights: no gradient) still
    # counts: an exactly-zero gradient is near zero.
    small = grad <= max(thresholds.saddle_grad_fraction * initial_grad, 1e-12)
    # Where the loss has stopped moving, the expected gradient is ~0 even when
    # the batch gradient is not (sampling noise): that also counts as near zero.
    stuck = np.zeros(steps.shape[0], dtype=bool)
    if plateau is not None:
        stuck = steps >= plateau.first_step
    hit = (negative_share >= thresholds.saddle_negative_ratio) & (small | stuck)
    hit &= np.isfinite(negative_share)
    if not hit.any():
        return []
    idx = np.nonzero(hit)[0]
    worst = int(idx[np.argmax(negative_share[idx])])
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
                    else f"the gradient norm was near zero ({short(grad[worst])}; "
                    f"initially {short(initial_grad)})"
                )
                + f" while {negative_share[worst]:.0%} of the Hessian eigenvalues were "
                + _negative_words(view, source)
                + f" (step {int(steps[worst])}): a saddle point, not a minimum."
            ),
            evidence={
                **_curvature_evidence(view, int(steps[worst]), source),
                source: figure(negative_share[worst]),
                "grad_norm": figure(grad[worst]),
                "initial_grad_norm": figure(initial_grad),
                "probes": int(idx.size),
                "loss_stuck": loss_stuck,
                "negative_threshold": thresholds.saddle_negative_ratio,
                "grad_fraction_threshold": thresholds.saddle_grad_fraction,
            },
        )
    ]


def _probe_grad_norms(view: RunView, steps: np.ndarray) -> tuple[np.ndarray, float]:
    """The gradient norm at each curvature probe, and the run's initial one.

    Returns:
        ``(grad [len(steps)], initial)``: the probe batch's gradient norm, else
        the nearest logged one; the median of the first three logged norms.
    """
    probe_grad = view.data.scalar("hessian/grad_norm")
    grad = (
        view.value_at(probe_grad, steps)
        if probe_grad is not None
        else np.full(steps.shape[0], np.nan)
    )
    if view.grad is None or not len(view.grad):
        return grad, nanmedian(grad[:1])
    # Nearest logged gradient norm where the probe batch's is missing.
    idx = np.clip(np.searchsorted(view.grad.steps, steps), 0, len(view.grad) - 1)
    grad = np.where(np.isfinite(grad), grad, view.grad.values[idx])
    return grad, nanmedian(view.grad.values[:3])


_BAND_KEY = "hessian/band_negative_ratio"
# Beside the negative share: what "minimum or saddle?" needs at that probe.
_EVIDENCE_KEYS = (
    "near_zero_ratio",
    "band_min_ratio",
    "min_ratio_low",
    "min_ratio_high",
)
KEYS = frozenset(
    {
        _BAND_KEY,
        "hessian/grad_norm",
        "hessian/negative_ratio",
        "hessian/min_ratio",
        "hessian/zero_ratio",
        *(f"hessian/{name}" for name in _EVIDENCE_KEYS),
    }
)
"""Every key this rule reads from the run beside :class:`RunView`'s."""


def _negative_shares(view: RunView) -> tuple[np.ndarray, np.ndarray, str] | None:
    """(probe steps, share of negative eigenvalues, its evidence name), or None.

    The band share where the run logged it; for old logs without it, the
    machine-tolerance share; where only the minimal ratio was written, what
    the positive and the near-zero shares leave.
    """
    band = view.data.scalar(_BAND_KEY)
    if band is not None and len(band):
        return band.steps, band.values, "band_negative_ratio"
    negative = view.data.scalar("hessian/negative_ratio")
    if negative is not None and len(negative):
        return negative.steps, negative.values, "negative_ratio"
    min_ratio = view.data.scalar("hessian/min_ratio")
    if min_ratio is None or not len(min_ratio):
        return None
    zero_ratio = view.data.scalar("hessian/zero_ratio")
    zero = (
        view.value_at(zero_ratio, min_ratio.steps)
        if zero_ratio is not None
        else np.zeros(len(min_ratio))
    )
    shares = 1.0 - min_ratio.values - np.nan_to_num(zero, nan=0.0)
    return min_ratio.steps, shares, "negative_ratio"


def _curvature_evidence(view: RunView, step: int, source: str) -> dict:
    """The band's other shares, the minimal ratio's range and the resolution.

    Only on the band path: an old log's shares were taken at another tolerance.
    """
    if source != "band_negative_ratio":
        return {}
    at = np.array([step])
    out = {}
    for name in _EVIDENCE_KEYS:
        series = view.data.scalar(f"hessian/{name}")
        if series is not None:
            out[name] = figure(view.value_at(series, at)[0])
    resolution = view.data.scalar(_BAND_KEY).content.get("resolution")
    out["resolution"] = None if resolution is None else float(resolution)
    return out


def _negative_words(view: RunView, source: str) -> str:
    """How the message names the negative share: below the band, or below 0."""
    if source != "band_negative_ratio":
        return "negative"
    resolution = view.data.scalar(_BAND_KEY).content.get("resolution")
    if resolution is None:
        return "negative beyond the near-zero band"
    return f"below -{resolution:g} x max|eigenvalue|"

"""Runs the rules in order and hands each one what the earlier ones found.

Each rule returns its flags and, where a later rule needs it, one more value
(the first NaN, the onset of an explosion, the dead columns, the plateau);
nothing is shared by writing fields of a common object.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from tb_gradplugin.diagnosis import (
    dead_layer,
    exploding,
    gradient_spikes,
    loss_plateau,
    non_finite,
    oscillating_loss,
    run_view,
    saddle_point,
    vanishing,
)
from tb_gradplugin.diagnosis.flags import Flag, sort_flags
from tb_gradplugin.diagnosis.run_view import TENSOR_KEYS, DeferredTensor, RunView
from tb_gradplugin.diagnosis.thresholds import Thresholds
from tb_gradplugin.reader import RunData

__all__ = ["SERIES_KEYS", "TENSOR_KEYS", "diagnose", "run_report"]

SERIES_KEYS = run_view.KEYS | saddle_point.KEYS
"""Every key :func:`diagnose` reads: a run read with only these keys gets the
same flags as the whole run, so a reader can leave the other series (most of a
long run's bytes) unread."""


def diagnose(
    run: RunData,
    thresholds: Thresholds | None = None,
    *,
    deferred: Mapping[str, DeferredTensor] | None = None,
) -> list[Flag]:
    """Runs every rule over a run's series.

    Args:
        run: The run's series, as :func:`tb_gradplugin.reader.read_run` returns
            them (keys ``step/loss``, ``step/grad_norm``, ``layer/grad_norm``, …).
        thresholds: The thresholds. Defaults to ``None``: :class:`Thresholds()`.
        deferred: Per-variable series of :data:`TENSOR_KEYS` not in ``run``,
            read only where a rule needs their steps (with block summaries,
            a healthy run needs none of them). The flags are the same as with
            every series in ``run``. Defaults to ``None``.

    Returns:
        The flags, the most severe first, then by first step. A missing or
        too-short series only silences the rules that need it.
    """
    thresholds = thresholds or Thresholds()
    view = RunView.of(run, deferred)
    nan = non_finite.rule(view, thresholds)
    trace = exploding.gradient_trace(view, thresholds, nan.first_step)
    explosion = exploding.rule(view, thresholds, trace, nan.first_step)
    spikes = gradient_spikes.rule(thresholds, trace, explosion.onset_step)
    flags = nan.flags + explosion.flags + spikes
    # The other rules judge the run as it was before it broke: after a NaN or a
    # lasting explosion, zero shares, ratios and trends describe the wreckage.
    ends = [s for s in (nan.first_step, explosion.onset_step) if s is not None]
    view = view.before(min(ends) if ends else None)
    shares = dead_layer.zero_shares(view, thresholds)
    dead = dead_layer.rule(view, thresholds, shares)
    dead_error = any(f.severity == "error" for f in dead)
    dead_columns = frozenset(
        i for i, s in shares.items() if s.share >= thresholds.dead_error_fraction
    )
    oscillating = oscillating_loss.rule(view, thresholds)
    plateau = [] if oscillating else loss_plateau.rule(view, thresholds, dead_error)
    vanish = vanishing.rule(view, thresholds, dead_columns, dead_error, bool(plateau))
    if plateau and any(f.severity == "error" for f in vanish):
        # The cause is known: not a mere slowdown.
        plateau = [dataclasses.replace(plateau[0], severity="error")]
    saddle = saddle_point.rule(view, thresholds, plateau[0] if plateau else None)
    flags += dead + oscillating + plateau + vanish + saddle
    if any(f.severity != "info" for f in saddle):
        # The curvature says why the whole gradient is ~0: a saddle, which is
        # the more specific finding than a whole-model vanishing gradient.
        flags = [
            f for f in flags if not (f.kind == "vanishing_gradient" and f.layer is None)
        ]
    return sort_flags(flags)


def run_report(
    run: RunData,
    thresholds: Thresholds | None = None,
    *,
    last_step: int | None = None,
    deferred: Mapping[str, DeferredTensor] | None = None,
) -> dict[str, Any]:
    """Builds the JSON object of one run, as the CLI and the ``flags`` route send it.

    Args:
        run: The run's series.
        thresholds: The thresholds. Defaults to ``None``: :class:`Thresholds()`.
        last_step: The run's largest step over all its series, for a ``run``
            read with only :data:`SERIES_KEYS`. Defaults to ``None``: the
            largest step of ``run``.
        deferred: As for :func:`diagnose`. Defaults to ``None``.

    Returns:
        ``{"run": str, "last_step": int | None, "flags": [flag.to_json(), ...]}``,
        strict JSON (no NaN or Infinity numbers).
    """
    return {
        "run": run.run,
        "last_step": run.last_step if last_step is None else last_step,
        "flags": [f.to_json() for f in diagnose(run, thresholds, deferred=deferred)],
    }

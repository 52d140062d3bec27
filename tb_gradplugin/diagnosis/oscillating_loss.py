"""Rule ``oscillating_loss``: the loss swings up and down without settling.

Sources: seed 004's unstable run (a loss between 0.54 and 0.95 around 0.61: a
spread of ≈ 0.5 of its median; ``oscillation_amplitude`` = 0.4); this project —
the loss is judged on block means as well as points, so that the noise of small
batches is not mistaken for oscillation; batch noise is uncorrelated (lag-1
autocorrelation ≈ 0 ± 2/√n) while an unstable run alternates (r₁ < 0) or swings
in waves (r₁ > 0); the swings must keep climbing back towards the initial loss
(``oscillation_rebound``), else the loss has settled. The autocorrelation is
taken of the ranks, so that a rare huge batch loss does not hide an
alternation. Block means that swing
must also move more than batch noise can move them — around the best
non-increasing fit of the loss, the variance ratio of Lo & MacKinlay (1988)
of the residuals' ranks is ≈ 1 for uncorrelated noise, far above it for swings
(``oscillation_variance_ratio``) — or swing that widely without the loss
ever getting ``plateau_improvement`` below its start (momentum SGD at batch
size 1 throwing the weights about). Noise around a falling trend (a clipped
RNN at a small batch, a network learning at batch size 2) is not oscillation.
"""

from __future__ import annotations

import functools
import math

import numpy as np

from tb_gradplugin.diagnosis.flags import Flag, figure, short
from tb_gradplugin.diagnosis.robust import (
    candidate_starts,
    improvement,
    initial_loss,
    isotonic_decreasing,
    rank_lag1_autocorrelation,
    ranks,
    thirds,
    variance_ratio,
)
from tb_gradplugin.diagnosis.run_view import RunView
from tb_gradplugin.diagnosis.thresholds import Thresholds

__all__ = ["rule", "swing_figures"]


def swing_figures(
    window: np.ndarray,
    initial: float,
    floor: float,
    thresholds: Thresholds,
    *,
    need_r1: str,
) -> dict | None:
    """The figures of a window of loss values that swings, or ``None``.

    Args:
        window: The window (block means, or raw points).
        initial: The run's initial loss.
        floor: The lowest level the run's loss reached (block means).
        thresholds: The thresholds.
        need_r1: ``"any"``: |r1| must reach the threshold (raw points: batch
            noise is uncorrelated); ``"negative"``: r1 must be below minus it
            (step-to-step alternation); ``"none"``: no condition (block means,
            where averaging already removed the batch noise).

    Returns:
        The evidence of the swing, or ``None`` when the window does not swing.
    """
    if window.shape[0] < 10:
        return None
    median = float(np.median(window))
    if abs(median) < 1e-12:
        return None
    m1, m3 = thirds(window)
    # Swinginess: the path the loss travels against the range it covers (1 for
    # a monotone series). A falling (learning) or rising (diverging) loss is a
    # trend, not a swing, unless it zig-zags far more than it moves.
    travel = float(np.sum(np.abs(np.diff(window))))
    window_span = float(np.max(window) - np.min(window))
    swing = travel / window_span if window_span > 0 else 0.0
    trending = abs(m1 - m3) > (1 - thresholds.oscillation_trend) * max(abs(m1), abs(m3))
    if trending and swing < thresholds.oscillation_swing:
        return None
    q10, q90 = (float(q) for q in np.quantile(window, [0.1, 0.9]))
    amplitude = (q90 - q10) / abs(median)
    if amplitude < thresholds.oscillation_amplitude:
        return None
    # Not settled: the recent swings (the window's last third) still reach
    # back up towards where the loss started.
    recent_top = float(np.quantile(window[-max(3, window.shape[0] // 3) :], 0.9))
    span = initial - floor
    rebound = (recent_top - floor) / span if span > 0 else math.inf
    if rebound < thresholds.oscillation_rebound:
        return None
    lag1 = rank_lag1_autocorrelation(window)
    if need_r1 == "any" and abs(lag1) < thresholds.oscillation_autocorr:
        return None
    if need_r1 == "negative" and lag1 > -thresholds.oscillation_autocorr:
        return None
    return {
        "median_loss": figure(median),
        "initial_loss": figure(initial),
        "lowest_loss": figure(floor),
        "relative_amplitude": figure(amplitude),
        "rebound": figure(rebound),
        "q10_loss": figure(q10),
        "q90_loss": figure(q90),
        "lag1_autocorrelation": figure(lag1),
        "swinginess": figure(swing),
        "amplitude_threshold": thresholds.oscillation_amplitude,
        "rebound_threshold": thresholds.oscillation_rebound,
    }


def rule(view: RunView, thresholds: Thresholds) -> list[Flag]:
    """Flags a loss that keeps swinging.

    Args:
        view: The run before any divergence.
        thresholds: Uses the ``oscillation_*`` thresholds and
            ``min_trend_points``.

    Returns:
        At most one warning.
    """
    steps, loss = view.finite_loss()
    n = loss.shape[0]
    if n < thresholds.min_trend_points:
        return []
    # Block means over ~40 blocks average out the batch-to-batch noise, which
    # is large for small batches; swings that survive are the optimizer's.
    block = max(1, n // thresholds.oscillation_blocks)
    blocks = n // block
    block_means = loss[: blocks * block].reshape(blocks, block).mean(axis=1)
    block_steps = steps[: blocks * block : block]
    initial = float(block_means[0]) if block > 1 else initial_loss(loss)
    floor = float(np.min(block_means))

    @functools.cache
    def residual() -> np.ndarray:
        # What is left around the best falling curve: batch noise around a
        # learning loss leaves uncorrelated residuals, swings leave swings.
        # Ranks: one example's huge loss at batch size 1 must not swamp the
        # comparison (its variance would make any block mean look like noise).
        # Made only for a run whose block means swing (most runs' do not).
        return ranks(loss - isotonic_decreasing(loss)).astype(np.float64)

    # Where the run started, for "never got below it": one block is too few.
    start_level = float(np.median(block_means[: max(3, blocks // 8)]))
    found = None
    for start in candidate_starts(blocks):
        route = "none" if block > 1 else "any"
        evidence = swing_figures(
            block_means[start:], initial, floor, thresholds, need_r1=route
        )
        if evidence is None:
            continue
        if block > 1 and not _beyond_noise(
            evidence,
            residual()[start * block : blocks * block],
            block,
            start_level,
            thresholds,
        ):
            continue
        found = (int(block_steps[start]), evidence, "blocks" if block > 1 else "steps")
        break
    if found is None and block > 1:
        # Step-to-step alternation cancels in block means: look at the points.
        for start in candidate_starts(n):
            evidence = swing_figures(
                loss[start:], initial, floor, thresholds, need_r1="negative"
            )
            if evidence is not None:
                found = (int(steps[start]), evidence, "steps")
                break
    if found is None:
        return []
    return [_oscillation_flag(view, steps, block, initial, floor, *found)]


def _beyond_noise(
    evidence: dict,
    residual: np.ndarray,
    block: int,
    start_level: float,
    thresholds: Thresholds,
) -> bool:
    """Whether swinging block means are the optimizer's rather than batch noise.

    They are when they vary more than independent batch noise lets them
    (variance ratio), or when the loss swings that widely without ever
    getting below where it started: noise around a level that never fell.
    """
    ratio = variance_ratio(residual, block)
    evidence["variance_ratio"] = figure(ratio)
    evidence["variance_ratio_threshold"] = thresholds.oscillation_variance_ratio
    progress = improvement(start_level, evidence["median_loss"])
    evidence["improvement"] = figure(progress)
    return bool(
        ratio >= thresholds.oscillation_variance_ratio
        or progress < thresholds.plateau_improvement
    )


def _oscillation_flag(
    view: RunView,
    steps: np.ndarray,
    block: int,
    initial: float,
    floor: float,
    first: int,
    evidence: dict,
    over: str,
) -> Flag:
    evidence["measured_on"] = (
        f"means of blocks of {block} logged steps"
        if over == "blocks"
        else "logged steps"
    )
    how = (
        "alternates step to step"
        if over == "steps" and evidence["lag1_autocorrelation"] < 0
        else "swings up and down"
    )
    grad_note = ""
    grad = view.value_at(view.grad, steps[steps >= first])
    if np.isfinite(grad).sum() >= 4:
        gq10, gq90 = np.nanquantile(grad, [0.1, 0.9])
        evidence["grad_norm_q10"], evidence["grad_norm_q90"] = (
            figure(gq10),
            figure(gq90),
        )
        grad_note = f"; the gradient norm ranges {short(gq10)}-{short(gq90)}"
    return Flag(
        kind="oscillating_loss",
        severity="warning",
        first_step=first,
        last_step=int(steps[-1]),
        layer=None,
        message=(
            f"From step {first} the loss {how} between {short(evidence['q10_loss'])} "
            f"and {short(evidence['q90_loss'])} ({evidence['measured_on']}; initial "
            f"{short(initial)}, best {short(floor)}) without settling{grad_note}."
        ),
        evidence=evidence,
    )

"""Pathology rules over a run's gradient-health series (numpy only).

:func:`diagnose` turns a run's series (as :func:`tb_gradplugin.reader.read_run`
returns them) into :class:`Flag` objects of the contract's kinds:
``non_finite``, ``exploding_gradient``, ``vanishing_gradient``,
``oscillating_loss``, ``loss_plateau``, ``dead_layer`` and ``saddle_point``.
:func:`run_report` wraps them into the JSON object that the plugin's ``flags``
route and ``tb-gradhealth check --json`` both return.

The rules start from published ones (AutoTrainer, ICSE 2021; DeepDiagnosis,
ICSE 2022; the cs231n notes; the project's seed 004) and use what those tools
lack: every logged step. They are written for runs they were not tuned on:

* robust statistics (medians, quantiles, rolling medians) instead of single
  points, and thresholds relative to the run's own scale (its initial loss, its
  earlier gradient norms, its parameter norm) instead of absolute numbers;
* a rise is measured from the lower quartile of what came *before* it, so a
  large gradient at the start that then falls (learning-rate warm-up, a poor
  initialisation being corrected) is never an explosion, and it must clear
  the series' own point-to-point noise (batch size 1 swings by decades);
* a gradient spike that comes back down is at most a warning (``info`` below
  100×); an explosion is an error only when it ends in NaN, or lasts to the
  end of the run with the loss worse than where it started;
* the loss is judged on block means as well as points, so the noise of small
  batches is not mistaken for oscillation;
* once a run has turned NaN or exploded, the other rules only look at the
  steps before, not at the wreckage;
* steps skipped by a loss-scale optimizer (``step/skipped_steps``) are not
  divergence; only a loss scale that keeps failing is;
* a series that is missing, too short, constant or all NaN yields no flag from
  the rules that need it, never an exception.

Every threshold lives in :class:`Thresholds`, with its source beside it.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np

from tb_gradplugin.reader import RunData, Series

__all__ = [
    "KINDS",
    "SEVERITIES",
    "Flag",
    "Thresholds",
    "diagnose",
    "json_safe",
    "run_report",
]

KINDS = (
    "non_finite",
    "exploding_gradient",
    "vanishing_gradient",
    "oscillating_loss",
    "loss_plateau",
    "dead_layer",
    "saddle_point",
)
"""The flag kinds of the contract."""

SEVERITIES = ("info", "warning", "error")
"""Severities from the mildest to the worst."""

_RANK = {name: i for i, name in enumerate(SEVERITIES)}

# The last path component of variables that hold a layer's weights (as opposed to
# biases and normalisation parameters); the vanishing rule compares the first and
# the last of them, as AutoTrainer compares the first and the last layer.
_WEIGHT_NAMES = frozenset(
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

_ADVICE = {
    "non_finite": (
        "Find the first non-finite value: check the input data and labels for "
        "NaN/Inf, guard divisions and logarithms in the loss (add an epsilon, use "
        "from_logits=True), lower the learning rate and clip gradients "
        "(clipnorm=1.0)."
    ),
    "exploding_gradient": (
        "Lower the learning rate (by 10x as a start) or add a warm-up, clip "
        "gradients (optimizer clipnorm=1.0), and add normalisation "
        "(BatchNormalization/LayerNormalization); check the weight initialisation."
    ),
    "vanishing_gradient": (
        "Use ReLU-family activations instead of sigmoid/tanh in deep stacks, a "
        "He/Glorot initialisation instead of tiny weights, normalisation layers "
        "or residual connections; an adaptive optimizer (Adam) helps too."
    ),
    "oscillating_loss": (
        "Lower the learning rate (or the momentum), use a larger batch, or a "
        "learning-rate schedule that decays; clip gradients if the swings come "
        "with gradient spikes."
    ),
    "loss_plateau": (
        "Check that the labels match the inputs and the loss fits the output "
        "(e.g. from_logits), normalise the inputs, raise the learning rate or "
        "change the initialisation; a loss stuck at chance level means the model "
        "predicts the class prior."
    ),
    "dead_layer": (
        "Units whose ReLU never fires get no gradient: lower the learning rate, "
        "use LeakyReLU/ELU/GELU, a He initialisation and zero (not negative) "
        "biases, or add normalisation before the activation."
    ),
    "saddle_point": (
        "The optimizer sits on a saddle: momentum or an adaptive optimizer "
        "(Adam), a larger learning rate or a little gradient noise (smaller "
        "batches) help it leave."
    ),
}


@dataclasses.dataclass
class Flag:
    """One pathology found in a run.

    Attributes:
        kind: One of :data:`KINDS`.
        severity: ``"error"``, ``"warning"`` or ``"info"``.
        first_step: The first logged step where the pathology is seen.
        last_step: The last logged step where it is seen.
        layer: The variable path it applies to, or ``None`` for the whole model.
        message: What happened, for a person.
        advice: What to try.
        evidence: The numbers that tripped the rule.

    Example:
        >>> flag = Flag("non_finite", "error", 12, 40, None, "NaN loss", "Check")
        >>> flag.to_json()["kind"]
        'non_finite'
    """

    kind: str
    severity: str
    first_step: int
    last_step: int
    layer: str | None
    message: str
    advice: str
    evidence: dict[str, Any] = dataclasses.field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """Returns the flag as strict JSON-ready data.

        Returns:
            The contract's keys (``kind``, ``severity``, ``first_step``,
            ``last_step``, ``layer``, ``message``, ``advice``) plus
            ``evidence``; non-finite numbers become the strings ``"NaN"``,
            ``"Infinity"`` and ``"-Infinity"`` as TensorBoard's ``http_util``
            sends them.
        """
        return json_safe(
            {
                "kind": self.kind,
                "severity": self.severity,
                "first_step": int(self.first_step),
                "last_step": int(self.last_step),
                "layer": self.layer,
                "message": self.message,
                "advice": self.advice,
                "evidence": self.evidence,
            }
        )


@dataclasses.dataclass(frozen=True)
class Thresholds:
    """Every threshold of the rules, with its source; override any of them.

    Ratios are plain numbers (``10.0`` = ten times); fractions are shares in
    ``[0, 1]``; counts are logged points unless they say steps.

    Attributes:
        explode_factor: Rise of the gradient norm over the lower quartile of
            the values before it that counts as an explosion: 10× (seed 004:
            "10×–100× jumps").
        explode_spike_warning: A spike that comes back down is a warning from
            this factor on, else info: 100× (seed 004's upper end).
        explode_loss_rise: Relative rise of the smoothed loss over its best
            level so far that makes a gradient rise harmful: 0.5 = +50 %
            (this project; a growing gradient with a falling loss is learning).
        spike_window: Preceding points whose 90th percentile is the recent
            range a spike is measured against: 50 points (this project).
        explode_noise_sigmas: A rise or spike must also clear this many robust
            standard deviations of the point-to-point change of log10 ‖g‖:
            3 (this project; batch-size-1 gradients swing by decades).
        vanish_layer_ratio: ‖g_first‖/‖g_last‖ below which the early layers'
            gradient vanishes: 1e-3 (AutoTrainer, ICSE 2021).
        vanish_first_norm: ‖g_first‖ below which the first layer's gradient
            vanishes: 1e-4 (AutoTrainer, ICSE 2021).
        vanish_grad_param_ratio: ‖g‖/‖w‖ of the whole model below which the
            gradient is too small to move the weights: 1e-3 (AutoTrainer's
            ratio, applied to the parameter norm; seed 004's stuck run shows
            0.0015/3.12 ≈ 5e-4).
        vanish_update_ratio: ‖Δw‖/‖w‖ below which the weights do not move:
            1e-5 (DeepDiagnosis, ICSE 2022: lr·‖∇W‖/‖W‖ below 1e-5).
        dead_fraction: Share of exactly-zero gradient entries of a layer that
            marks dying ReLUs: 0.7 (AutoTrainer, ICSE 2021).
        dead_error_fraction: The share from which the layer is an error rather
            than a warning: 0.95 (this project: practically every unit).
        dead_quantile: The quantile of the layer's zero share over the late
            window that must exceed the threshold, so that it holds at nearly
            every step and not on average: 0.1 (this project).
        plateau_flat: Largest relative change of the loss between the first and
            the last third of the plateau: 0.02 = 2 % (this project).
        plateau_improvement: A loss that improved less than this share of its
            initial value never learned: 0.1 = 10 % (this project).
        chance_tolerance: Relative distance to ln(C) that counts as "at chance
            level" for C classes: 0.01 = 1 % (cs231n: the loss of a model that
            predicts the prior is ln C, e.g. ln 2 ≈ 0.693).
        chance_classes: The class counts C tried for chance level: 2 to 10, 100
            and 1000 (cs231n; common benchmark sizes).
        oscillation_amplitude: Spread (q90 − q10) of the late loss relative to
            its median from which the loss swings: 0.4 (seed 004's unstable
            run: 0.54–0.95 around 0.61 ≈ 0.5).
        oscillation_autocorr: Smallest |lag-1 autocorrelation| of the detrended
            loss where it is read point by point: 0.3 (this project: batch
            noise is uncorrelated, ≈ 0 ± 2/√n; an unstable run alternates,
            r₁ < 0, or swings in waves, r₁ > 0).
        oscillation_rebound: The loss has not settled while the top of its
            recent swings (q90 of the window's last third) climbs back this
            share of the way from its best level to its initial one: 0.5
            (this project; seed 004's unstable run swings back above its
            start).
        oscillation_swing: A window with a trend still swings when the loss
            travels this many times the range it covers: 3 (this project; a
            monotone loss travels its range once).
        oscillation_blocks: The loss is averaged over this many blocks of
            steps before the swings are measured: 40 blocks (this project).
        oscillation_trend: The medians of the window's first and last thirds
            within this share of each other mean "no trend" (up or down): 0.8
            (this project).
        min_trend_points: Fewest logged points to judge a trend (plateau,
            oscillation): 20 (this project; fewer is noise).
        skipped_fraction: Share of the last steps skipped for loss-scale
            overflow from which mixed precision has failed: 0.5 (this project;
            Keras' LossScaleOptimizer halves the scale per overflow and grows it
            every 2000 good steps, so a healthy run skips well under 1 %).
        skipped_window: Steps over which the skipped share is measured: 20 steps.
        saddle_negative_ratio: Share of negative Hessian eigenvalues that makes
            a small-gradient point a saddle: 0.1 (seed 003's minimal ratio).
        saddle_grad_fraction: The gradient counts as near zero below this share
            of the run's initial gradient norm: 0.01 (this project).
        lr_update_ratio_high: ‖Δw‖/‖w‖ above which the learning rate is too
            high (evidence only): 0.1 (DeepDiagnosis, ICSE 2022; cs231n calls
            ≈ 1e-3 healthy).

    Example:
        >>> strict = Thresholds(explode_factor=5.0)
        >>> flags = diagnose(run, strict)  # doctest: +SKIP
    """

    explode_factor: float = 10.0
    explode_spike_warning: float = 100.0
    explode_loss_rise: float = 0.5
    spike_window: int = 50
    explode_noise_sigmas: float = 3.0
    vanish_layer_ratio: float = 1e-3
    vanish_first_norm: float = 1e-4
    vanish_grad_param_ratio: float = 1e-3
    vanish_update_ratio: float = 1e-5
    dead_fraction: float = 0.7
    dead_error_fraction: float = 0.95
    dead_quantile: float = 0.1
    plateau_flat: float = 0.02
    plateau_improvement: float = 0.1
    chance_tolerance: float = 0.01
    chance_classes: tuple[int, ...] = (2, 3, 4, 5, 6, 7, 8, 9, 10, 100, 1000)
    oscillation_amplitude: float = 0.4
    oscillation_autocorr: float = 0.3
    oscillation_rebound: float = 0.5
    oscillation_blocks: int = 40
    oscillation_swing: float = 3.0
    oscillation_trend: float = 0.8
    min_trend_points: int = 20
    skipped_fraction: float = 0.5
    skipped_window: int = 20
    saddle_negative_ratio: float = 0.1
    saddle_grad_fraction: float = 0.01
    lr_update_ratio_high: float = 0.1


def json_safe(value: Any) -> Any:
    """Converts a value into data that strict JSON accepts.

    Args:
        value: Nested dicts, lists, tuples, numpy values, numbers and strings.

    Returns:
        The same structure with numpy values turned into Python ones and
        non-finite floats into ``"NaN"``, ``"Infinity"`` or ``"-Infinity"``
        (the encoding of TensorBoard's ``http_util.Respond``).
    """
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, np.ndarray):
        return [json_safe(v) for v in value.tolist()]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        f = float(value)
        if math.isnan(f):
            return "NaN"
        if math.isinf(f):
            return "Infinity" if f > 0 else "-Infinity"
        return f
    return value


# ---------------------------------------------------------------------------
# Small robust-statistics helpers.


def _num(x: float, digits: int = 4) -> float:
    """Rounds a figure for evidence and messages (non-finite kept)."""
    x = float(x)
    if not math.isfinite(x) or x == 0:
        return x
    return float(f"{x:.{digits}g}")


def _fmt(x: float) -> str:
    x = float(x)
    if math.isnan(x):
        return "NaN"
    if math.isinf(x):
        return "Inf" if x > 0 else "-Inf"
    return f"{x:.3g}"


def _rolling_median(x: np.ndarray, k: int) -> np.ndarray:
    """Centred rolling median of odd width ``k``, shrinking at the ends."""
    n = x.shape[0]
    if n == 0 or k <= 1:
        return x.copy()
    half = k // 2
    if n > 2 * half and np.isfinite(x).all():
        # Fast path: a plain median over the full windows, the ends one by one.
        out = np.empty(n)
        windows = np.lib.stride_tricks.sliding_window_view(x, 2 * half + 1)
        out[half : n - half] = np.median(windows, axis=1)
        for i in list(range(half)) + list(range(n - half, n)):
            out[i] = np.median(x[max(0, i - half) : i + half + 1])
        return out
    padded = np.concatenate([np.full(half, np.nan), x, np.full(half, np.nan)])
    windows = np.lib.stride_tricks.sliding_window_view(padded, 2 * half + 1)
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmedian(windows, axis=1)


def _cumulative_quantile(x: np.ndarray, q: float, points: int = 400) -> np.ndarray:
    """The q-quantile of ``x[: i + 1]`` for every i (exact at ≤ ``points`` places)."""
    n = x.shape[0]
    if n == 0:
        return x.copy()
    at = np.unique(np.linspace(0, n - 1, min(n, points)).astype(int))
    vals = np.array([np.quantile(x[: i + 1], q) for i in at])
    # Between two exact places, hold the earlier value.
    idx = np.searchsorted(at, np.arange(n), side="right") - 1
    return vals[idx]


def _nanmedian(x: np.ndarray) -> float:
    x = np.asarray(x, dtype=np.float64)
    x = x[np.isfinite(x)]
    return float(np.median(x)) if x.size else math.nan


def _nanquantile(x: np.ndarray, q: float) -> float:
    x = np.asarray(x, dtype=np.float64)
    x = x[np.isfinite(x)]
    return float(np.quantile(x, q)) if x.size else math.nan


def _lag1(x: np.ndarray) -> float:
    """Lag-1 autocorrelation of ``x`` after removing a straight-line trend."""
    n = x.shape[0]
    if n < 4:
        return 0.0
    t = np.arange(n, dtype=np.float64)
    slope, intercept = np.polyfit(t, x, 1)
    r = x - (slope * t + intercept)
    denom = float(np.dot(r, r))
    if denom <= 0 or not math.isfinite(denom):
        return 0.0
    return float(np.dot(r[:-1], r[1:]) / denom)


def _thirds(x: np.ndarray) -> tuple[float, float]:
    k = max(1, x.shape[0] // 3)
    return float(np.median(x[:k])), float(np.median(x[-k:]))


class _Run:
    """The series the rules read, aligned and cleaned once."""

    def __init__(self, run: RunData):
        self.data = run
        self.loss = run.scalar("step/loss")
        self.grad = run.scalar("step/grad_norm")
        self.param = run.scalar("step/param_norm")
        self.update_ratio = run.scalar("step/update_ratio")
        self.nf_grads = run.scalar("step/nonfinite_grads")
        self.nf_loss = run.scalar("step/nonfinite_loss")
        self.skipped = run.scalar("step/skipped_steps")
        self.layer_grad = run.tensor("layer/grad_norm")
        self.layer_zero = run.tensor("layer/zero_fraction")
        self.layer_nf = run.tensor("layer/nonfinite_grads")
        self.layer_param = run.tensor("layer/param_norm")
        self.last_step = run.last_step
        skipped_steps = set()
        if self.skipped is not None:
            mask = np.nan_to_num(self.skipped.values, nan=0.0) > 0
            skipped_steps = {int(s) for s in self.skipped.steps[mask]}
        self.skipped_at = skipped_steps
        # Filled by the non-finite rule: the first step of a real non-finite
        # value; the trend rules only look at the steps before it.
        self.nonfinite_from: int | None = None
        # Filled by the exploding rule: the onset of a lasting explosion; the
        # loss-trend rules only look at the steps before it too.
        self.diverging_from: int | None = None

    def finite_loss(self) -> tuple[np.ndarray, np.ndarray]:
        """Steps and values of the loss before divergence, finite only."""
        if self.loss is None or not len(self.loss):
            return np.zeros(0, np.int64), np.zeros(0)
        steps, values = self.loss.steps, self.loss.values
        keep = np.isfinite(values)
        end = self.healthy_until()
        if end is not None:
            keep &= steps < end
            if keep.sum() < 0.5 * steps.shape[0]:
                # Diverged early: what came before is too short to judge a trend.
                return np.zeros(0, np.int64), np.zeros(0)
        return steps[keep], values[keep]

    def healthy_until(self) -> int | None:
        """The first step of a NaN or a lasting explosion, or None."""
        ends = [e for e in (self.nonfinite_from, self.diverging_from) if e is not None]
        return min(ends) if ends else None

    def before_divergence(self, series: Series | None) -> Series | None:
        """The part of a series before :meth:`healthy_until` (None if empty)."""
        end = self.healthy_until()
        if series is None or end is None:
            return series
        keep = series.steps < end
        if not keep.any():
            return None
        return Series(
            steps=series.steps[keep],
            values=series.values[keep],
            wall_times=series.wall_times[keep],
            content=series.content,
        )

    def value_at(self, series: Series | None, steps: np.ndarray) -> np.ndarray:
        """Values of a scalar series at ``steps`` (NaN where it has none)."""
        out = np.full(steps.shape[0], np.nan)
        if series is None or not len(series):
            return out
        idx = np.searchsorted(series.steps, steps)
        ok = idx < series.steps.shape[0]
        ok[ok] = series.steps[idx[ok]] == steps[ok]
        out[ok] = series.values[idx[ok]]
        return out


def _initial_loss(values: np.ndarray) -> float:
    # The median of the first three points: the first point alone is one batch.
    return float(np.median(values[: min(3, values.shape[0])]))


def _improvement(initial: float, level: float) -> float:
    """How much of the initial loss has been removed (1 = all, < 0 = worse)."""
    return (initial - level) / max(abs(initial), 1e-12)


# ---------------------------------------------------------------------------
# The rules.


def _rule_non_finite(r: _Run, th: Thresholds) -> list[Flag]:
    events: dict[int, set[str]] = {}

    def mark(steps: np.ndarray, what: str) -> None:
        for s in steps:
            events.setdefault(int(s), set()).add(what)

    def not_skipped(steps: np.ndarray) -> np.ndarray:
        return np.array([int(s) not in r.skipped_at for s in steps], dtype=bool)

    if r.loss is not None and len(r.loss):
        mark(r.loss.steps[~np.isfinite(r.loss.values)], "loss")
    if r.nf_loss is not None and len(r.nf_loss):
        mark(r.nf_loss.steps[np.nan_to_num(r.nf_loss.values, nan=1.0) > 0], "loss")
    if r.grad is not None and len(r.grad):
        bad = ~np.isfinite(r.grad.values) & not_skipped(r.grad.steps)
        mark(r.grad.steps[bad], "gradient")
    if r.nf_grads is not None and len(r.nf_grads):
        bad = (np.nan_to_num(r.nf_grads.values, nan=1.0) > 0) & not_skipped(
            r.nf_grads.steps
        )
        mark(r.nf_grads.steps[bad], "gradient")
    if r.param is not None and len(r.param):
        mark(r.param.steps[~np.isfinite(r.param.values)], "weights")

    flags = []
    if events:
        steps = sorted(events)
        first, last = steps[0], steps[-1]
        r.nonfinite_from = first
        what = [
            w
            for w in ("loss", "gradient", "weights")
            if any(w in e for e in events.values())
        ]
        layer = _nonfinite_layer(r, first)
        logged = _count_logged_from(r, first)
        where = f" in {layer}" if layer else ""
        message = (
            f"The {_join(what)} became NaN/Inf{where} at step {first}: "
            f"non-finite values at {len(steps)} of the {logged} logged steps "
            f"from there (the last at step {last})."
        )
        flags.append(
            Flag(
                kind="non_finite",
                severity="error",
                first_step=first,
                last_step=last,
                layer=layer,
                message=message,
                advice=_ADVICE["non_finite"],
                evidence={
                    "first_nonfinite_step": first,
                    "nonfinite_logged_steps": len(steps),
                    "logged_steps_from_first": logged,
                    "what": what,
                    "previous_logged_step": _previous_logged(r, first),
                },
            )
        )

    # A loss scale that keeps overflowing: the float32 gradients are bad too.
    if r.skipped is not None and len(r.skipped) >= 2:
        s, v = r.skipped.steps, np.nan_to_num(r.skipped.values, nan=0.0)
        span_end = int(s[-1])
        start_idx = int(np.searchsorted(s, span_end - th.skipped_window, "right"))
        start_idx = max(1, min(start_idx, s.shape[0] - 1))
        span = int(s[-1] - s[start_idx - 1])
        skipped = float(v[start_idx:].sum())
        if span >= th.skipped_window and skipped / span >= th.skipped_fraction:
            first = int(s[start_idx])
            flags.append(
                Flag(
                    kind="non_finite",
                    severity="error",
                    first_step=first,
                    last_step=span_end,
                    layer=None,
                    message=(
                        f"The loss-scale optimizer skipped {int(skipped)} of the "
                        f"last {span} steps for non-finite gradients: the "
                        "gradients are NaN/Inf even after the loss scale fell, "
                        "so the weights no longer change."
                    ),
                    advice=_ADVICE["non_finite"],
                    evidence={
                        "skipped_steps": int(skipped),
                        "window_steps": span,
                        "skipped_fraction": _num(skipped / span),
                        "threshold": th.skipped_fraction,
                    },
                )
            )
    return flags


def _join(words: list[str]) -> str:
    if len(words) <= 1:
        return "".join(words)
    return ", ".join(words[:-1]) + " and " + words[-1]


def _previous_logged(r: _Run, step: int) -> int | None:
    """The logged step before ``step`` (counts cover the steps after it)."""
    best = None
    for series in (r.loss, r.grad, r.nf_grads, r.nf_loss):
        if series is None or not len(series):
            continue
        i = int(np.searchsorted(series.steps, step)) - 1
        if i >= 0:
            cand = int(series.steps[i])
            best = cand if best is None else max(best, cand)
    return best


def _count_logged_from(r: _Run, step: int) -> int:
    for series in (r.loss, r.grad, r.nf_grads, r.nf_loss, r.param):
        if series is not None and len(series):
            return int(np.sum(series.steps >= step))
    return 0


def _nonfinite_layer(r: _Run, step: int) -> str | None:
    """The deepest variable whose gradient went bad first, when not all did."""
    for series in (r.layer_nf, r.layer_grad):
        if series is None or not len(series) or not series.names:
            continue
        idx = np.searchsorted(series.steps, step)
        if idx >= series.steps.shape[0]:
            continue
        row = series.values[idx]
        if series is r.layer_nf:
            bad = np.nan_to_num(row, nan=1.0) > 0
        else:
            bad = ~np.isfinite(row)
        names = series.names
        if bad.any() and not bad.all() and len(names) == bad.shape[0]:
            return names[int(np.nonzero(bad)[0][-1])]
    return None


def _rule_exploding(r: _Run, th: Thresholds) -> list[Flag]:
    if r.grad is None or len(r.grad) < 3:
        return []
    steps, g = r.grad.steps, r.grad.values
    valid = np.isfinite(g) & (g > 0)
    valid &= np.array([int(s) not in r.skipped_at for s in steps], dtype=bool)
    if r.nonfinite_from is not None:
        valid &= steps < r.nonfinite_from
    sv, gv = steps[valid], g[valid]
    n = gv.shape[0]
    if n < 3:
        return []
    lg = np.log10(gv)
    sm = _rolling_median(lg, 5)
    # The level a rise is measured from: the lower quartile of everything seen
    # so far. Not the minimum: saturated batches (every example right, a
    # gradient of 1e-15) would make any normal batch look like an explosion.
    base = np.minimum(_cumulative_quantile(lg, 0.25), np.maximum.accumulate(sm))
    base = np.maximum(base, np.minimum.accumulate(sm))
    rise = sm - base
    # Point-to-point noise of log10 ‖g‖ (robust σ); tiny batches make it
    # decades wide (one example's gradient), and a rise must clear it.
    noise = 1.4826 * float(np.median(np.abs(np.diff(lg)))) / math.sqrt(2.0)
    fac = max(math.log10(th.explode_factor), th.explode_noise_sigmas * noise)
    ends_nonfinite = r.nonfinite_from is not None and r.nonfinite_from >= sv[-1]

    # Loss alongside: is it getting worse while the gradient grows?
    loss_at = r.value_at(r.loss, sv)
    loss_sm = _rolling_median(loss_at, 3)
    with np.errstate(all="ignore"):
        best = np.fmin.accumulate(np.where(np.isfinite(loss_sm), loss_sm, np.inf))
        finite_loss = loss_at[np.isfinite(loss_at)]
        floor = 0.1 * abs(_initial_loss(finite_loss)) if finite_loss.size else 0.0
        # A rise counts against the best loss so far, with a floor of 10 % of the
        # initial loss so that noise on a loss near zero is no rise.
        worse = (loss_sm - best) >= th.explode_loss_rise * np.maximum(
            np.abs(best), max(floor, 1e-12)
        )
    param_at = r.value_at(r.param, sv)
    ratio_at = r.value_at(r.update_ratio, sv)
    initial_grad = float(np.median(gv[:3]))

    flags: list[Flag] = []
    end_rise = max(rise[-1], lg[-1] - base[-1]) if ends_nonfinite else rise[-1]
    # Without a NaN at the end, an explosion must also pass the gradient norm the
    # run started with (a run that began large and came down has room to rise).
    above_start = float(np.max(gv[-3:])) > initial_grad
    # ... and the loss must end worse than it started (when there is a loss).
    finite_at = np.isfinite(loss_sm)
    if finite_at.any():
        start_loss = _initial_loss(loss_at[np.isfinite(loss_at)])
        last_loss = float(loss_sm[finite_at][-1])
        harmful = bool(worse[-1]) and last_loss > start_loss
    else:
        harmful = bool(gv[-1] > param_at[-1])
    sustained = end_rise >= fac and (ends_nonfinite or (above_start and harmful))
    if not sustained and ends_nonfinite and end_rise >= fac / 2:
        sustained = True  # grew, then turned NaN: divergence seen at low log rate
    onset_idx = n
    if sustained:
        # The final excursion starts after the last point below the threshold;
        # the onset is where the climb left the level it rose from.
        under = np.nonzero(rise < fac)[0]
        first_high = int(under[-1] + 1) if under.size else 0
        first_high = min(first_high, n - 1)
        level = base[first_high]
        calm = np.nonzero(sm[:first_high] <= level + math.log10(2.0))[0]
        onset_idx = int(calm[-1] + 1) if calm.size else 0
        onset_idx = min(onset_idx, first_high)
        r.diverging_from = int(sv[onset_idx])
        base_val = 10 ** base[onset_idx]
        peak = float(np.max(gv[onset_idx:]))
        last = r.nonfinite_from if ends_nonfinite else int(sv[-1])
        last = max(int(last), int(sv[-1]))
        layer, layer_growth = _growing_layer(r, int(sv[onset_idx]), int(sv[-1]))
        growth = peak / base_val
        tail = " and then turned NaN/Inf" if ends_nonfinite else ""
        message = (
            f"The gradient norm rose {growth:.3g}x from {_fmt(base_val)} to "
            f"{_fmt(peak)} from step {int(sv[onset_idx])}{tail}"
        )
        if np.isfinite(loss_at[-1]) and bool(worse[-1]):
            message += f"; the loss rose with it to {_fmt(loss_at[-1])}"
        if layer:
            message += f"; it grew most in {layer}"
        message += "."
        evidence = {
            "baseline_grad_norm": _num(base_val),
            "peak_grad_norm": _num(peak),
            "growth": _num(growth),
            "threshold": th.explode_factor,
            "last_grad_norm": _num(gv[-1]),
            "last_param_norm": _num(param_at[-1]),
            "grad_above_param_norm": bool(gv[-1] > param_at[-1]),
            "loss_at_onset": _num(loss_at[onset_idx]),
            "last_finite_loss": _num(loss_at[-1]),
            "ends_non_finite": bool(ends_nonfinite),
        }
        if np.isfinite(ratio_at[-1]):
            evidence["last_update_ratio"] = _num(ratio_at[-1])
            evidence["update_ratio_too_high"] = bool(
                ratio_at[-1] > th.lr_update_ratio_high
            )
        if layer:
            evidence["layer_growth"] = _num(layer_growth)
        flags.append(
            Flag(
                kind="exploding_gradient",
                severity="error",
                first_step=int(sv[onset_idx]),
                last_step=last,
                layer=layer,
                message=message,
                advice=_ADVICE["exploding_gradient"],
                evidence=evidence,
            )
        )

    # Spikes that came back down (before any sustained explosion): a point this
    # many times above the recent *upper* range (q90), not the median, so that
    # the spread of small-batch gradients is no spike.
    k = max(3, th.spike_window)
    local = np.full(n, np.nan)
    # q90 of the k points before each point (fewer at the start, at least 3).
    q90 = np.full(n, np.nan)
    # At least 10 earlier points: a q90 of fewer is no range.
    for i in range(10, min(k, n)):
        q90[i] = np.quantile(lg[:i], 0.9)
    if n > k:
        windows = np.lib.stride_tricks.sliding_window_view(lg[:-1], k)
        q90[k:] = np.quantile(windows, 0.9, axis=1)
    ok = (np.arange(n) >= 10) & (np.arange(n) < onset_idx)
    local[ok] = q90[ok]
    jump = lg - local
    spikes = np.nonzero(np.nan_to_num(jump, nan=-np.inf) >= fac)[0]
    spikes = spikes[spikes < onset_idx]
    if spikes.size:
        worst = int(spikes[np.argmax(jump[spikes])])
        factor = float(10 ** jump[worst])
        severity = "warning" if factor >= th.explode_spike_warning else "info"
        flags.append(
            Flag(
                kind="exploding_gradient",
                severity=severity,
                first_step=int(sv[spikes[0]]),
                last_step=int(sv[spikes[-1]]),
                layer=None,
                message=(
                    f"The gradient norm spiked {spikes.size} time(s), at worst "
                    f"{factor:.3g}x the top of its recent range (to "
                    f"{_fmt(gv[worst])} at step {int(sv[worst])}), and came back down."
                ),
                advice=_ADVICE["exploding_gradient"],
                evidence={
                    "spikes": int(spikes.size),
                    "worst_factor": _num(factor),
                    "worst_step": int(sv[worst]),
                    "worst_grad_norm": _num(gv[worst]),
                    "threshold": th.explode_factor,
                    "warning_threshold": th.explode_spike_warning,
                },
            )
        )
    return flags


def _growing_layer(r: _Run, onset: int, end: int) -> tuple[str | None, float]:
    """The variable whose gradient norm grew most from before ``onset`` to ``end``."""
    s = r.layer_grad
    if s is None or not len(s) or not s.names:
        return None, math.nan
    vals = s.values
    with np.errstate(all="ignore"):
        before = vals[s.steps <= onset]
        after = vals[(s.steps >= onset) & (s.steps <= end)]
        if not before.shape[0] or not after.shape[0]:
            return None, math.nan
        lo = np.where(np.isfinite(before) & (before > 0), before, np.inf).min(axis=0)
        hi = np.where(np.isfinite(after), after, -np.inf).max(axis=0)
        growth = hi / lo
    growth = np.where(np.isfinite(growth), growth, -np.inf)
    if not np.isfinite(growth).any() or len(s.names) != growth.shape[0]:
        return None, math.nan
    i = int(np.argmax(growth))
    return s.names[i], float(growth[i])


def _late(n: int) -> slice:
    """The late window: the second half of the points (at least one)."""
    return slice(n // 2 if n > 1 else 0, n)


def _dead_share(r: _Run, th: Thresholds) -> dict[int, tuple[float, int, int]]:
    """Per variable index: (late low-quantile zero share, onset idx, judged idx)."""
    z = r.layer_zero
    if z is None or not len(z) or not z.names:
        return {}
    names = z.names
    vals = z.values
    n = vals.shape[0]
    late = vals[_late(n)]
    index = {name: i for i, name in enumerate(names)}
    # Weights that are exactly zero (a zero initialisation that never moved)
    # block the gradient of everything before them: no unit died there.
    blocked_before = -1
    pn = r.layer_param
    if pn is not None and len(pn) and pn.names == names:
        late_pn = pn.values[_late(pn.values.shape[0])]
        for j, name in enumerate(names):
            if name.rsplit("/", 1)[-1] in _WEIGHT_NAMES and j < late_pn.shape[1]:
                col = late_pn[:, j]
                if np.isfinite(col).any() and np.nanmax(np.abs(col)) == 0:
                    blocked_before = j
    out = {}
    for i, name in enumerate(names):
        if i <= blocked_before:
            continue
        leaf = name.rsplit("/", 1)[-1]
        if "embedding" in name.lower():
            continue  # only the rows in the batch get a gradient: sparse by design
        if leaf == "bias" or i >= vals.shape[1]:
            continue  # judged with its layer's kernel
        judged = i
        if leaf in _WEIGHT_NAMES and "/" in name:
            sibling = name.rsplit("/", 1)[0] + "/bias"
            if sibling in index and index[sibling] < vals.shape[1]:
                # The bias's zero share is the share of units that no example
                # of the batch activated; the kernel's also counts zero inputs.
                judged = index[sibling]
        col = late[:, judged]
        if not np.isfinite(col).any():
            continue
        q = (
            _nanquantile(col, th.dead_quantile)
            if col.shape[0] >= 10
            else float(np.nanmin(col))
        )
        full = vals[:, judged]
        rm = _rolling_median(full, 5)
        below = np.nonzero(~(rm >= th.dead_fraction))[0]
        onset = int(below[-1] + 1) if below.size else 0
        out[i] = (q, min(onset, n - 1), judged)
    return out


def _rule_dead(r: _Run, th: Thresholds, shares: dict) -> list[Flag]:
    flags = []
    z = r.layer_zero
    if r.grad is not None and len(r.grad):
        late = r.grad.values[_late(len(r.grad))]
        if np.isfinite(late).any() and _nanmedian(late) == 0:
            # No gradient anywhere: a stationary point (see saddle_point and
            # loss_plateau), not units that died.
            return flags
    for i, (q, onset, judged) in shares.items():
        if not q >= th.dead_fraction:
            continue
        severity = "error" if q >= th.dead_error_fraction else "warning"
        name = z.names[i]
        via = z.names[judged]
        unit = "units" if judged != i else "gradient entries"
        evidence = {
            "zero_fraction_low_quantile": _num(q),
            "quantile": th.dead_quantile,
            "zero_fraction_last": _num(z.values[-1, judged]),
            "measured_on": via,
            "threshold": th.dead_fraction,
            "error_threshold": th.dead_error_fraction,
        }
        if (
            r.layer_grad is not None
            and len(r.layer_grad)
            and i < len(r.layer_grad.names)
        ):
            evidence["grad_norm_last"] = _num(r.layer_grad.values[-1, i])
        flags.append(
            Flag(
                kind="dead_layer",
                severity=severity,
                first_step=int(z.steps[onset]),
                last_step=int(z.steps[-1]),
                layer=name,
                message=(
                    ("All" if q >= 1 else f"At least {q:.0%}")
                    + f" of the {unit} of {name} get an exactly zero "
                    f"gradient at nearly every step since step {int(z.steps[onset])}"
                    " (they pass no gradient back, so they never learn: dying "
                    "ReLUs, or units stuck by a constant initialisation)."
                ),
                advice=_ADVICE["dead_layer"],
                evidence=evidence,
            )
        )
    return flags


def _loss_not_learning(r: _Run, th: Thresholds) -> bool | None:
    """Whether the loss never got meaningfully below its start (None: can't say)."""
    _, v = r.finite_loss()
    if v.shape[0] < 3:
        return None
    if v.shape[0] < th.min_trend_points:
        # Few points (e.g. one per epoch): the first against the last.
        return _improvement(float(v[0]), float(v[-1])) < th.plateau_improvement
    initial = _initial_loss(v)
    late = float(np.median(v[_late(v.shape[0])]))
    return _improvement(initial, late) < th.plateau_improvement


def _rule_vanishing(
    r: _Run, th: Thresholds, shares: dict, dead: bool, stuck: bool
) -> list[Flag]:
    flags = []
    # A loss stuck on a plateau (e.g. at chance level after a first drop) has
    # stopped learning even if it is below where it started.
    not_learning = stuck or _loss_not_learning(r, th)
    s = r.layer_grad
    if s is not None and len(s) >= 1 and len(s.names) >= 2:
        names = s.names[: s.values.shape[1]]
        cands = [
            i for i, n in enumerate(names) if n.rsplit("/", 1)[-1] in _WEIGHT_NAMES
        ]
        if len(cands) < 2:
            cands = list(range(len(names)))
        cands = [
            i
            for i in cands
            if not (i in shares and shares[i][0] >= th.dead_error_fraction)
        ]
        if len(cands) >= 2:
            first, last = cands[0], cands[-1]
            gf, gl = s.values[:, first], s.values[:, last]
            with np.errstate(all="ignore"):
                ratio = np.where(gl > 0, gf / gl, np.nan)
            late = _late(ratio.shape[0])
            med_ratio = _nanmedian(ratio[late])
            med_first = _nanmedian(gf[late])
            if med_ratio < th.vanish_layer_ratio and med_first < th.vanish_first_norm:
                rm = _rolling_median(ratio, 5)
                above = np.nonzero(~(rm < th.vanish_layer_ratio))[0]
                onset = int(above[-1] + 1) if above.size else 0
                onset = min(onset, ratio.shape[0] - 1)
                severity = "error" if not_learning else "info"
                tail = (
                    " and the loss is not improving"
                    if not_learning
                    else "; the loss still improves"
                )
                flags.append(
                    Flag(
                        kind="vanishing_gradient",
                        severity=severity,
                        first_step=int(s.steps[onset]),
                        last_step=int(s.steps[-1]),
                        layer=names[first],
                        message=(
                            f"The gradient of the first layer ({names[first]}, "
                            f"median norm {_fmt(med_first)}) is {_fmt(med_ratio)} "
                            f"times that of the last ({names[last]}): it vanishes "
                            f"on the way back through the network{tail}."
                        ),
                        advice=_ADVICE["vanishing_gradient"],
                        evidence={
                            "first_layer": names[first],
                            "last_layer": names[last],
                            "median_ratio_first_to_last": _num(med_ratio),
                            "median_first_grad_norm": _num(med_first),
                            "ratio_threshold": th.vanish_layer_ratio,
                            "norm_threshold": th.vanish_first_norm,
                            "loss_not_improving": bool(not_learning),
                        },
                    )
                )
    if flags or dead or not not_learning:
        return flags
    # The whole model: tiny gradients and a loss that never moved.
    if r.grad is None or len(r.grad) < th.min_trend_points:
        return flags
    steps, g = r.grad.steps, r.grad.values
    p = r.value_at(r.param, steps)
    u = r.value_at(r.update_ratio, steps)
    late = _late(steps.shape[0])
    with np.errstate(all="ignore"):
        rel = g / p
    med_rel = _nanmedian(rel[late])
    med_upd = _nanmedian(u[late])
    tiny_grad = med_rel < th.vanish_grad_param_ratio
    frozen = med_upd < th.vanish_update_ratio
    if tiny_grad or frozen:
        what = []
        if tiny_grad:
            what.append(f"the gradient norm is {_fmt(med_rel)} of the parameter norm")
        if frozen:
            what.append(
                f"each step changes the weights by {_fmt(med_upd)} of their norm"
            )
        flags.append(
            Flag(
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
                advice=_ADVICE["vanishing_gradient"],
                evidence={
                    "median_grad_to_param_norm": _num(med_rel),
                    "median_update_ratio": _num(med_upd),
                    "grad_param_threshold": th.vanish_grad_param_ratio,
                    "update_ratio_threshold": th.vanish_update_ratio,
                },
            )
        )
    return flags


def _candidate_starts(n: int) -> list[int]:
    return sorted({0, n // 8, n // 4, (3 * n) // 8, n // 2})


def _oscillation(
    w: np.ndarray, initial: float, floor: float, th: Thresholds, *, need_r1: str
) -> dict | None:
    """The figures of a window of loss values that swings, or None.

    Args:
        w: The window (block means, or raw points).
        initial: The run's initial loss.
        floor: The lowest level the run's loss reached (block means).
        th: The thresholds.
        need_r1: ``"any"``: |r1| must reach the threshold (raw points: batch
            noise is uncorrelated); ``"negative"``: r1 must be below minus it
            (step-to-step alternation); ``"none"``: no condition (block means,
            where averaging already removed the batch noise).
    """
    if w.shape[0] < 10:
        return None
    med = float(np.median(w))
    if abs(med) < 1e-12:
        return None
    m1, m3 = _thirds(w)
    # Swinginess: the path the loss travels against the range it covers (1 for
    # a monotone series). A falling (learning) or rising (diverging) loss is a
    # trend, not a swing, unless it zig-zags far more than it moves.
    travel = float(np.sum(np.abs(np.diff(w))))
    span_w = float(np.max(w) - np.min(w))
    swing = travel / span_w if span_w > 0 else 0.0
    trending = abs(m1 - m3) > (1 - th.oscillation_trend) * max(abs(m1), abs(m3))
    if trending and swing < th.oscillation_swing:
        return None
    q10, q90 = (float(q) for q in np.quantile(w, [0.1, 0.9]))
    amplitude = (q90 - q10) / abs(med)
    if amplitude < th.oscillation_amplitude:
        return None
    # Not settled: the recent swings (the window's last third) still reach
    # back up towards where the loss started.
    recent_top = float(np.quantile(w[-max(3, w.shape[0] // 3) :], 0.9))
    span = initial - floor
    rebound = (recent_top - floor) / span if span > 0 else math.inf
    if rebound < th.oscillation_rebound:
        return None
    r1 = _lag1(w)
    if need_r1 == "any" and abs(r1) < th.oscillation_autocorr:
        return None
    if need_r1 == "negative" and r1 > -th.oscillation_autocorr:
        return None
    return {
        "median_loss": _num(med),
        "initial_loss": _num(initial),
        "lowest_loss": _num(floor),
        "relative_amplitude": _num(amplitude),
        "rebound": _num(rebound),
        "q10_loss": _num(q10),
        "q90_loss": _num(q90),
        "lag1_autocorrelation": _num(r1),
        "swinginess": _num(swing),
        "amplitude_threshold": th.oscillation_amplitude,
        "rebound_threshold": th.oscillation_rebound,
    }


def _rule_oscillating(r: _Run, th: Thresholds) -> list[Flag]:
    s, v = r.finite_loss()
    n = v.shape[0]
    if n < th.min_trend_points:
        return []
    # Block means over ~40 blocks average out the batch-to-batch noise, which
    # is large for small batches; swings that survive are the optimizer's.
    b = max(1, n // th.oscillation_blocks)
    nb = n // b
    bm = v[: nb * b].reshape(nb, b).mean(axis=1)
    bsteps = s[: nb * b : b]
    initial = float(bm[0]) if b > 1 else _initial_loss(v)
    floor = float(np.min(bm))
    found = None
    for start in _candidate_starts(nb):
        route = "none" if b > 1 else "any"
        ev = _oscillation(bm[start:], initial, floor, th, need_r1=route)
        if ev is not None:
            found = (int(bsteps[start]), ev, "blocks" if b > 1 else "steps")
            break
    if found is None and b > 1:
        # Step-to-step alternation cancels in block means: look at the points.
        for start in _candidate_starts(n):
            ev = _oscillation(v[start:], initial, floor, th, need_r1="negative")
            if ev is not None:
                found = (int(s[start]), ev, "steps")
                break
    if found is None:
        return []
    first, ev, over = found
    ev["measured_on"] = (
        f"means of blocks of {b} logged steps" if over == "blocks" else "logged steps"
    )
    how = (
        "alternates step to step"
        if over == "steps" and ev["lag1_autocorrelation"] < 0
        else "swings up and down"
    )
    grad_note = ""
    g = r.value_at(r.grad, s[s >= first])
    if np.isfinite(g).sum() >= 4:
        gq10, gq90 = np.nanquantile(g, [0.1, 0.9])
        ev["grad_norm_q10"], ev["grad_norm_q90"] = _num(gq10), _num(gq90)
        grad_note = f"; the gradient norm ranges {_fmt(gq10)}-{_fmt(gq90)}"
    return [
        Flag(
            kind="oscillating_loss",
            severity="warning",
            first_step=first,
            last_step=int(s[-1]),
            layer=None,
            message=(
                f"From step {first} the loss {how} between {_fmt(ev['q10_loss'])} "
                f"and {_fmt(ev['q90_loss'])} ({ev['measured_on']}; initial "
                f"{_fmt(initial)}, best {_fmt(floor)}) without settling{grad_note}."
            ),
            advice=_ADVICE["oscillating_loss"],
            evidence=ev,
        )
    ]


def _chance(level: float, th: Thresholds) -> int | None:
    for c in th.chance_classes:
        ln_c = math.log(c)
        if abs(level - ln_c) <= th.chance_tolerance * ln_c:
            return c
    return None


def _rule_plateau(r: _Run, th: Thresholds, strong_cause: bool) -> list[Flag]:
    s, v = r.finite_loss()
    n = v.shape[0]
    if n < th.min_trend_points:
        return []
    initial = _initial_loss(v)
    for start in _candidate_starts(n):
        w = v[start:]
        level = float(np.median(w))
        m1, m3 = _thirds(w)
        scale = max(abs(level), 1e-12)
        if abs(m1 - m3) > th.plateau_flat * scale:
            continue
        improved = _improvement(initial, level)
        chance = _chance(level, th)
        never = improved < th.plateau_improvement
        if not (never or chance):
            continue
        # The plateau begins where the (smoothed) loss first enters its band.
        rm = _rolling_median(v, 9)
        tol = max(th.plateau_flat * scale, 1e-12)
        inside = np.nonzero(np.abs(rm - level) <= tol)[0]
        onset = int(inside[0]) if inside.size else start
        if onset > max(start, n // 2):
            onset = start
        if chance:
            what = f"stuck at chance level ln({chance}) = {math.log(chance):.3f}"
        else:
            what = (
                f"only {max(improved, 0):.0%} below its initial value {_fmt(initial)}"
            )
        severity = "error" if (chance or strong_cause) else "warning"
        return [
            Flag(
                kind="loss_plateau",
                severity=severity,
                first_step=int(s[onset]),
                last_step=int(s[-1]),
                layer=None,
                message=(
                    f"The loss stopped improving at step {int(s[onset])}: it stays "
                    f"at {_fmt(level)}, {what}, for the remaining "
                    f"{n - onset} logged steps."
                ),
                advice=_ADVICE["loss_plateau"],
                evidence={
                    "plateau_loss": _num(level),
                    "initial_loss": _num(initial),
                    "improvement": _num(improved),
                    "change_over_plateau": _num((m1 - m3) / scale),
                    "chance_classes": chance,
                    "flat_threshold": th.plateau_flat,
                    "improvement_threshold": th.plateau_improvement,
                    "plateau_points": int(n - onset),
                },
            )
        ]
    return []


def _rule_saddle(r: _Run, th: Thresholds, plateau: Flag | None) -> list[Flag]:
    neg = r.data.scalar("hessian/negative_ratio")
    if neg is None or not len(neg):
        mr = r.data.scalar("hessian/min_ratio")
        zr = r.data.scalar("hessian/zero_ratio")
        if mr is None or not len(mr):
            return []
        zero = r.value_at(zr, mr.steps) if zr is not None else np.zeros(len(mr))
        steps, negv = mr.steps, 1.0 - mr.values - np.nan_to_num(zero, nan=0.0)
    else:
        steps, negv = neg.steps, neg.values
    hg = r.data.scalar("hessian/grad_norm")
    g = r.value_at(hg, steps) if hg is not None else np.full(steps.shape[0], np.nan)
    if r.grad is not None and len(r.grad):
        # Nearest logged gradient norm where the probe batch's is missing.
        idx = np.clip(np.searchsorted(r.grad.steps, steps), 0, len(r.grad) - 1)
        g = np.where(np.isfinite(g), g, r.grad.values[idx])
        g0 = _nanmedian(r.grad.values[:3])
    else:
        g0 = _nanmedian(g[:1])
    if not (np.isfinite(g0) and g0 >= 0):
        return []
    # A run that starts on the critical point (g0 = 0, e.g. zero weights) still
    # counts: an exactly-zero gradient is near zero.
    small = g <= max(th.saddle_grad_fraction * g0, 1e-12)
    # Where the loss has stopped moving, the expected gradient is ~0 even when
    # the batch gradient is not (sampling noise): that also counts as near zero.
    stuck = np.zeros(steps.shape[0], dtype=bool)
    if plateau is not None:
        stuck = steps >= plateau.first_step
    hit = (negv >= th.saddle_negative_ratio) & (small | stuck)
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
                    else f"the gradient norm was near zero ({_fmt(g[worst])}; "
                    f"initially {_fmt(g0)})"
                )
                + f" while {negv[worst]:.0%} of the Hessian eigenvalues were "
                f"negative (step {int(steps[worst])}): a saddle point, not a minimum."
            ),
            advice=_ADVICE["saddle_point"],
            evidence={
                "negative_ratio": _num(negv[worst]),
                "grad_norm": _num(g[worst]),
                "initial_grad_norm": _num(g0),
                "probes": int(idx.size),
                "loss_stuck": loss_stuck,
                "negative_threshold": th.saddle_negative_ratio,
                "grad_fraction_threshold": th.saddle_grad_fraction,
            },
        )
    ]


def diagnose(run: RunData, thresholds: Thresholds | None = None) -> list[Flag]:
    """Runs every rule over a run's series.

    Args:
        run: The run's series, as :func:`tb_gradplugin.reader.read_run` returns
            them (keys ``step/loss``, ``step/grad_norm``, ``layer/grad_norm``, …).
        thresholds: The thresholds. Defaults to ``None``: :class:`Thresholds()`.

    Returns:
        The flags, the most severe first, then by first step. A missing or
        too-short series only silences the rules that need it.
    """
    th = thresholds or Thresholds()
    r = _Run(run)
    flags = _rule_non_finite(r, th)
    flags += _rule_exploding(r, th)
    # The other rules judge the run as it was before it broke: after a NaN or a
    # lasting explosion, zero shares, ratios and trends describe the wreckage.
    r.grad = r.before_divergence(r.grad)
    r.param = r.before_divergence(r.param)
    r.update_ratio = r.before_divergence(r.update_ratio)
    r.layer_grad = r.before_divergence(r.layer_grad)
    r.layer_zero = r.before_divergence(r.layer_zero)
    r.layer_param = r.before_divergence(r.layer_param)
    shares = _dead_share(r, th)
    dead = _rule_dead(r, th, shares)
    flags += dead
    dead_error = any(f.severity == "error" for f in dead)
    oscillating = _rule_oscillating(r, th)
    flags += oscillating
    plateau = [] if oscillating else _rule_plateau(r, th, dead_error)
    flags += plateau
    vanishing = _rule_vanishing(r, th, shares, dead_error, bool(plateau))
    flags += vanishing
    if plateau and any(f.severity == "error" for f in vanishing):
        plateau[0].severity = "error"  # the cause is known: not a mere slowdown
    saddle = _rule_saddle(r, th, plateau[0] if plateau else None)
    flags += saddle
    if any(f.severity != "info" for f in saddle):
        # The curvature says why the whole gradient is ~0: a saddle, which is
        # the more specific finding than a whole-model vanishing gradient.
        flags = [
            f for f in flags if not (f.kind == "vanishing_gradient" and f.layer is None)
        ]
    flags.sort(key=lambda f: (-_RANK.get(f.severity, 0), f.first_step, f.kind))
    return flags


def run_report(run: RunData, thresholds: Thresholds | None = None) -> dict[str, Any]:
    """Builds the JSON object of one run, as the CLI and the ``flags`` route send it.

    Args:
        run: The run's series.
        thresholds: The thresholds. Defaults to ``None``: :class:`Thresholds()`.

    Returns:
        ``{"run": str, "last_step": int | None, "flags": [flag.to_json(), ...]}``,
        strict JSON (no NaN or Infinity numbers).
    """
    return {
        "run": run.run,
        "last_step": run.last_step,
        "flags": [f.to_json() for f in diagnose(run, thresholds)],
    }

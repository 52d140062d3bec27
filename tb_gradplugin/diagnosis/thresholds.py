"""Every threshold of the rules, with its source."""

from __future__ import annotations

import dataclasses

__all__ = ["Thresholds"]


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
        dead_touch_steps: Without window shares, a unit that gets a gradient
            at any of this many consecutive logged steps is alive: the per-step
            zero share is judged on its minimum over them, an upper bound of the
            share never touched in those steps (at batch size 1 one step sees
            one example): 10 logged steps (this project).
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
        oscillation_variance_ratio: Block means swing only when they vary
            this many times more than independent batch noise lets them (the
            ranks of the residuals around the best non-increasing fit of the
            loss): 3 (Lo & MacKinlay 1988:
            the variance ratio is 1 for uncorrelated noise, ± 0.2 at 40 blocks;
            this project chose 3).
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
        >>> strict.explode_factor
        5.0
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
    dead_touch_steps: int = 10
    plateau_flat: float = 0.02
    plateau_improvement: float = 0.1
    chance_tolerance: float = 0.01
    chance_classes: tuple[int, ...] = (2, 3, 4, 5, 6, 7, 8, 9, 10, 100, 1000)
    oscillation_amplitude: float = 0.4
    oscillation_autocorr: float = 0.3
    oscillation_rebound: float = 0.5
    oscillation_variance_ratio: float = 3.0
    oscillation_blocks: int = 40
    oscillation_swing: float = 3.0
    oscillation_trend: float = 0.8
    min_trend_points: int = 20
    skipped_fraction: float = 0.5
    skipped_window: int = 20
    saddle_negative_ratio: float = 0.1
    saddle_grad_fraction: float = 0.01
    lr_update_ratio_high: float = 0.1

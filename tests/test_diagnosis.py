"""Tests of the pathology rules on synthetic series (tb_gradplugin.diagnosis)."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest

from tb_gradplugin import diagnosis
from tb_gradplugin.diagnosis import Flag, Thresholds, diagnose, json_safe, run_report
from tests import eventfiles

N = 600
STEPS = np.arange(1, N + 1)
VARS = ["seq/dense/kernel", "seq/dense/bias", "seq/dense_1/kernel", "seq/dense_1/bias"]


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def healthy_loss(seed: int = 0, n: int = N) -> np.ndarray:
    s = np.arange(1, n + 1)
    noise = 0.05 * rng(seed).standard_normal(n)
    return 2.3 * np.exp(-s / 120) + 0.1 + noise * np.exp(-s / 400)


def healthy_grad(seed: int = 1, n: int = N) -> np.ndarray:
    s = np.arange(1, n + 1)
    return 2.0 * np.exp(-s / 400) * np.exp(0.2 * rng(seed).standard_normal(n))


def layer_block(n: int = N, *, zero=(0.05, 0.0, 0.1, 0.0), grad=(1.0, 0.2, 0.8, 0.3)):
    return {
        "grad_norm": np.tile(np.asarray(grad, float), (n, 1)),
        "zero_fraction": np.tile(np.asarray(zero, float), (n, 1)),
    }


def run_of(**kw) -> diagnosis.RunData:
    kw.setdefault("steps", STEPS)
    n = len(kw["steps"])
    kw.setdefault("param_norm", np.full(n, 10.0))
    return eventfiles.build_run("r", **kw)


def kinds(flags: list[Flag], min_severity: str = "info") -> set[str]:
    rank = diagnosis.SEVERITIES.index(min_severity)
    return {f.kind for f in flags if diagnosis.SEVERITIES.index(f.severity) >= rank}


def only(flags: list[Flag], kind: str) -> list[Flag]:
    return [f for f in flags if f.kind == kind]


# -- healthy runs and edge cases ------------------------------------------------


def test_healthy_run_has_no_flags():
    """A decaying loss with noisy, slowly falling gradients raises nothing."""
    flags = diagnose(
        run_of(
            loss=healthy_loss(),
            grad_norm=healthy_grad(),
            update_ratio=np.full(N, 1e-3),
            variables=VARS,
            layers=layer_block(),
        )
    )
    assert flags == []


@pytest.mark.parametrize("seed", range(5))
def test_healthy_runs_with_other_seeds_get_no_warning(seed):
    """Across noise draws a healthy run never gets a warning or an error."""
    flags = diagnose(run_of(loss=healthy_loss(seed), grad_norm=healthy_grad(seed + 10)))
    assert kinds(flags, "warning") == set()


def test_one_step_run_does_not_crash():
    """A run of a single logged step yields no flags and no exception."""
    run = run_of(
        steps=[1],
        loss=[0.7],
        grad_norm=[1.0],
        param_norm=[3.0],
        variables=VARS,
        layers=layer_block(1),
    )
    assert diagnose(run) == []
    assert run_report(run)["last_step"] == 1


def test_empty_run_does_not_crash():
    """A run with no series yields no flags and a null last step."""
    run = diagnosis.RunData(run="empty")
    assert diagnose(run) == []
    assert run_report(run) == {"run": "empty", "last_step": None, "flags": []}


def test_constant_loss_is_a_plateau_and_nothing_else():
    """A loss that never moves is a plateau, never an explosion or oscillation."""
    flags = diagnose(run_of(loss=np.full(N, 0.5), grad_norm=np.ones(N)))
    assert kinds(flags) == {"loss_plateau"}
    (flag,) = flags
    assert flag.first_step == 1 and flag.last_step == N
    assert flag.evidence["improvement"] == 0


def test_all_nan_series_give_one_non_finite_error():
    """All-NaN series give a non_finite error from step 1 and nothing else."""
    nan = np.full(N, np.nan)
    flags = diagnose(
        run_of(
            loss=nan,
            grad_norm=nan,
            param_norm=nan,
            variables=VARS,
            layers={"grad_norm": np.full((N, 4), np.nan)},
        )
    )
    assert [(f.kind, f.severity) for f in flags] == [("non_finite", "error")]
    assert flags[0].first_step == 1 and flags[0].last_step == N


def test_too_short_run_gets_no_trend_flags():
    """Fewer points than min_trend_points: no plateau even for a constant loss."""
    flags = diagnose(run_of(steps=STEPS[:10], loss=np.full(10, 0.69)))
    assert flags == []


# -- non_finite ----------------------------------------------------------------


def test_nan_loss_is_an_error_from_its_first_step():
    """A loss that turns NaN at step 301 is flagged there, until the end."""
    loss = healthy_loss()
    loss[300:] = np.nan
    flags = diagnose(run_of(loss=loss, grad_norm=healthy_grad()))
    (flag,) = only(flags, "non_finite")
    assert flag.severity == "error"
    assert (flag.first_step, flag.last_step) == (301, N)
    assert "loss" in flag.evidence["what"]


def test_nan_between_logged_steps_is_seen_through_the_counts():
    """With update_freq=10, a NaN counted between logs flags the next logged step."""
    steps = np.arange(10, 2001, 10)
    counts = np.zeros(steps.size)
    counts[50] = 3  # three NaN losses among the steps 501..510
    flags = diagnose(
        run_of(
            steps=steps,
            loss=healthy_loss(n=steps.size),
            grad_norm=healthy_grad(n=steps.size),
            nonfinite_loss=counts,
        )
    )
    (flag,) = only(flags, "non_finite")
    assert flag.first_step == 510
    assert flag.evidence["previous_logged_step"] == 500


def test_skipped_loss_scale_steps_are_not_divergence():
    """Non-finite gradients in steps the loss scale skipped raise no flag."""
    nf = np.zeros(N)
    skipped = np.zeros(N)
    g = healthy_grad()
    for i in (5, 40, 200):
        nf[i], skipped[i], g[i] = 1000, 1, np.inf
    flags = diagnose(
        run_of(
            loss=healthy_loss(),
            grad_norm=g,
            nonfinite_grads=nf,
            skipped_steps=skipped,
            loss_scale=np.full(N, 2.0**15),
        )
    )
    assert kinds(flags, "warning") == set()


def test_loss_scale_that_keeps_failing_is_an_error():
    """Skipping most of the last steps for overflow is a non_finite error."""
    skipped = np.zeros(N)
    skipped[-50:] = 1
    g = healthy_grad()
    g[-50:] = np.inf
    flags = diagnose(run_of(loss=healthy_loss(), grad_norm=g, skipped_steps=skipped))
    (flag,) = only(flags, "non_finite")
    assert flag.severity == "error"
    assert flag.evidence["skipped_fraction"] >= 0.5


def test_non_finite_layer_is_the_deepest_bad_variable():
    """When only some variables have NaN gradients, the flag names the deepest."""
    nf = np.zeros((N, 4))
    nf[400:, :3] = 5
    counts = nf.sum(axis=1)
    flags = diagnose(
        run_of(
            loss=healthy_loss(),
            grad_norm=healthy_grad(),
            nonfinite_grads=counts,
            variables=VARS,
            layers={"nonfinite_grads": nf},
        )
    )
    (flag,) = only(flags, "non_finite")
    assert flag.layer == "seq/dense_1/kernel"
    assert flag.first_step == 401


# -- exploding_gradient ----------------------------------------------------------


def exploding_run(nan_from: int | None = None):
    g = healthy_grad()
    loss = healthy_loss()
    grow = np.logspace(0, 6, N - 300)
    g[300:] = g[299] * grow
    loss[300:] = loss[299] * np.sqrt(grow)
    if nan_from is not None:
        g[nan_from:] = np.nan
        loss[nan_from:] = np.nan
    layers = layer_block()
    layers["grad_norm"][300:, 2] *= grow  # dense_1/kernel blows up
    return run_of(loss=loss, grad_norm=g, variables=VARS, layers=layers)


def test_sustained_explosion_is_an_error_at_its_onset():
    """A gradient norm that grows 1e6x with the loss is an error from its onset."""
    flags = diagnose(exploding_run())
    (flag,) = [f for f in only(flags, "exploding_gradient") if f.severity == "error"]
    assert 295 <= flag.first_step <= 330  # 2x above the level: step ~321
    assert flag.last_step == N
    assert flag.layer == "seq/dense_1/kernel"
    assert flag.evidence["growth"] > 1e5
    assert "loss_plateau" not in kinds(flags)
    assert "oscillating_loss" not in kinds(flags)


def test_explosion_then_nan_gives_both_errors():
    """Growth that ends in NaN is an exploding error and a non_finite error."""
    flags = diagnose(exploding_run(nan_from=450))
    got = {(f.kind, f.severity) for f in flags}
    assert ("exploding_gradient", "error") in got
    assert ("non_finite", "error") in got
    nf = only(flags, "non_finite")[0]
    assert nf.first_step == 451


def test_recovered_spike_is_info_only():
    """A 50x spike over three steps that comes back is info, never worse."""
    g = healthy_grad()
    g[250:253] *= 50
    flags = diagnose(run_of(loss=healthy_loss(), grad_norm=g))
    (flag,) = only(flags, "exploding_gradient")
    assert flag.severity == "info"
    assert (flag.first_step, flag.last_step) == (251, 253)


def test_huge_recovered_spike_is_a_warning_not_an_error():
    """A 1000x spike that comes back is a warning (seed 004: beyond 100x)."""
    g = healthy_grad()
    g[250] *= 1000
    flags = diagnose(run_of(loss=healthy_loss(), grad_norm=g))
    (flag,) = only(flags, "exploding_gradient")
    assert flag.severity == "warning"
    assert flag.evidence["worst_step"] == 251


def test_large_early_gradient_under_warm_up_is_normal():
    """A gradient norm 100x larger in the first steps, then falling, is no flag."""
    g = healthy_grad()
    g[:60] *= np.logspace(2, 0, 60)
    lr = np.minimum(1.0, STEPS / 60) * 1e-3
    flags = diagnose(run_of(loss=healthy_loss(), grad_norm=g, learning_rate=lr))
    assert "exploding_gradient" not in kinds(flags)


def test_gradient_growing_while_loss_falls_is_not_an_explosion():
    """A gradient norm that grows 30x while the loss keeps falling is learning."""
    g = np.logspace(-2, np.log10(0.3), N) * np.exp(0.1 * rng(3).standard_normal(N))
    flags = diagnose(run_of(loss=healthy_loss(), grad_norm=g))
    assert kinds(flags, "warning") == set()


def test_batch_size_one_spread_is_not_a_spike():
    """Gradients that swing over decades from example to example are no spikes."""
    g = 10 ** rng(4).uniform(-8, 1, N)
    flags = diagnose(run_of(loss=healthy_loss(), grad_norm=g))
    assert "exploding_gradient" not in kinds(flags, "warning")


def test_saturated_batches_are_no_baseline_for_an_explosion():
    """Batches with a 1e-15 gradient (all examples right) make no explosion."""
    g = np.exp(0.5 * rng(21).standard_normal(N))
    g[rng(22).random(N) < 0.2] = 1e-15
    flags = diagnose(run_of(loss=healthy_loss(), grad_norm=g))
    assert "exploding_gradient" not in kinds(flags, "warning")


# -- vanishing_gradient ---------------------------------------------------------


def test_vanishing_first_layer_with_stuck_loss_is_an_error():
    """‖g_first‖/‖g_last‖ ~ 1e-9 with the loss at ln 2 is an error (AutoTrainer)."""
    loss = math.log(2) + 1e-3 * rng(5).standard_normal(N)
    layers = layer_block(grad=(1e-10, 1e-10, 0.1, 0.05))
    flags = diagnose(
        run_of(loss=loss, grad_norm=np.full(N, 0.1), variables=VARS, layers=layers)
    )
    (flag,) = only(flags, "vanishing_gradient")
    assert flag.severity == "error"
    assert flag.layer == "seq/dense/kernel"
    assert flag.evidence["median_ratio_first_to_last"] == pytest.approx(1e-9, rel=1e-3)
    assert "loss_plateau" in kinds(flags, "error")


def test_vanishing_with_one_point_per_epoch_is_still_an_error():
    """Eight per-epoch points at ln 2 with a 1e-12 first-layer ratio: an error."""
    steps = np.arange(16, 129, 16)
    layers = layer_block(8, grad=(1e-13, 1e-13, 0.1, 0.05))
    flags = diagnose(
        run_of(
            steps=steps,
            loss=np.full(8, math.log(2)),
            grad_norm=np.full(8, 0.1),
            variables=VARS,
            layers=layers,
        )
    )
    (flag,) = only(flags, "vanishing_gradient")
    assert flag.severity == "error"


def test_small_first_layer_ratio_with_learning_loss_is_info():
    """The same ratio while the loss improves is info only."""
    layers = layer_block(grad=(1e-10, 1e-10, 0.1, 0.05))
    flags = diagnose(
        run_of(
            loss=healthy_loss(),
            grad_norm=healthy_grad(),
            variables=VARS,
            layers=layers,
        )
    )
    (flag,) = only(flags, "vanishing_gradient")
    assert flag.severity == "info"


def test_tiny_whole_model_gradient_with_flat_loss_is_vanishing():
    """‖g‖/‖w‖ ≈ 5e-4 with a flat loss (seed 004's stuck run) is vanishing."""
    loss = math.log(2) + 1e-4 * rng(6).standard_normal(N)
    flags = diagnose(
        run_of(loss=loss, grad_norm=np.full(N, 0.0015), param_norm=np.full(N, 3.1))
    )
    (flag,) = only(flags, "vanishing_gradient")
    assert flag.severity == "error" and flag.layer is None
    assert flag.evidence["median_grad_to_param_norm"] == pytest.approx(
        0.0015 / 3.1, rel=1e-3
    )


def test_converged_run_with_tiny_gradients_is_not_vanishing():
    """Tiny gradients after the loss fell 20x are convergence, not vanishing."""
    g = 1e-6 * np.ones(N)
    g[:50] = 1.0
    flags = diagnose(run_of(loss=healthy_loss(), grad_norm=g))
    assert "vanishing_gradient" not in kinds(flags)


# -- dead_layer -----------------------------------------------------------------


def test_dead_relu_layer_is_an_error_on_its_kernel():
    """A bias whose gradient is all zero marks its layer's units as dead."""
    layers = layer_block(zero=(1.0, 1.0, 0.1, 0.0), grad=(0.0, 0.0, 0.5, 0.3))
    flags = diagnose(
        run_of(
            loss=healthy_loss(),
            grad_norm=healthy_grad(),
            variables=VARS,
            layers=layers,
        )
    )
    (flag,) = only(flags, "dead_layer")
    assert flag.severity == "error"
    assert flag.layer == "seq/dense/kernel"
    assert flag.evidence["measured_on"] == "seq/dense/bias"


def test_partly_dead_layer_is_a_warning():
    """80 % of a layer's units dead at every step is a warning (AutoTrainer 70 %)."""
    z = np.tile([0.85, 0.8, 0.1, 0.0], (N, 1))
    z[:100, :2] = 0.1  # the units died at step 101
    flags = diagnose(
        run_of(
            loss=healthy_loss(),
            grad_norm=healthy_grad(),
            variables=VARS,
            layers={"zero_fraction": z},
        )
    )
    (flag,) = only(flags, "dead_layer")
    assert flag.severity == "warning"
    assert 95 <= flag.first_step <= 110


def test_sparse_inputs_do_not_make_a_kernel_dead():
    """A kernel with 90 % zero entries but a live bias is not dead."""
    z = np.tile([0.9, 0.2, 0.75, 0.0], (N, 1))
    flags = diagnose(
        run_of(
            loss=healthy_loss(),
            grad_norm=healthy_grad(),
            variables=VARS,
            layers={"zero_fraction": z},
        )
    )
    assert "dead_layer" not in kinds(flags)


def test_embedding_sparsity_is_not_death():
    """Embedding gradients are mostly zero rows by design: no dead_layer flag."""
    z = np.tile([0.99, 0.1], (N, 1))
    flags = diagnose(
        run_of(
            loss=healthy_loss(),
            grad_norm=healthy_grad(),
            variables=["m/embedding/embeddings", "m/dense/kernel"],
            layers={"zero_fraction": z},
        )
    )
    assert "dead_layer" not in kinds(flags)


def test_fluctuating_zero_share_of_batch_size_one_is_not_dead():
    """A zero share that hovers around 55 % per example is not a dead layer."""
    z = np.clip(0.55 + 0.12 * rng(7).standard_normal((N, 4)), 0, 1)
    flags = diagnose(
        run_of(
            loss=healthy_loss(),
            grad_norm=healthy_grad(),
            variables=VARS,
            layers={"zero_fraction": z},
        )
    )
    assert "dead_layer" not in kinds(flags)


# -- oscillating_loss and loss_plateau ---------------------------------------------


def test_seed_004_style_alternation_is_oscillating():
    """A loss alternating 0.55/0.9 around its start without settling is flagged."""
    s = np.arange(1, 61)
    loss = np.where(s % 2, 0.56, 0.86) + 0.02 * rng(8).standard_normal(60)
    loss[:3] = 0.69
    grad = np.where(s % 2, 19.0, 45.0)
    flags = diagnose(
        run_of(steps=s, loss=loss, grad_norm=grad, param_norm=np.full(60, 13.5))
    )
    (flag,) = only(flags, "oscillating_loss")
    assert flag.severity == "warning"
    assert flag.evidence["lag1_autocorrelation"] < -0.5
    assert "loss_plateau" not in kinds(flags)


def test_slow_waves_of_the_block_means_are_oscillating():
    """Per-batch noise on top of waves that never settle is flagged (block means)."""
    s = np.arange(1, 4001)
    wave = 0.4 + 0.3 * np.sin(2 * np.pi * s / 400)
    loss = np.abs(wave + 0.3 * rng(9).standard_normal(4000))
    loss[:100] = 0.69 + 0.05 * rng(10).standard_normal(100)
    flags = diagnose(run_of(steps=s, loss=loss, grad_norm=np.ones(4000)))
    (flag,) = only(flags, "oscillating_loss")
    assert flag.evidence["measured_on"].startswith("means of blocks")


def test_noisy_but_converging_loss_is_not_oscillating():
    """Heavy per-batch noise on a falling loss does not count as oscillation."""
    s = np.arange(1, 4001)
    loss = (0.7 * np.exp(-s / 800) + 0.05) * rng(11).exponential(1.0, 4000)
    flags = diagnose(run_of(steps=s, loss=loss, grad_norm=np.ones(4000)))
    assert kinds(flags, "warning") == set()


def test_epoch_periodic_zigzag_on_a_falling_loss_is_not_oscillating():
    """A loss that zig-zags with the data order while falling 5x is learning."""
    s = np.arange(1, 401)
    loss = 2.5 * np.exp(-s / 150) + 0.3 + 0.35 * (((s - 1) // 10) % 2)
    flags = diagnose(run_of(steps=s, loss=loss, grad_norm=np.ones(400)))
    assert kinds(flags, "warning") == set()


def test_swings_that_grow_back_above_the_start_are_oscillating():
    """Block means swinging from 0.01 up to 3x the initial loss, no NaN: flagged."""
    s = np.arange(1, 881)
    r = rng(23)
    blocks = np.r_[np.full(10, 0.8), r.choice([0.02, 0.3, 1.5, 3.0], 30)]
    loss = np.repeat(blocks, 22) * r.exponential(1.0, 880)
    flags = diagnose(run_of(steps=s, loss=loss, grad_norm=np.ones(880)))
    (flag,) = only(flags, "oscillating_loss")
    assert flag.evidence["rebound"] > 1


def test_loss_stuck_at_ln2_is_a_plateau_error():
    """A loss at ln 2 from the start is stuck at chance level (cs231n)."""
    loss = math.log(2) + 1e-4 * rng(12).standard_normal(N)
    flags = diagnose(run_of(loss=loss, grad_norm=np.ones(N)))
    (flag,) = only(flags, "loss_plateau")
    assert flag.severity == "error"
    assert flag.evidence["chance_classes"] == 2
    assert flag.first_step == 1


def test_loss_that_drops_to_chance_level_and_stays_is_a_plateau():
    """A loss that falls from 4 to ln 10 and stays there is flagged at the drop."""
    loss = np.full(N, math.log(10)) + 1e-3 * rng(13).standard_normal(N)
    loss[:40] = np.linspace(4.0, math.log(10), 40)
    flags = diagnose(run_of(loss=loss, grad_norm=np.ones(N)))
    (flag,) = only(flags, "loss_plateau")
    assert flag.evidence["chance_classes"] == 10
    assert 30 <= flag.first_step <= 80


def test_loss_that_plateaus_after_learning_is_not_flagged():
    """A loss that fell 80 % and then levels off is a converged run."""
    loss = 2.0 * np.exp(-STEPS / 50) + 0.4 + 0.01 * rng(14).standard_normal(N)
    flags = diagnose(run_of(loss=loss, grad_norm=healthy_grad()))
    assert flags == []


# -- saddle_point -----------------------------------------------------------------


def saddle_run(grad_at_probe: float, loss: np.ndarray):
    hs = np.array([100, 200, 300, 400, 500, 600])
    neg = np.array([0.02, 0.3, 0.35, 0.3, 0.32, 0.3])
    content = {"method": "exact", "tolerance": 1e-6, "probe_size": 64, "n_params": 90}
    return run_of(
        loss=loss,
        grad_norm=np.r_[np.ones(100), np.full(N - 100, grad_at_probe)],
        scalars={
            "hessian/negative_ratio": (hs, neg, content),
            "hessian/min_ratio": (hs, 1 - neg, content),
        },
    )


def test_small_gradient_and_negative_curvature_with_stuck_loss_is_a_saddle():
    """Near-zero gradient, 30 % negative eigenvalues and a flat loss: a warning."""
    loss = np.full(N, 1.2) + 1e-4 * rng(15).standard_normal(N)
    flags = diagnose(saddle_run(1e-3, loss))
    (flag,) = only(flags, "saddle_point")
    assert flag.severity == "warning"
    assert flag.first_step == 200
    assert flag.evidence["negative_ratio"] == pytest.approx(0.35)


def test_saddle_while_learning_is_info():
    """The same curvature while the loss still falls is info only."""
    flags = diagnose(saddle_run(1e-3, healthy_loss()))
    (flag,) = only(flags, "saddle_point")
    assert flag.severity == "info"


def test_large_gradient_while_learning_is_no_saddle():
    """Negative curvature with a normal gradient and a falling loss is no saddle."""
    assert "saddle_point" not in kinds(diagnose(saddle_run(0.5, healthy_loss())))


def test_stuck_loss_with_noisy_gradient_and_negative_curvature_is_a_saddle():
    """A flat loss counts as zero expected gradient even if batch noise is not 0."""
    loss = np.full(N, 1.2) + 1e-4 * rng(19).standard_normal(N)
    (flag,) = only(diagnose(saddle_run(0.5, loss)), "saddle_point")
    assert flag.severity == "warning" and flag.evidence["loss_stuck"] is True


def test_missing_hessian_is_no_saddle_flag():
    """Without hessian/* data the saddle rule stays silent."""
    loss = np.full(N, 1.2)
    assert "saddle_point" not in kinds(diagnose(run_of(loss=loss, grad_norm=loss)))


def test_zero_initialised_network_is_a_saddle_not_dead_layers():
    """All-zero weights: zero kernel gradients are no dead units; it is a saddle."""
    hs = np.arange(50, N + 1, 50)
    neg = np.full(hs.size, 0.2)
    layers = {
        "grad_norm": np.tile([0.0, 0.0, 0.0, 0.1], (N, 1)),
        "zero_fraction": np.tile([1.0, 1.0, 1.0, 0.0], (N, 1)),
        "param_norm": np.tile([0.0, 0.0, 0.0, 0.1], (N, 1)),
    }
    loss = math.log(3) + 1e-3 * rng(20).standard_normal(N)
    flags = diagnose(
        run_of(
            loss=loss,
            grad_norm=np.full(N, 0.1),
            param_norm=np.full(N, 0.1),
            variables=VARS,
            layers=layers,
            scalars={"hessian/negative_ratio": (hs, neg)},
        )
    )
    assert kinds(flags) == {"saddle_point", "loss_plateau"}


# -- thresholds, ordering and JSON --------------------------------------------


def test_thresholds_are_overridable():
    """A stricter explode_factor turns a 5x spike into a flag; the default does not."""
    g = np.ones(N) * np.exp(0.02 * rng(16).standard_normal(N))
    g[300] = 5.0
    run = run_of(loss=healthy_loss(), grad_norm=g)
    assert "exploding_gradient" not in kinds(diagnose(run))
    strict = dataclasses.replace(Thresholds(), explode_factor=3.0)
    assert "exploding_gradient" in kinds(diagnose(run, strict))


def test_every_threshold_has_a_documented_source():
    """Each Thresholds field is described in the class docstring."""
    doc = Thresholds.__doc__
    for field in dataclasses.fields(Thresholds):
        assert f"{field.name}:" in doc, field.name


def test_flags_come_most_severe_first():
    """Errors come before warnings and info."""
    flags = diagnose(exploding_run(nan_from=450))
    ranks = [diagnosis.SEVERITIES.index(f.severity) for f in flags]
    assert ranks == sorted(ranks, reverse=True)


def test_run_report_is_strict_json_with_the_contract_keys():
    """run_report has the contract's keys and survives strict JSON encoding."""
    report = run_report(exploding_run(nan_from=450))
    text = json.dumps(report, allow_nan=False)

    def reject(name):
        raise ValueError(name)

    back = json.loads(text, parse_constant=reject)
    assert set(back) == {"run", "last_step", "flags"}
    assert back["last_step"] == N
    for flag in back["flags"]:
        assert set(flag) == {
            "kind",
            "severity",
            "first_step",
            "last_step",
            "layer",
            "message",
            "advice",
            "evidence",
        }
        assert flag["kind"] in diagnosis.KINDS
        assert flag["severity"] in diagnosis.SEVERITIES
        assert flag["message"] and flag["advice"]


def test_json_safe_encodes_non_finite_numbers_like_tensorboard():
    """NaN and ±Inf become the strings TensorBoard's http_util uses."""
    value = {"a": np.float32("nan"), "b": [math.inf, -math.inf], "c": np.int64(3)}
    assert json_safe(value) == {"a": "NaN", "b": ["Infinity", "-Infinity"], "c": 3}


def test_rolling_median_matches_a_direct_computation():
    """The centred rolling median equals np.median over each clipped window."""
    x = rng(17).standard_normal(41)
    got = diagnosis._rolling_median(x, 5)
    want = [np.median(x[max(0, i - 2) : i + 3]) for i in range(41)]
    np.testing.assert_allclose(got, want)


def test_lag1_matches_numpy_corrcoef_on_detrended_data():
    """The lag-1 autocorrelation agrees with an independent computation."""
    x = np.cumsum(rng(18).standard_normal(200)) + 0.1 * np.arange(200)
    t = np.arange(200)
    res = x - np.polyval(np.polyfit(t, x, 1), t)
    want = np.sum(res[:-1] * res[1:]) / np.sum(res * res)
    assert diagnosis._lag1(x) == pytest.approx(want)
    assert abs(np.corrcoef(res[:-1], res[1:])[0, 1] - want) < 0.05

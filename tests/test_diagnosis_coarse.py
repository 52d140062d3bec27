"""Tests of the block-summary screens (diagnosis.coarse) and deferred reading.

Each run is diagnosed twice: from every step, and with its per-variable series
deferred behind their block summaries (made by ``blocks.summarize`` from the
same steps, as a writer makes them). The flags must be identical.
"""

from __future__ import annotations

import numpy as np
import pytest

from tb_gradplugin import blocks, diagnosis, reader
from tb_gradplugin.diagnosis.coarse import Screen
from tb_gradplugin.diagnosis.run_view import DeferredTensor
from tests.diagnosis_runs import (
    VARS,
    N,
    exploding_run,
    healthy_grad,
    healthy_loss,
    layer_block,
    layers_run,
    run_of,
)


def block_rows(
    series: reader.Series, size: int, tail: int = 0
) -> dict[str, np.ndarray]:
    """The block summaries of a series as ``DeferredTensor`` wants them.

    With ``tail``, the last ``tail`` rows are left out of every block, as in a
    live run whose next block is not written yet.
    """
    n = len(series) - tail
    starts = list(range(0, n, size))
    summaries = [
        blocks.summarize(
            series.steps[i : min(i + size, n)], series.values[i : min(i + size, n)]
        )
        for i in starts
    ]
    ends = series.steps[[min(i + size, n) - 1 for i in starts]]
    as_series = reader.Series(
        steps=ends,
        values=np.stack(summaries).reshape(len(summaries), -1),
        wall_times=np.zeros(len(summaries)),
        content=series.content,
    )
    return {name: blocks.row(as_series, name) for name in blocks.BLOCK_ROWS}


def deferred_run(run: reader.RunData, size: int = 37, tail: int = 0):
    """The run without its per-variable series, and those series deferred."""
    loads: list[str] = []
    scalars_only = reader.RunData(run=run.run, scalars=dict(run.scalars))
    deferred = {}
    for key, series in run.tensors.items():

        def load(key=key, series=series):
            loads.append(key)
            return series

        deferred[key] = DeferredTensor(
            load, series.content, block_rows(series, size, tail), rows=len(series)
        )
    return scalars_only, deferred, loads


def same_flags(run: reader.RunData, size: int = 37, tail: int = 0) -> list[str]:
    """Asserts equal reports both ways; returns the keys whose steps were read."""
    full = diagnosis.run_report(run)
    scalars_only, deferred, loads = deferred_run(run, size, tail)
    coarse = diagnosis.run_report(
        scalars_only, deferred=deferred, last_step=full["last_step"]
    )
    assert coarse == full
    return loads


def healthy_run(n: int = N, seed: int = 0):
    layers = layer_block(n)
    noise = np.random.default_rng(seed).standard_normal((n, 4))
    layers["grad_norm"] = layers["grad_norm"] * np.exp(0.2 * noise)
    layers["param_norm"] = np.tile([3.0, 0.5, 2.0, 0.4], (n, 1))
    return run_of(
        steps=np.arange(1, n + 1),
        loss=healthy_loss(seed, n),
        grad_norm=healthy_grad(seed + 1, n),
        variables=VARS,
        layers=layers,
    )


def dead_run():
    layers = layer_block(zero=(0.99, 0.99, 0.1, 0.0))
    return layers_run(layers)


def vanishing_run():
    layers = layer_block(grad=(1e-7, 1e-8, 0.8, 0.3))
    loss = np.full(N, 2.3) + 0.001 * np.sin(np.arange(N))
    return run_of(loss=loss, grad_norm=np.full(N, 1e-3), variables=VARS, layers=layers)


def layer_nan_run():
    layers = layer_block()
    layers["nonfinite_grads"] = np.zeros((N, 4))
    layers["nonfinite_grads"][400:, 2] = 5
    layers["grad_norm"][400:, 2] = np.nan
    g = healthy_grad()
    g[400:] = np.nan
    return run_of(loss=healthy_loss(), grad_norm=g, variables=VARS, layers=layers)


def zero_weight_run():
    layers = layer_block(zero=(0.99, 0.99, 0.1, 0.0))
    layers["param_norm"] = np.tile([3.0, 0.5, 0.0, 0.4], (N, 1))
    return layers_run(layers)


def frozen_run(frozen_from: int = 0, frozen_until: int = N):
    """The first layer frozen (absent: NaN, non-finite count 0) over some steps."""
    layers = layer_block(grad=(1e-7, 1e-8, 0.8, 0.3))
    layers["nonfinite_grads"] = np.zeros((N, 4))
    for stat in ("grad_norm", "zero_fraction"):
        layers[stat][frozen_from:frozen_until, :2] = np.nan
    loss = np.full(N, 2.3) + 0.001 * np.sin(np.arange(N))
    return run_of(loss=loss, grad_norm=np.full(N, 1e-3), variables=VARS, layers=layers)


RUNS = {
    "frozen": frozen_run,
    "frozen_late": lambda: frozen_run(frozen_from=290),
    "frozen_early": lambda: frozen_run(frozen_until=310),
    "healthy": healthy_run,
    "healthy_long": lambda: healthy_run(5000, seed=3),
    "exploding": exploding_run,
    "exploding_then_nan": lambda: exploding_run(nan_from=450),
    "dead": dead_run,
    "vanishing": vanishing_run,
    "nan_in_one_layer": layer_nan_run,
    "zero_weight_blocks": zero_weight_run,
}


@pytest.mark.parametrize("name", sorted(RUNS))
@pytest.mark.parametrize(("size", "tail"), [(1, 0), (37, 0), (100, 0), (100, 63)])
def test_deferred_flags_equal_the_flags_of_every_step(name, size, tail):
    """Block screens + deferred reads give exactly the per-step flags."""
    same_flags(RUNS[name](), size, tail)


@pytest.mark.parametrize("tail", [0, 99])
def test_a_healthy_run_is_judged_without_reading_its_layer_steps(tail):
    """On a healthy run the blocks decide every per-layer question, live or not."""
    assert same_flags(healthy_run(5000, seed=3), 100, tail) == []


def test_findings_that_need_steps_read_them():
    """A dead layer and a layer NaN read the steps they need, no others."""
    assert "layer/zero_fraction" in same_flags(dead_run())
    loads = same_flags(layer_nan_run())
    assert "layer/nonfinite_grads" in loads


@pytest.mark.parametrize(
    "name", ["healthy_long", "dead", "exploding", "nan_in_one_layer"]
)
def test_flags_stay_equal_as_steps_are_appended(name):
    """Each prefix of a growing run gets the flags of its steps read whole."""
    run = RUNS[name]()
    n = len(run.scalars["step/loss"])
    for end in (n // 3, n // 2, n - 7, n):
        prefix = reader.RunData(
            run=run.run,
            scalars={k: _head(s, end) for k, s in run.scalars.items()},
            tensors={k: _head(s, end) for k, s in run.tensors.items()},
        )
        same_flags(prefix)


def _head(series: reader.Series, end: int) -> reader.Series:
    return reader.Series(
        series.steps[:end], series.values[:end], series.wall_times[:end], series.content
    )


def test_screen_bounds_hold_on_random_blocks():
    """Each proven bound holds on the values the blocks summarise (numpy)."""
    rng = np.random.default_rng(0)
    for _ in range(200):
        n = int(rng.integers(5, 300))
        values = rng.choice(
            [0.0, 0.5, 1.0, 2.0, np.nan], size=(n, 1), p=[0.3, 0.2, 0.2, 0.2, 0.1]
        )
        values[:, 0] *= rng.random()
        series = reader.Series(np.arange(1, n + 1), values, np.zeros(n), {})
        tail = int(rng.integers(0, 3)) * int(rng.integers(0, n // 2))
        screen = Screen.of(
            DeferredTensor(
                lambda series=series: series,
                {},
                block_rows(series, int(rng.integers(1, 40)), tail),
                rows=n,
            )
        )
        start = int(rng.integers(0, n))
        tail = values[start:, 0]
        finite = tail[np.isfinite(tail)]
        bound = float(rng.choice([0.1, 0.4, 0.9]))
        if screen.all_below(0, start, bound):
            assert not finite.size or finite.max() < bound
        if screen.median_at_least(0, start, bound):
            assert np.median(finite) >= bound
        q = float(rng.choice([0.1, 0.5]))
        if screen.quantile_below(0, start, n, q, bound):
            # Any values at most the rows' own (rolling minima) qualify too.
            lower = values[start:, 0] - rng.random(n - start)
            lower = lower[np.isfinite(lower)]
            assert lower.size and np.quantile(lower, q) < bound
        if screen.some_nonzero(0, start):
            assert np.any(finite != 0)
        absent = screen.absent(start)
        if absent is not None:
            assert (0 in absent) == (not finite.size)


def test_quantile_below_needs_enough_rows_below_the_bound():
    """Ten low rows of 100 prove the 5 % quantile low, not the median."""
    values = np.full((100, 1), 0.9)
    values[40:50] = 0.1
    series = reader.Series(np.arange(1, 101), values, np.zeros(100), {})
    screen = Screen.of(DeferredTensor(lambda: series, {}, block_rows(series, 10)))
    assert np.quantile(values[:, 0], 0.05) < 0.5 <= np.quantile(values[:, 0], 0.5)
    assert screen.quantile_below(0, 0, 100, 0.05, 0.5)
    assert not screen.quantile_below(0, 0, 100, 0.5, 0.5)
    assert not screen.quantile_below(0, 50, 100, 0.05, 0.5)  # none below after 50
    assert not screen.all_below(0, 0, 0.5)

"""Synthetic runs shared by the tests of the diagnosis rules."""

from __future__ import annotations

import numpy as np

from tb_gradplugin import diagnosis
from tb_gradplugin.diagnosis import Flag
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


def layers_run(layers: dict, variables: list[str] = VARS) -> diagnosis.RunData:
    """A run with a healthy loss and gradient norm and these per-layer series."""
    return run_of(
        loss=healthy_loss(),
        grad_norm=healthy_grad(),
        variables=variables,
        layers=layers,
    )


def kinds(flags: list[Flag], min_severity: str = "info") -> set[str]:
    rank = diagnosis.SEVERITIES.index(min_severity)
    return {f.kind for f in flags if diagnosis.SEVERITIES.index(f.severity) >= rank}


def only(flags: list[Flag], kind: str) -> list[Flag]:
    return [f for f in flags if f.kind == kind]


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

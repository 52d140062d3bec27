"""Tests of tb_gradplugin.lanczos on operators known in advance (no TensorFlow)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tb_gradplugin import lanczos
from tests.no_tensorflow import run_without_tensorflow


def _rotated(eig, seed=0):
    """Returns a dense symmetric matrix with the given eigenvalues."""
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(eig.size, eig.size)))
    return (q * eig) @ q.T


def test_module_runs_with_tensorflow_blocked():
    """lanczos.py imports and runs with TensorFlow and Keras blocked."""
    out = run_without_tensorflow(
        "import numpy as np; from tb_gradplugin import lanczos;"
        "q = lanczos.lanczos(lambda v: 2 * v, np.ones((1, 3)), 3);"
        "print(round(float(q.nodes[0][0]), 9))"
    )
    assert out.strip() == "2.0"


def test_lanczos_with_full_steps_recovers_the_eigenvalues():
    """With reorthogonalisation and n steps the nodes are the eigenvalues."""
    eig = np.array([-3.0, -1.0, 0.5, 2.0, 7.0])
    a = _rotated(eig, 1)
    start = lanczos.rademacher(np.random.default_rng(0), (2, 5))
    quad = lanczos.lanczos(lambda v: v @ a, start, 50, reorthogonalize=True)
    assert quad.applied <= 2 * 5
    for nodes, weights, v in zip(quad.nodes, quad.weights, start, strict=True):
        np.testing.assert_allclose(nodes, eig, atol=1e-9)
        assert weights.sum() == pytest.approx(1.0)
        # The weights are the squared projections of the unit probe.
        q = np.linalg.eigh(a)[1]
        np.testing.assert_allclose(weights, (q.T @ v) ** 2 / 5, atol=1e-9)
    np.testing.assert_allclose(quad.rayleigh, [v @ a @ v / 5 for v in start])


def test_hutchinson_trace_is_the_mean_of_quadratic_forms():
    """The trace estimate is the samples' mean and its error their stderr."""
    a = _rotated(np.array([-2.0, 0.5, 1.0, 4.0]), 2)
    v = lanczos.rademacher(np.random.default_rng(5), (4000, 4))
    samples = np.einsum("bn,nm,bm->b", v, a, v)
    trace, stderr = lanczos.hutchinson_trace(samples)
    assert trace == pytest.approx(float(np.mean(samples)))
    assert stderr == pytest.approx(float(np.std(samples, ddof=1)) / math.sqrt(4000))
    assert abs(trace - 3.5) <= 4 * stderr
    assert math.isnan(lanczos.hutchinson_trace(np.zeros(0))[0])
    assert lanczos.hutchinson_trace(np.array([2.0]))[0] == 2.0
    assert math.isnan(lanczos.hutchinson_trace(np.array([2.0]))[1])

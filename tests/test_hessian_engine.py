"""Tests of tb_gradplugin.hessian_engine: chunked Hessian rows on a real model."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

from tb_gradplugin import curvature, hessian_engine  # noqa: E402
from tests.test_curvature import _small_regression  # noqa: E402


def test_chunked_jacobian_equals_unchunked(monkeypatch):
    """Hessian rows computed in small memory-bounded chunks give the same result."""
    model, x, y = _small_regression()
    whole = curvature.compute_curvature(model, x, y)
    engine = hessian_engine.engine_for(model)
    assert engine.pfor_chunk(38, 32) is None
    monkeypatch.setattr(hessian_engine, "_PFOR_BUDGET_BYTES", 4 * 3 * 32 * 8 * 7)
    assert engine.pfor_chunk(38, 32) == 7
    chunked = curvature.compute_curvature(model, x, y)
    np.testing.assert_allclose(chunked.eigenvalues, whole.eigenvalues, atol=1e-6)
    assert {key[1] for key in engine._hessian_fns} == {None, 7}

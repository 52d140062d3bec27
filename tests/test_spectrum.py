"""Tests of tb_gradplugin.spectrum on spectra known in advance (no TensorFlow)."""

from __future__ import annotations

import functools

import numpy as np
import pytest

from tb_gradplugin import lanczos, spectral_density, spectrum
from tests.no_tensorflow import run_without_tensorflow

EPS32 = np.finfo(np.float32).eps


@functools.cache
def _orthogonal(n, seed):
    """Returns a random orthogonal matrix (cached: QR is the slow part)."""
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(n, n)))
    return q


def _rotated(eig, seed=0):
    """Returns a dense symmetric matrix with the given eigenvalues."""
    q = _orthogonal(eig.size, seed)
    return (q * eig) @ q.T


def _slq(eig, steps=128, probes=4, seed=0, resolution=spectrum.DEFAULT_RESOLUTION):
    """Runs SLQ on a rotated matrix with the given eigenvalues."""
    a = _rotated(np.asarray(eig, np.float64), seed)
    rng = np.random.default_rng(seed + 100)
    start = lanczos.rademacher(rng, (probes, a.shape[0]))
    quad = lanczos.lanczos(lambda v: v @ a, start, steps)
    return quad, spectrum.slq_spectrum(quad, a.shape[0], steps, resolution)


def test_module_imports_no_tensorflow():
    """The spectrum module imports and runs with TensorFlow and Keras blocked."""
    out = run_without_tensorflow(
        "from tb_gradplugin import spectrum;"
        "print(spectrum.exact_spectrum([-1.0, 2.0, 3.0]).min_ratio)"
    )
    assert out.strip() == str(2 / 3)


def test_six_decades_of_positive_eigenvalues_count_positive():
    """Eigenvalues from 1 down to 1e-5 of the largest all count as positive."""
    eig = np.logspace(0, -5, 24)
    s = spectrum.exact_spectrum(spectrum.symmetric_eigenvalues(_rotated(eig)))
    assert s.zero_threshold == pytest.approx(24 * EPS32)
    assert (s.min_ratio, s.zero_ratio, s.negative_ratio) == (1.0, 0.0, 0.0)
    assert s.min_ratio_low == s.min_ratio_high == 1.0
    # Band 1e-3: 10^(-5k/23) <= 1e-3 for k = 14..23, 10 of the 24.
    assert s.near_zero_ratio == pytest.approx(10 / 24)
    assert s.band_min_ratio == 1.0
    assert s.tolerance == 0.0 and s.method == "exact"


def test_exact_shares_at_the_machine_tolerance_and_the_band():
    """Known eigenvalues either side of n·ε·max|λ| and of the band are counted."""
    tau = 10 * EPS32 * 4.0
    eig = np.array([4.0, 0.5, 3e-3, 2 * tau, 0.5 * tau, 0.0, -0.5 * tau, -2 * tau])
    eig = np.concatenate([eig, [-1e-2, -2.0]])
    s = spectrum.exact_spectrum(eig, resolution=1e-3)
    assert s.zero_threshold == pytest.approx(tau)
    assert s.min_ratio == pytest.approx(4 / 10)
    assert s.zero_ratio == pytest.approx(3 / 10)
    assert s.negative_ratio == pytest.approx(3 / 10)
    assert (s.min_ratio_low, s.min_ratio_high) == (
        pytest.approx(0.4),
        pytest.approx(0.7),
    )
    # |λ| <= 4e-3: 3e-3, ±2τ, ±τ/2, 0.
    assert s.near_zero_ratio == pytest.approx(6 / 10)
    # Outside the band: 4, 0.5, -1e-2, -2.
    assert s.band_min_ratio == pytest.approx(2 / 4)
    assert s.band_negative_ratio == pytest.approx(2 / 10)
    assert s.top == 4.0


def test_saddle_and_block_with_known_negative_eigenvalues():
    """x² − y² is half negative; a rotated block gives its known negative share."""
    s = spectrum.exact_spectrum(spectrum.symmetric_eigenvalues(np.diag([2.0, -2.0])))
    assert (s.min_ratio, s.zero_ratio, s.negative_ratio) == (0.5, 0.0, 0.5)
    eig = np.concatenate([np.linspace(1, 3, 7), np.linspace(-2, -0.5, 5)])
    s = spectrum.exact_spectrum(spectrum.symmetric_eigenvalues(_rotated(eig, 4)))
    assert (s.min_ratio, s.negative_ratio) == (
        pytest.approx(7 / 12),
        pytest.approx(5 / 12),
    )
    assert s.top == pytest.approx(3.0)


def test_non_finite_or_empty_input_gives_nan():
    """A NaN Hessian entry or no eigenvalue gives NaN shares, not an error."""
    h = np.eye(3)
    h[0, 1] = np.nan
    eig = spectrum.symmetric_eigenvalues(h)
    assert np.all(np.isnan(eig))
    for values in (eig, np.zeros(0)):
        s = spectrum.exact_spectrum(values)
        assert np.isnan(s.min_ratio) and np.isnan(s.zero_threshold)


def test_slq_ratio_within_003_and_covered_where_the_spectrum_has_a_gap():
    """With no mass near zero SLQ is within 0.03 of exact and its tolerance covers."""
    rng = np.random.default_rng(1)
    cases = [
        np.concatenate([rng.uniform(1, 3, 300), rng.uniform(-2, -0.5, 300)]),
        np.concatenate([rng.uniform(1, 3, 400), rng.uniform(-2, -0.5, 200)]),
        np.concatenate([rng.uniform(0.2, 5, 100), -rng.uniform(0.1, 0.4, 500)]),
    ]
    for eig in cases:
        exact = spectrum.exact_spectrum(eig)
        _, s = _slq(eig, probes=8)
        error = abs(s.min_ratio - exact.min_ratio)
        assert error <= 0.03
        assert error <= s.tolerance <= 0.06
        assert s.min_ratio_low <= exact.min_ratio <= s.min_ratio_high
        assert s.negative_ratio == pytest.approx(1 - s.min_ratio)
        assert np.isnan(s.zero_ratio)
        assert s.near_zero_ratio == pytest.approx(exact.near_zero_ratio, abs=0.01)


def test_slq_says_so_when_the_bulk_sits_at_zero():
    """A bulk within the resolution gives a wide range holding the truth, not a 0."""
    rng = np.random.default_rng(2)
    cases = [
        np.concatenate([rng.normal(0, 1e-3, 560), rng.uniform(0.5, 10, 40)]),
        np.concatenate(
            [np.zeros(520), rng.uniform(0.1, 10, 60), -rng.uniform(size=20)]
        ),
        np.concatenate([rng.lognormal(-4, 2, 480), -rng.lognormal(-6, 2, 120)]),
    ]
    for eig in cases:
        exact = spectrum.exact_spectrum(eig)
        for seed in (0, 1):
            _, s = _slq(eig, seed=seed)
            assert s.min_ratio_low <= exact.min_ratio <= s.min_ratio_high
            # The share above 0 (what the density reads) is in the range too.
            assert s.min_ratio_low <= np.mean(eig > 0) <= s.min_ratio_high
            assert abs(s.min_ratio - exact.min_ratio) <= s.tolerance
            assert s.min_ratio_high - s.min_ratio_low >= 0.5
            assert 0.2 < s.min_ratio < 0.8  # the bulk is split, not called 0
            assert s.zero_threshold == pytest.approx((eig.max() - eig.min()) / 128, 0.1)


def test_slq_band_shares_match_exact_at_the_lanczos_band():
    """Near-zero and outside-band shares agree with exact ones at 2/steps."""
    rng = np.random.default_rng(3)
    eig = np.concatenate(
        [
            rng.normal(0, 3e-3, 480),
            rng.uniform(0.1, 1, 100),
            -rng.uniform(0.05, 0.3, 20),
        ]
    )
    _, s = _slq(eig)
    assert s.resolution == spectrum.lanczos_band(1e-3, 128) == 2 / 128
    exact = spectrum.exact_spectrum(eig, resolution=s.resolution)
    assert s.near_zero_ratio == pytest.approx(exact.near_zero_ratio, abs=0.03)
    assert s.band_min_ratio == pytest.approx(exact.band_min_ratio, abs=0.03)
    assert s.band_negative_ratio == pytest.approx(20 / 600, abs=0.03)
    assert exact.band_negative_ratio == pytest.approx(20 / 600)


def test_non_finite_quadrature_gives_nan():
    """A NaN operator gives NaN shares and a NaN density, not an error."""
    start = lanczos.rademacher(np.random.default_rng(0), (2, 6))
    quad = lanczos.lanczos(lambda v: np.full_like(v, np.nan), start, 4)
    assert not quad.finite()
    s = spectrum.slq_spectrum(quad, 6, 4)
    assert np.isnan(s.min_ratio) and s.method == "lanczos"
    sigma, grid, dens = spectral_density.density_of(
        quad.nodes, quad.weights, 4, points=8
    )
    assert np.isnan(sigma) and np.all(np.isnan(dens)) and dens.size == 8

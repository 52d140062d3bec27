"""Tests of tb_gradplugin.curvature against independently built Hessians."""

from __future__ import annotations

import os
import random

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

from tb_gradplugin import curvature, hessian_engine  # noqa: E402


def _reference_hessian(loss_fn, variables):
    """Builds the Hessian row by row with nested tapes (no jacobian, no pfor)."""
    with tf.GradientTape(persistent=True) as outer:
        with tf.GradientTape() as inner:
            loss = loss_fn()
        grads = inner.gradient(loss, variables)
        flat = tf.concat([tf.reshape(g, [-1]) for g in grads], 0)
        entries = [flat[i] for i in range(int(flat.shape[0]))]
    rows = []
    for entry in entries:
        row = outer.gradient(entry, variables)
        rows.append(np.concatenate([r.numpy().reshape(-1) for r in row]))
    del outer
    h = np.array(rows, dtype=np.float64)
    return float(loss), h


EPS32 = np.finfo(np.float32).eps


def _shares(eig, tol):
    """Returns numpy's (positive, zero, negative) shares at an absolute tolerance."""
    return (
        np.mean(eig > tol),
        np.mean(np.abs(eig) <= tol),
        np.mean(eig < -tol),
    )


def _machine_tolerance(eig):
    """Returns the stated exact-path tolerance n·ε·max|λ| (float32 ε)."""
    return eig.size * EPS32 * np.max(np.abs(eig))


class _Quadratic(keras.layers.Layer):
    """Outputs ½ wᵀ A w for every example: its loss has Hessian A."""

    def __init__(self, a, w0, **kwargs):
        super().__init__(**kwargs)
        self.a = np.asarray(a, dtype=np.float32)
        self.w0 = np.asarray(w0, dtype=np.float32)

    def build(self, input_shape):
        self.w = self.add_weight(
            shape=(self.a.shape[0],),
            initializer=keras.initializers.Constant(self.w0),
            name="w",
        )

    def call(self, inputs):
        value = 0.5 * tf.tensordot(self.w, tf.linalg.matvec(self.a, self.w), 1)
        return tf.zeros_like(inputs[:, :1]) + value


def _prediction_is_loss(y_true, y_pred):
    return y_pred[:, 0]


def _quadratic_model(a, w0):
    inputs = keras.Input((1,))
    model = keras.Model(inputs, _Quadratic(a, w0)(inputs))
    model.compile(optimizer="sgd", loss=_prediction_is_loss)
    return model


def _probe():
    return np.ones((4, 1), np.float32), np.zeros((4, 1), np.float32)


def _small_regression(l2=1e-2):
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((3,)),
            keras.layers.Dense(
                6, activation="tanh", kernel_regularizer=keras.regularizers.L2(l2)
            ),
            keras.layers.Dense(2),
        ]
    )
    model.compile(optimizer="adam", loss="mse")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 3)).astype(np.float32)
    y = rng.normal(size=(32, 2)).astype(np.float32)
    model.fit(x, y, epochs=3, batch_size=8, verbose=0)
    return model, x, y


def test_exact_matches_nested_tape_hessian_with_regularisation():
    """Exact eigenvalues and ratios equal eigvalsh of a nested-tape Hessian."""
    l2 = 1e-2
    model, x, y = _small_regression(l2)
    kernel0 = model.layers[0].kernel

    def hand_written_loss():
        # The compiled loss written out: MSE plus the L2 penalty.
        mse = tf.reduce_mean(tf.square(model(x, training=False) - y))
        return mse + l2 * tf.reduce_sum(tf.square(kernel0))

    ref_loss, h = _reference_hessian(hand_written_loss, model.trainable_variables)
    ref_eig = np.linalg.eigvalsh(0.5 * (h + h.T))
    result = curvature.compute_curvature(model, x, y, max_exact_params=1000)

    assert result.method == "exact"
    assert result.n_params == h.shape[0] == 38
    assert result.probe_loss == pytest.approx(ref_loss, rel=1e-5)
    scale = np.max(np.abs(ref_eig))
    np.testing.assert_allclose(result.eigenvalues, ref_eig, atol=1e-4 * scale)
    assert ref_eig.min() < 0 < ref_eig.max()
    # The minimal ratio is numpy's share above the stated tolerance.
    tau = _machine_tolerance(ref_eig)
    assert result.zero_threshold == pytest.approx(tau, rel=1e-4)
    assert (result.min_ratio, result.zero_ratio, result.negative_ratio) == (
        pytest.approx(_shares(ref_eig, tau))
    )
    assert result.min_ratio_low == result.min_ratio
    assert result.min_ratio_high == pytest.approx(1 - result.negative_ratio)
    assert result.tolerance == 0.0
    for resolution in (1e-3, 1e-2):
        r = curvature.compute_curvature(
            model, x, y, max_exact_params=1000, resolution=resolution
        )
        band = resolution * scale
        outside = ref_eig[np.abs(ref_eig) > band]
        assert r.near_zero_ratio == pytest.approx(np.mean(np.abs(ref_eig) <= band))
        assert r.band_min_ratio == pytest.approx(np.mean(outside > 0))
        assert r.band_negative_ratio == pytest.approx(np.mean(ref_eig < -band))
        assert r.min_ratio == result.min_ratio  # the band leaves the ratio alone
    assert result.top_eigenvalue == pytest.approx(ref_eig[-1], rel=1e-4)
    assert result.trace == pytest.approx(np.trace(h), rel=1e-4, abs=1e-5)
    offsets = np.cumsum(
        [0] + [int(np.prod(v.shape)) for v in model.trainable_variables]
    )
    for i in range(len(model.trainable_variables)):
        block = h[offsets[i] : offsets[i + 1], offsets[i] : offsets[i + 1]]
        block_eig = np.linalg.eigvalsh(0.5 * (block + block.T))
        pos, zero, _ = _shares(block_eig, _machine_tolerance(block_eig))
        assert result.layer_min_ratio[i] == pytest.approx(pos)
        assert result.layer_zero_ratio[i] == pytest.approx(zero)
        assert result.layer_top_eigenvalue[i] == pytest.approx(
            block_eig[-1], rel=1e-4, abs=1e-6
        )
    assert result.layer_method == ("exact",) * 4


def test_exact_matches_finite_differences_on_float64_conv_classifier():
    """A float64 Conv1D classifier's Hessian equals central differences of grads."""
    keras.utils.set_random_seed(2)
    model = keras.Sequential(
        [
            keras.Input((8, 2)),
            keras.layers.Conv1D(3, 3, activation="tanh", dtype="float64"),
            keras.layers.Flatten(dtype="float64"),
            keras.layers.Dense(3, dtype="float64"),
        ]
    )
    model.compile(
        optimizer="sgd",
        # float64 loss too, or the differences drown in float32 round-off.
        loss=keras.losses.SparseCategoricalCrossentropy(
            from_logits=True, dtype="float64"
        ),
    )
    rng = np.random.default_rng(2)
    x = rng.normal(size=(16, 8, 2))
    y = rng.integers(0, 3, 16)
    variables = model.trainable_variables
    theta = np.concatenate([v.numpy().reshape(-1) for v in variables])

    def grad_at(point):
        start = 0
        for v in variables:
            size = int(np.prod(v.shape))
            v.assign(point[start : start + size].reshape(v.shape))
            start += size
        with tf.GradientTape() as tape:
            loss = model.compute_loss(x=x, y=y, y_pred=model(x, training=False))
        return np.concatenate(
            [g.numpy().reshape(-1) for g in tape.gradient(loss, variables)]
        )

    eps = 1e-5
    h = np.array(
        [
            (grad_at(theta + eps * e) - grad_at(theta - eps * e)) / (2 * eps)
            for e in np.eye(theta.size)
        ]
    )
    grad_at(theta)  # restore the weights
    ref_eig = np.linalg.eigvalsh(0.5 * (h + h.T))
    result = curvature.compute_curvature(model, x, y)
    assert result.n_params == theta.size == 3 * 2 * 3 + 3 + 18 * 3 + 3
    np.testing.assert_allclose(
        result.eigenvalues, ref_eig, atol=1e-5 * np.abs(ref_eig).max()
    )
    pos, zero, neg = _shares(ref_eig, _machine_tolerance(ref_eig))
    assert (result.min_ratio, result.zero_ratio, result.negative_ratio) == (
        pytest.approx(pos),
        pytest.approx(zero),
        pytest.approx(neg),
    )
    assert neg > 0 and pos > 0


def test_saddle_x2_minus_y2():
    """The saddle x² − y² has ratios ½/0/½, top eigenvalue 2 and trace 0."""
    model = _quadratic_model(np.diag([2.0, -2.0]), w0=[0.3, 0.2])
    x, y = _probe()
    result = curvature.compute_curvature(model, x, y)
    assert result.method == "exact"
    assert result.min_ratio == 0.5
    assert result.negative_ratio == 0.5
    assert result.zero_ratio == 0.0
    assert result.top_eigenvalue == pytest.approx(2.0)
    assert result.trace == pytest.approx(0.0, abs=1e-6)
    assert result.probe_loss == pytest.approx(0.3**2 - 0.2**2)
    assert result.grad_norm == pytest.approx(np.hypot(0.6, 0.4), rel=1e-6)
    np.testing.assert_allclose(result.eigenvalues, [-2.0, 2.0], rtol=1e-6)
    assert result.zero_threshold == pytest.approx(2 * EPS32 * 2.0)
    assert (result.min_ratio_low, result.min_ratio_high) == (0.5, 0.5)


def test_quadratic_over_six_decades_counts_every_eigenvalue_positive():
    """Eigenvalues from 1 down to 1e-5 of the largest, rotated, all count positive."""
    eig = np.logspace(0, -5, 24)
    rng = np.random.default_rng(5)
    q, _ = np.linalg.qr(rng.normal(size=(24, 24)))
    model = _quadratic_model((q * eig) @ q.T, w0=np.full(24, 0.1))
    x, y = _probe()
    result = curvature.compute_curvature(model, x, y)
    assert result.method == "exact"
    np.testing.assert_allclose(result.eigenvalues, np.sort(eig), rtol=1e-2)
    assert (result.min_ratio, result.zero_ratio, result.negative_ratio) == (1, 0, 0)
    assert result.zero_threshold < 1e-5 * eig.max()
    # 10 of the 24 are within the default band of 1e-3 · max|λ|.
    assert result.near_zero_ratio == pytest.approx(10 / 24)
    assert result.band_min_ratio == 1.0


def _known_spectrum(n_pos, n_zero, n_neg, seed=0):
    rng = np.random.default_rng(seed)
    eig = np.concatenate(
        [
            rng.uniform(1.0, 3.0, n_pos),
            np.zeros(n_zero),
            rng.uniform(-2.0, -0.5, n_neg),
        ]
    )
    q, _ = np.linalg.qr(rng.normal(size=(eig.size, eig.size)))
    return eig, (q * eig) @ q.T


def test_quadratic_with_known_spectrum_exact_and_lanczos():
    """A rotated quadratic's known spectrum comes back exactly and by Lanczos."""
    eig, a = _known_spectrum(150, 50, 100)
    n = eig.size
    model = _quadratic_model(a, w0=np.full(n, 0.1))
    x, y = _probe()
    exact = curvature.compute_curvature(model, x, y, max_exact_params=n)
    assert exact.method == "exact"
    np.testing.assert_allclose(exact.eigenvalues, np.sort(eig), atol=1e-5)
    assert (exact.min_ratio, exact.zero_ratio, exact.negative_ratio) == (
        pytest.approx(0.5),
        pytest.approx(50 / 300),
        pytest.approx(100 / 300),
    )
    assert exact.trace == pytest.approx(eig.sum(), rel=1e-5)

    for reorthogonalize in (False, True):
        lanczos = curvature.compute_curvature(
            model, x, y, max_exact_params=n - 1, reorthogonalize=reorthogonalize
        )
        assert lanczos.method == "lanczos"
        assert lanczos.layer_method == ("lanczos",)
        # The 50 exact zeros cannot be signed by the density: the range holds
        # them on either side, and the real error is within the tolerance.
        assert lanczos.min_ratio_low <= 0.5 <= 0.5 + 50 / 300 <= lanczos.min_ratio_high
        assert abs(lanczos.min_ratio - 0.5) <= lanczos.tolerance
        assert abs(lanczos.negative_ratio - 100 / 300) <= lanczos.tolerance
        assert np.isnan(lanczos.zero_ratio)
        # What the density resolves is within 0.03 of exact, at its band.
        assert lanczos.resolution == 2 / 128
        assert abs(lanczos.near_zero_ratio - 50 / 300) <= 0.03
        assert abs(lanczos.band_min_ratio - 150 / 250) <= 0.03
        assert abs(lanczos.band_negative_ratio - 100 / 300) <= 0.03
        assert np.trapezoid(lanczos.density, lanczos.density_grid) == pytest.approx(
            1.0, abs=1e-3
        )
        assert lanczos.histogram is None and lanczos.eigenvalues is None
        assert lanczos.top_eigenvalue == pytest.approx(eig.max(), rel=1e-4)
        assert abs(lanczos.trace - eig.sum()) <= 4 * lanczos.trace_stderr
        assert lanczos.hvp_count == 4 * 128 + 12


def test_exact_density_and_histogram_describe_the_eigenvalues():
    """The exact path's density has unit mass and its histogram counts eigenvalues."""
    eig, a = _known_spectrum(30, 10, 20)
    model = _quadratic_model(a, w0=np.full(60, 0.1))
    x, y = _probe()
    result = curvature.compute_curvature(model, x, y, density_points=256)
    grid = result.density_grid
    assert grid.size == result.density.size == result.histogram.size == 256
    assert result.broadening == pytest.approx((eig.max() - eig.min()) / 128, rel=1e-4)
    assert grid[0] == pytest.approx(eig.min() - 5 * result.broadening, rel=1e-3)
    assert np.trapezoid(result.density, grid) == pytest.approx(1.0, abs=1e-3)
    assert result.histogram.sum() == pytest.approx(1.0)
    zero_bin = np.argmin(np.abs(grid))
    assert result.histogram[zero_bin] == pytest.approx(10 / 60)


def _classifier(seed=3):
    keras.utils.set_random_seed(seed)
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(128, 16)).astype(np.float32)
    w = rng.normal(size=(16, 4))
    y = np.argmax(x @ w + 0.5 * rng.normal(size=(128, 4)), axis=1)
    model = keras.Sequential(
        [
            keras.Input((16,)),
            keras.layers.Dense(32, activation="tanh"),
            keras.layers.Dense(32, activation="relu"),
            keras.layers.Dense(16, activation="tanh"),
            keras.layers.Dense(4),
        ]
    )
    model.compile(
        optimizer=keras.optimizers.Adam(1e-2),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    model.fit(x, y, epochs=10, batch_size=32, verbose=0)
    return model, x, y


def test_lanczos_agrees_with_exact_on_2196_parameter_model():
    """SLQ's ratio is within its own tolerance of exact; resolved shares within 0.03."""
    model, x, y = _classifier()
    assert 2000 <= model.count_params() <= 4000
    exact = curvature.compute_curvature(model, x, y, max_exact_params=4000)
    lanczos = curvature.compute_curvature(model, x, y, max_exact_params=1100)
    assert exact.method == "exact" and lanczos.method == "lanczos"
    error = abs(lanczos.min_ratio - exact.min_ratio)
    assert error <= lanczos.tolerance
    assert lanczos.min_ratio_low <= exact.min_ratio <= lanczos.min_ratio_high
    assert np.trapezoid(lanczos.density, lanczos.density_grid) == pytest.approx(
        1.0, abs=1e-3
    )
    # At the band the density resolves (2 / steps of max|λ|) the near-zero and
    # signed shares agree with the exact eigenvalues.
    eig = exact.eigenvalues
    band = lanczos.resolution * np.abs(eig).max()
    assert abs(lanczos.near_zero_ratio - np.mean(np.abs(eig) <= band)) <= 0.03
    positive_outside = lanczos.band_min_ratio * (1 - lanczos.near_zero_ratio)
    assert abs(positive_outside - np.mean(eig > band)) <= 0.03
    assert abs(lanczos.band_negative_ratio - np.mean(eig < -band)) <= 0.03
    assert lanczos.top_eigenvalue == pytest.approx(exact.top_eigenvalue, rel=1e-3)
    assert abs(lanczos.trace - exact.trace) <= 4 * lanczos.trace_stderr
    assert lanczos.probe_loss == pytest.approx(exact.probe_loss, rel=1e-6)
    # Blocks of at most 1,100 parameters stay exact and agree between paths.
    assert lanczos.layer_method == ("exact",) * 8
    np.testing.assert_allclose(lanczos.layer_min_ratio, exact.layer_min_ratio)
    np.testing.assert_allclose(
        lanczos.layer_top_eigenvalue, exact.layer_top_eigenvalue, rtol=1e-4
    )


def _state(model):
    return (
        [v.numpy().copy() for v in model.variables],
        [v.numpy().copy() for v in model.optimizer.variables],
        [v.numpy().copy() for v in model.metrics_variables],
    )


def test_training_state_is_bit_identical_and_functions_not_retraced():
    """Weights, optimizer, metrics and RNG are untouched; calls reuse traces."""
    keras.utils.set_random_seed(1)
    inputs = keras.Input((5,))
    hidden = keras.layers.Dense(12, activation="relu")(inputs)
    hidden = keras.layers.BatchNormalization()(hidden)
    hidden = keras.layers.Dropout(0.3)(hidden)
    model = keras.Model(
        inputs,
        [
            keras.layers.Dense(1, name="a")(hidden),
            keras.layers.Dense(2, name="b")(hidden),
        ],
    )
    model.compile(optimizer="adam", loss=["mse", "mse"], metrics=[["mae"], ["mae"]])
    rng = np.random.default_rng(1)
    x = rng.normal(size=(64, 5)).astype(np.float32)
    ys = (rng.normal(size=(64, 1)), rng.normal(size=(64, 2)))
    model.fit(x, ys, epochs=2, batch_size=16, verbose=0)

    before = _state(model)
    np_state, py_state = np.random.get_state(), random.getstate()
    for exact_limit in (10_000, 50):
        curvature.compute_curvature(model, x, ys, max_exact_params=exact_limit)
    after = _state(model)
    for group_before, group_after in zip(before, after, strict=True):
        assert len(group_before) == len(group_after)
        for b, a in zip(group_before, group_after, strict=True):
            assert b.dtype == a.dtype and np.array_equal(b, a)
    assert any(np.any(v != 0) for v in before[2])  # the metrics hold data
    assert random.getstate() == py_state
    after_np = np.random.get_state()
    assert after_np[0] == np_state[0] and np.array_equal(after_np[1], np_state[1])
    # The dropout layer's RNG state is among the model variables compared.
    assert any("seed_generator" in v.path for v in model.variables)

    engine = hessian_engine.engine_for(model)
    traced = [f.experimental_get_tracing_count() for f in engine._hessian_fns.values()]
    traced += [f.experimental_get_tracing_count() for f in engine._hvp_fns.values()]
    for exact_limit in (10_000, 50):
        curvature.compute_curvature(model, x, ys, max_exact_params=exact_limit)
    again = [f.experimental_get_tracing_count() for f in engine._hessian_fns.values()]
    again += [f.experimental_get_tracing_count() for f in engine._hvp_fns.values()]
    assert traced == again and all(t == 1 for t in traced)


def test_bad_input_gives_clear_errors():
    """An uncompiled model or out-of-range settings raise ValueError."""
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    x, y = np.ones((2, 2), np.float32), np.ones((2, 1), np.float32)
    with pytest.raises(ValueError, match="compiled"):
        curvature.compute_curvature(model, x, y)
    model.compile(optimizer="sgd", loss="mse")
    with pytest.raises(ValueError, match="lanczos_steps"):
        curvature.compute_curvature(model, x, y, lanczos_steps=0)
    with pytest.raises(ValueError, match="resolution"):
        curvature.compute_curvature(model, x, y, resolution=1.5)
    with pytest.raises(ValueError, match="density_points"):
        curvature.compute_curvature(model, x, y, density_points=1)


def test_non_finite_loss_gives_nan_not_error():
    """A NaN in the probe batch yields NaN figures instead of an exception."""
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    x = np.array([[np.nan, 1.0], [1.0, 2.0]], np.float32)
    for exact_limit in (100, 0):
        result = curvature.compute_curvature(
            model, x, np.ones((2, 1), np.float32), max_exact_params=exact_limit
        )
        assert np.isnan(result.min_ratio) and np.isnan(result.probe_loss)
        assert np.all(np.isnan(result.layer_min_ratio))
        assert result.method == ("exact" if exact_limit else "lanczos")
        assert np.all(np.isnan(result.density))


def test_docstring_states_the_defaults_and_tolerance_the_code_uses():
    """compute_curvature's documented defaults and ε are those of the code."""
    import inspect
    import re

    doc = " ".join(curvature.compute_curvature.__doc__.split())
    defaults = {
        name: p.default
        for name, p in inspect.signature(curvature.compute_curvature).parameters.items()
        if p.default is not inspect.Parameter.empty
    }
    for name in ("resolution", "lanczos_steps", "lanczos_probes", "density_points"):
        documented = re.search(rf"{name}: .*?Defaults to ([0-9.e+-]+)", doc)
        assert documented, name
        assert float(documented.group(1).rstrip(".")) == defaults[name], name
    assert "ε = 2⁻²³" in doc and EPS32 == 2.0**-23
    # The exact path applies that ε: n·ε·max|λ| for a block of 3.
    eig = np.array([-1.0, 3 * EPS32 * 4.0 * 0.9, 4.0])
    model = _quadratic_model(np.diag(eig), w0=[0.1, 0.1, 0.1])
    result = curvature.compute_curvature(model, *_probe())
    assert result.zero_threshold == pytest.approx(3 * EPS32 * 4.0)
    assert (result.min_ratio, result.zero_ratio) == (pytest.approx(1 / 3),) * 2

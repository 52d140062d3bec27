"""Cost of one curvature computation against the bare cost of its parts.

For seed 003's two models, prints the best-of-N and median wall time of one
``compute_curvature`` call beside the bare operations it is made of, measured
in the same run and interleaved with it so that load drift hits both, the
ratio of the two, and one training epoch (1,000 examples, batch 200) for scale:

* the function fitter, 1-13-25-13-25-1 (1,090 parameters, seed 003's count),
  exact on the whole model. Parts: one batched Jacobian of the gradient
  (``tape.jacobian`` with ``pfor``, written out here) and one
  ``numpy.linalg.eigvalsh`` of 1,090².
* the MNIST-style classifier, 784-20-20-20-10 (16,750 parameters) on
  MNIST-shaped synthetic data (no download): Lanczos for the whole model and
  for the 15,680-entry first kernel, exact for the other (small) variables.
  Parts: as many bare Hessian-vector products (one reverse pass over the
  gradient with ``output_gradients``, one compiled call each) as the Lanczos
  runs used, one Jacobian of the small variables' gradient, and ``eigvalsh``
  of each small variable's block.

The probe is the first training batch (200 examples), as the callback uses by
default. ``hessian_freq=0`` is timed in ``benchmarks/overhead.py``.

Usage: ``python benchmarks/curvature.py [--repeats 5] [--probe 200]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

sys.path.insert(0, ".")
from tb_gradplugin import curvature  # noqa: E402

EXAMPLES = 1000  # seed 003: 1,000 training examples
BATCH = 200  # seed 003: batch size 200


def _timed(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _fitter():
    keras.utils.set_random_seed(0)
    x = np.linspace(-1.0, 1.0, EXAMPLES, dtype=np.float32)[:, None]
    y = np.sinc(5.0 * x).astype(np.float32)  # HW1's sin(5πx)/(5πx)
    layers = [keras.layers.Dense(w, activation="relu") for w in (13, 25, 13, 25)]
    model = keras.Sequential([keras.Input((1,)), *layers, keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse")
    rng = np.random.default_rng(0)
    order = rng.permutation(EXAMPLES)
    return model, x[order], y[order]


def _mnist_like():
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    prototypes = rng.uniform(0.0, 1.0, size=(10, 784)) * (rng.random((10, 784)) < 0.2)
    labels = rng.integers(0, 10, EXAMPLES)
    noise = rng.uniform(0.0, 0.3, size=(EXAMPLES, 784))
    x = np.clip(prototypes[labels] + noise, 0.0, 1.0).astype(np.float32)
    model = keras.Sequential(
        [
            keras.Input((784,)),
            keras.layers.Dense(20, activation="relu"),
            keras.layers.Dense(20, activation="relu"),
            keras.layers.Dense(20, activation="relu"),
            keras.layers.Dense(10),
        ]
    )
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    return model, x, labels.astype(np.int32)


def _loss(model, x, y):
    return model.compute_loss(x=x, y=y, y_pred=model(x, training=False))


def _bare_jacobian(model, variables):
    """One batched Jacobian of the gradient, written out without the module."""

    @tf.function
    def jacobian(x, y):
        with tf.GradientTape() as outer:
            with tf.GradientTape() as inner:
                loss = _loss(model, x, y)
            grads = inner.gradient(loss, variables)
            flat = tf.concat([tf.reshape(g, [-1]) for g in grads], 0)
        rows = outer.jacobian(flat, variables, experimental_use_pfor=True)
        return tf.concat([tf.reshape(r, [tf.shape(flat)[0], -1]) for r in rows], 1)

    return jacobian


def _bare_hvp(model):
    """One Hessian-vector product: a reverse pass over the gradient."""
    variables = model.trainable_variables

    @tf.function
    def hvp(x, y, v):
        with tf.GradientTape() as outer:
            with tf.GradientTape() as inner:
                loss = _loss(model, x, y)
            grads = inner.gradient(loss, variables)
            flat = tf.concat([tf.reshape(g, [-1]) for g in grads], 0)
        out = outer.gradient(flat, variables, output_gradients=v)
        return tf.concat([tf.reshape(g, [-1]) for g in out], 0)

    return hvp


def _epoch_time(model, x, y, repeats):
    model.fit(x, y, epochs=1, batch_size=BATCH, verbose=0, shuffle=False)
    return min(
        _timed(
            lambda: model.fit(
                x, y, epochs=1, batch_size=BATCH, verbose=0, shuffle=False
            )
        )
        for _ in range(repeats)
    )


def _report(name, result, ours, parts, epoch):
    """Prints best-of-N and median times; best-of-N is least hurt by load."""
    best = {"ours": min(ours), **{label: min(t) for label, t in parts}}
    med = {"ours": statistics.median(ours)}
    med.update({label: statistics.median(t) for label, t in parts})
    print(f"\n{name}: {result.n_params:,} parameters, method {result.method}")
    print(
        f"  min_ratio {result.min_ratio:.3f} (range {result.min_ratio_low:.3f}-"
        f"{result.min_ratio_high:.3f}), zero {result.zero_ratio:.3f}, negative "
        f"{result.negative_ratio:.3f}, near zero {result.near_zero_ratio:.3f} and "
        f"positive outside {result.band_min_ratio:.3f} at "
        f"{result.resolution:.3g}·max|λ|, top "
        f"{result.top_eigenvalue:.4g}, trace {result.trace:.4g}, "
        f"{result.hvp_count} HVPs/Jacobian rows"
    )
    print(f"  {'':<40s}{'best':>10s}{'median':>10s}")
    print(
        f"  {'one curvature computation':<40s}{best['ours'] * 1e3:8.1f}ms"
        f"{med['ours'] * 1e3:8.1f}ms"
    )
    for label, _ in parts:
        print(
            f"  {'bare: ' + label:<40s}{best[label] * 1e3:8.1f}ms"
            f"{med[label] * 1e3:8.1f}ms"
        )
    best_parts = sum(best[label] for label, _ in parts)
    med_parts = sum(med[label] for label, _ in parts)
    print(
        f"  {'bare parts together':<40s}{best_parts * 1e3:8.1f}ms"
        f"{med_parts * 1e3:8.1f}ms"
    )
    print(
        f"  {'ratio (target <= 1.3x)':<40s}{best['ours'] / best_parts:9.2f}x"
        f"{med['ours'] / med_parts:9.2f}x"
    )
    print(f"  {'one training epoch (for scale)':<40s}{epoch * 1e3:8.1f}ms")


def bench_fitter(repeats, probe):
    model, x, y = _fitter()
    model.fit(x, y, epochs=20, batch_size=BATCH, verbose=0)
    epoch = _epoch_time(model, x, y, repeats)
    xp, yp = tf.constant(x[:probe]), tf.constant(y[:probe])
    n = model.count_params()
    jac = _bare_jacobian(model, model.trainable_variables)
    sym = np.random.default_rng(0).normal(size=(n, n))
    sym = sym + sym.T
    result = curvature.compute_curvature(model, xp, yp)  # traces once
    jac(xp, yp).numpy()
    ours, t_jac, t_eig = [], [], []
    for _ in range(repeats):
        ours.append(_timed(lambda: curvature.compute_curvature(model, xp, yp)))
        t_jac.append(_timed(lambda: jac(xp, yp).numpy()))
        t_eig.append(_timed(lambda: np.linalg.eigvalsh(sym)))
    parts = [
        (f"batched Jacobian, {n} rows", t_jac),
        (f"eigvalsh {n}x{n}", t_eig),
    ]
    _report("function fitter", result, ours, parts, epoch)


def bench_mnist(repeats, probe):
    model, x, y = _mnist_like()
    model.fit(x, y, epochs=5, batch_size=BATCH, verbose=0)
    epoch = _epoch_time(model, x, y, repeats)
    xp, yp = tf.constant(x[:probe]), tf.constant(y[:probe])
    result = curvature.compute_curvature(model, xp, yp)  # traces once
    variables = model.trainable_variables
    small = [
        v for v, m in zip(variables, result.layer_method, strict=True) if m == "exact"
    ]
    n_small = sum(int(np.prod(v.shape)) for v in small)
    lanczos_hvps = result.hvp_count - n_small
    jac = _bare_jacobian(model, small)
    hvp = _bare_hvp(model)
    rng = np.random.default_rng(0)
    vectors = [
        tf.constant(rng.normal(size=result.n_params), tf.float32)
        for _ in range(lanczos_hvps)
    ]
    blocks = []
    for v in small:
        size = int(np.prod(v.shape))
        block = rng.normal(size=(size, size))
        blocks.append(block + block.T)
    jac(xp, yp).numpy()
    hvp(xp, yp, vectors[0]).numpy()

    def bare_hvps():
        for v in vectors:
            hvp(xp, yp, v).numpy()

    def bare_eigs():
        for block in blocks:
            np.linalg.eigvalsh(block)

    ours, t_hvp, t_jac, t_eig = [], [], [], []
    for _ in range(repeats):
        ours.append(_timed(lambda: curvature.compute_curvature(model, xp, yp)))
        t_hvp.append(_timed(bare_hvps))
        t_jac.append(_timed(lambda: jac(xp, yp).numpy()))
        t_eig.append(_timed(bare_eigs))
    parts = [
        (f"{lanczos_hvps} Hessian-vector products", t_hvp),
        (f"batched Jacobian, {n_small} rows", t_jac),
        (f"eigvalsh of {len(blocks)} small blocks", t_eig),
    ]
    _report("MNIST-style classifier", result, ours, parts, epoch)
    print(
        "  per variable: "
        + ", ".join(
            f"{v.path} {m} {r:.3f}"
            for v, m, r in zip(
                variables, result.layer_method, result.layer_min_ratio, strict=True
            )
        )
    )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed repetitions")
    parser.add_argument("--probe", type=int, default=BATCH, help="probe batch size")
    args = parser.parse_args(argv)
    print(
        f"TensorFlow {tf.__version__}, Keras {keras.__version__}, "
        f"{os.cpu_count()} CPUs; best and median of {args.repeats} runs, "
        f"probe {args.probe}"
    )
    bench_fitter(args.repeats, args.probe)
    bench_mnist(args.repeats, args.probe)


if __name__ == "__main__":
    main()

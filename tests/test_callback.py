"""GradientHealthCallback against a plain GradientTape + numpy reference."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

from tb_gradplugin import (
    GradientHealthCallback,
    flight_recorder,
    fused_kernels,
    fused_sums,
    host_pipeline,
    reader,
    step_reduction,
)
from tb_gradplugin import reducer as reducer_module
from tb_gradplugin import ring as ring_module

BATCH = 16
N = 64  # examples: 4 steps per epoch
EPOCHS = 3
LR = 0.05
RTOL = 2e-4  # float32 sums over a few hundred entries against float64 numpy


# -- models -----------------------------------------------------------------
def sequential():
    return keras.Sequential(
        [
            keras.Input((12,)),
            keras.layers.Dense(8, activation="relu", name="h1"),
            keras.layers.Dense(6, activation="tanh", name="h2"),
            keras.layers.Dense(3, name="out"),
        ],
        name="mlp",
    )


def functional():
    inp = keras.Input((12,))
    a = keras.layers.Dense(8, activation="relu")(inp)
    b = keras.layers.Dense(4, activation="tanh")(inp)
    out = keras.layers.Dense(3)(keras.layers.Concatenate()([a, b]))
    return keras.Model(inp, out)


class Subclassed(keras.Model):
    """A subclassed model with two dense layers."""

    def __init__(self):
        super().__init__()
        self.d1 = keras.layers.Dense(8, activation="relu")
        self.d2 = keras.layers.Dense(3)

    def call(self, x):
        """Applies the two layers."""
        return self.d2(self.d1(x))


def subclassed():
    model = Subclassed()
    model(np.zeros((1, 12), np.float32))
    return model


def data(seed=0, n=N):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 12)).astype("float32")
    y = rng.integers(0, 3, n)
    return x, y


LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def compiled(make, jit=False, spe=1, optimizer=None, weights=None):
    keras.utils.set_random_seed(1)
    model = make()
    if weights is not None:
        model.set_weights(weights)
    model.compile(
        optimizer=optimizer or keras.optimizers.SGD(LR),
        loss=LOSS,
        jit_compile=jit,
        steps_per_execution=spe,
    )
    return model


# -- reference --------------------------------------------------------------
def reference(
    make, weights, x, y, epochs=EPOCHS, optimizer=None, batch=BATCH, sample_weight=None
):
    """Replays the training with a plain GradientTape; returns per-step records."""
    model = make()
    model.set_weights(weights)
    opt = optimizer or keras.optimizers.SGD(LR)
    variables = model.trainable_variables
    records = []
    for _ in range(epochs):
        for i in range(0, len(x), batch):
            xb, yb = x[i : i + batch], y[i : i + batch]
            sw = None if sample_weight is None else sample_weight[i : i + batch]
            before = [v.numpy().astype(np.float64) for v in variables]
            lr = float(opt.learning_rate)
            with tf.GradientTape() as tape:
                loss = LOSS(yb, model(xb, training=True), sample_weight=sw)
            grads = tape.gradient(loss, variables)
            opt.apply(grads, variables)
            records.append(
                {
                    "loss": float(loss),
                    "grads": [
                        tf.convert_to_tensor(g).numpy().astype(np.float64)
                        for g in grads
                    ],
                    "before": before,
                    "after": [v.numpy().astype(np.float64) for v in variables],
                    "lr": lr,
                }
            )
    return [v.path for v in variables], records


def expected_step(rec):
    g, b, a = rec["grads"], rec["before"], rec["after"]
    flat = np.concatenate([t.ravel() for t in g])
    pflat = np.concatenate([t.ravel() for t in a])
    uflat = np.concatenate([(t1 - t0).ravel() for t0, t1 in zip(b, a, strict=True)])
    return {
        "step/loss": rec["loss"],
        "step/grad_norm": np.linalg.norm(flat),
        "step/param_norm": np.linalg.norm(pflat),
        "step/update_norm": np.linalg.norm(uflat),
        "step/update_ratio": np.linalg.norm(uflat) / np.linalg.norm(pflat),
        "step/learning_rate": rec["lr"],
        "layer/grad_norm": [np.linalg.norm(t) for t in g],
        "layer/grad_mean_abs": [np.abs(t).mean() for t in g],
        "layer/param_norm": [np.linalg.norm(t) for t in a],
        "layer/update_norm": [
            np.linalg.norm(t1 - t0) for t0, t1 in zip(b, a, strict=True)
        ],
        "layer/zero_fraction": [(t == 0).mean() for t in g],
    }


def expected_window(records):
    """Per-entry variance over the window's steps, averaged; mean |g|; noise scale."""
    per_var = list(zip(*[r["grads"] for r in records], strict=True))
    stacks = [np.stack(steps) for steps in per_var]  # [steps, *shape]
    var = [s.var(axis=0).mean() for s in stacks]
    mean_abs = [np.abs(s).mean() for s in stacks]
    allg = np.concatenate([s.reshape(len(records), -1) for s in stacks], axis=1)
    g_mean = allg.mean(axis=0)
    tr = allg.var(axis=0).sum()
    return {
        "window_layer/grad_variance": var,
        "window_layer/grad_mean_abs": mean_abs,
        "window_layer/zero_fraction": [np.all(s == 0, axis=0).mean() for s in stacks],
        "window/grad_variance": allg.var(axis=0).mean(),
        "window/grad_mean_abs": np.abs(allg).mean(),
        # McCandlish et al. 2018: B_simple = B tr(Σ) / |G|², and the SNR |G|²/tr(Σ).
        "window/noise_scale": BATCH * tr / np.sum(g_mean**2),
        "window/grad_snr": np.sum(g_mean**2) / tr,
        "window/window_steps": len(records),
    }


def read(logdir):
    provider = reader.provider_for_logdir(os.path.dirname(logdir))
    return reader.read_run(provider, os.path.basename(logdir))


def fit_and_read(tmp_path, make, jit=False, spe=1, epochs=EPOCHS, **cb_kwargs):
    x, y = data()
    model = compiled(make, jit=jit, spe=spe)
    weights = model.get_weights()
    logdir = str(tmp_path / "run")
    cb_kwargs.setdefault("update_freq", 1)
    cb = GradientHealthCallback(logdir, on_flag=None, **cb_kwargs)
    model.fit(
        x, y, batch_size=BATCH, epochs=epochs, shuffle=False, verbose=0, callbacks=[cb]
    )
    return model, weights, read(logdir), x, y


def assert_steps_match(run, records, steps):
    for step in steps:
        exp = expected_step(records[step - 1])
        for key, value in exp.items():
            series = run.scalars.get(key) or run.tensors[key]
            idx = int(np.searchsorted(series.steps, step))
            assert series.steps[idx] == step, (key, step)
            np.testing.assert_allclose(
                series.values[idx], value, rtol=RTOL, atol=1e-7, err_msg=f"{key}@{step}"
            )


# -- tests ------------------------------------------------------------------
@pytest.mark.parametrize("make", [sequential, functional, subclassed])
@pytest.mark.parametrize("jit", [False, True])
def test_every_step_statistic_matches_gradient_tape(tmp_path, make, jit):
    """Every per-step statistic equals a GradientTape + numpy reference."""
    model, weights, run, x, y = fit_and_read(tmp_path, make, jit=jit)
    _, records = reference(make, weights, x, y)
    paths = [v.path for v in model.trainable_variables]
    assert run.tensors["layer/grad_norm"].names == paths
    steps = list(range(1, len(records) + 1))
    assert run.scalars["step/loss"].steps.tolist() == steps
    assert_steps_match(run, records, steps)


def fuse_everything(monkeypatch):
    """Every variable reduced by the fused pass, not only those of 4 M entries."""
    monkeypatch.setattr(fused_sums, "FUSED_MIN_SIZE", 0)
    monkeypatch.setattr(step_reduction, "GROUP_MAX_SIZE", 0)
    calls = []
    dense = fused_kernels.gradient_pass

    def counted(*args):
        calls.append(1)
        return dense(*args)

    monkeypatch.setattr(fused_kernels, "gradient_pass", counted)
    return calls


def test_fused_pass_matches_gradient_tape(tmp_path, monkeypatch):
    """With every variable in the fused pass, steps and epoch windows match numpy."""
    calls = fuse_everything(monkeypatch)
    kernel = "mlp/h1/kernel"
    model, weights, run, x, y = fit_and_read(
        tmp_path, sequential, slices={"lo": (kernel, (0, 4))}
    )
    _, records = reference(sequential, weights, x, y)
    assert len(calls) == len(model.trainable_variables) * len(records)
    assert_steps_match(run, records, range(1, len(records) + 1))
    per_epoch = N // BATCH
    for e in range(EPOCHS):
        window = records[e * per_epoch : (e + 1) * per_epoch]
        for key, value in expected_window(window).items():
            series = run.scalars.get(key) or run.tensors[key]
            np.testing.assert_allclose(series.values[e], value, rtol=2e-3, err_msg=key)
        k = np.stack([r["grads"][0][:, 0:4] for r in window])
        np.testing.assert_allclose(
            run.scalars["slice/lo/grad_variance"].values[e],
            k.var(axis=0).mean(),
            rtol=2e-3,
        )


def test_a_failing_fused_loop_leaves_training_and_other_values(tmp_path, monkeypatch):
    """The fused loop raising: the fit ends, the loss is written, no norm invented."""
    fuse_everything(monkeypatch)

    def broken(*args):
        raise RuntimeError("broken")

    monkeypatch.setattr(fused_kernels, "gradient_pass", broken)
    model, weights, run, x, y = fit_and_read(tmp_path, sequential)
    _, records = reference(sequential, weights, x, y)
    np.testing.assert_allclose(
        run.scalars["step/loss"].values, [r["loss"] for r in records], rtol=1e-5
    )
    assert np.isnan(run.tensors["layer/grad_norm"].values).all()


@pytest.mark.parametrize("jit", [False, True])
def test_steps_per_execution_four_logs_every_step(tmp_path, jit):
    """With steps_per_execution=4 every optimizer step is logged with its values."""
    _, weights, run, x, y = fit_and_read(tmp_path, sequential, jit=jit, spe=4)
    _, records = reference(sequential, weights, x, y)
    steps = list(range(1, len(records) + 1))
    assert run.scalars["step/grad_norm"].steps.tolist() == steps
    assert_steps_match(run, records, steps)


def test_update_freq_logs_step_one_and_multiples(tmp_path):
    """update_freq=3 logs step 1 and every third step, each with that step's values."""
    _, weights, run, x, y = fit_and_read(tmp_path, sequential, update_freq=3)
    _, records = reference(sequential, weights, x, y)
    assert run.scalars["step/loss"].steps.tolist() == [1, 3, 6, 9, 12]
    assert_steps_match(run, records, [1, 3, 6, 9, 12])


def test_epoch_window_variance_and_slices_match_numpy(tmp_path):
    """Per-epoch window variance, mean |g|, noise scale and slices equal numpy's."""
    kernel = "mlp/h1/kernel"
    _, weights, run, x, y = fit_and_read(
        tmp_path, sequential, slices={"lo": (kernel, (0, 4)), "hi": (kernel, (4, 8))}
    )
    _, records = reference(sequential, weights, x, y)
    per_epoch = N // BATCH
    assert run.scalars["window/grad_variance"].steps.tolist() == [4, 8, 12]
    for e in range(EPOCHS):
        window = records[e * per_epoch : (e + 1) * per_epoch]
        exp = expected_window(window)
        for key, value in exp.items():
            series = run.scalars.get(key) or run.tensors[key]
            np.testing.assert_allclose(series.values[e], value, rtol=2e-3, err_msg=key)
        k = np.stack([r["grads"][0] for r in window])  # [steps, 12, 8]
        for name, cols in (("lo", slice(0, 4)), ("hi", slice(4, 8))):
            part = k[:, :, cols]
            np.testing.assert_allclose(
                run.scalars[f"slice/{name}/grad_variance"].values[e],
                part.var(axis=0).mean(),
                rtol=2e-3,
            )
            np.testing.assert_allclose(
                run.scalars[f"slice/{name}/grad_mean_abs"].values[e],
                np.abs(part).mean(),
                rtol=RTOL,
            )
    content = run.scalars["slice/lo/grad_variance"].content
    assert (content["variable"], content["start"], content["stop"]) == (kernel, 0, 4)


@pytest.mark.parametrize("update_freq", [1, 2, "epoch"])
def test_blocks_of_one_step_give_the_same_series(tmp_path, monkeypatch, update_freq):
    """Handing the ring over after every step (empty epoch-end blocks) loses nothing."""
    _, _, whole, _, _ = fit_and_read(
        tmp_path / "a", sequential, update_freq=update_freq
    )
    monkeypatch.setattr(host_pipeline, "MAX_WRITE_DELAY_S", 0.0)
    _, _, split, _, _ = fit_and_read(
        tmp_path / "b", sequential, update_freq=update_freq
    )
    assert sorted(split.scalars) == sorted(whole.scalars)
    assert sorted(split.tensors) == sorted(whole.tensors)
    for key, series in [*whole.scalars.items(), *whole.tensors.items()]:
        other = split.scalars.get(key) or split.tensors[key]
        np.testing.assert_array_equal(other.steps, series.steps, err_msg=key)
        np.testing.assert_allclose(other.values, series.values, rtol=1e-5, err_msg=key)


def test_step_window_closes_every_update_freq(tmp_path):
    """With update_freq=2 the variance window is each logging window's two steps."""
    _, weights, run, x, y = fit_and_read(tmp_path, sequential, update_freq=2)
    _, records = reference(sequential, weights, x, y)
    series = run.tensors["window_layer/grad_variance"]
    assert series.steps.tolist() == list(range(2, 13, 2))
    for i, step in enumerate(series.steps):
        exp = expected_window(records[step - 2 : step])
        np.testing.assert_allclose(
            series.values[i], exp["window_layer/grad_variance"], rtol=2e-3
        )


def test_second_fit_continues_steps_in_one_event_file(tmp_path):
    """A second fit with the same callback keeps counting steps and writes one file."""
    x, y = data()
    model = compiled(sequential)
    logdir = tmp_path / "run"
    cb = GradientHealthCallback(str(logdir), update_freq=1, on_flag=None)
    model.fit(
        x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0, callbacks=[cb]
    )
    model.fit(
        x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0, callbacks=[cb]
    )
    run = read(str(logdir))
    assert run.scalars["step/loss"].steps.tolist() == list(range(1, 9))
    assert sorted(os.listdir(tmp_path)) == ["run"]
    files = os.listdir(logdir)
    assert len(files) == 1 and files[0].startswith("events.out.tfevents.")


def test_callback_added_after_plain_fit_is_installed(tmp_path):
    """A model first trained without the callback records once the callback is added."""
    x, y = data()
    model = compiled(sequential)
    model.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0)
    cb = GradientHealthCallback(str(tmp_path / "run"), update_freq=1, on_flag=None)
    model.fit(
        x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0, callbacks=[cb]
    )
    run = read(str(tmp_path / "run"))
    assert run.scalars["step/loss"].steps.tolist() == [5, 6, 7, 8]


def test_nan_in_data_is_recorded_and_training_goes_on(tmp_path):
    """A NaN input makes NaN loss and non-finite gradient counts; fit does not raise."""
    x, y = data()
    x[20] = np.nan  # second batch; the tanh branch carries it to the loss
    model = compiled(functional)
    cb = GradientHealthCallback(str(tmp_path / "run"), update_freq=1, on_flag=None)
    history = model.fit(
        x, y, batch_size=BATCH, epochs=2, shuffle=False, verbose=0, callbacks=[cb]
    )
    assert len(history.history["loss"]) == 2
    run = read(str(tmp_path / "run"))
    loss = run.scalars["step/loss"]
    assert np.isfinite(loss.values[0]) and np.isnan(loss.values[1])
    nonfinite = run.scalars["step/nonfinite_grads"].values
    assert nonfinite[0] == 0 and nonfinite[1] > 0
    assert run.scalars["step/nonfinite_loss"].values[1] == 1
    layer_nf = run.tensors["layer/nonfinite_grads"].values[1]
    assert np.all(layer_nf > 0)


def test_nonfinite_between_logged_steps_is_counted(tmp_path, monkeypatch):
    """A NaN at an unlogged step still shows in the next logged step's count."""
    monkeypatch.setattr(flight_recorder, "FLIGHT_STEPS", 0)  # no flight recorder
    x, y = data()
    x[20] = np.nan  # step 2, not logged with update_freq=3
    model = compiled(functional)
    cb = GradientHealthCallback(str(tmp_path / "run"), update_freq=3, on_flag=None)
    model.fit(
        x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0, callbacks=[cb]
    )
    run = read(str(tmp_path / "run"))
    series = run.scalars["step/nonfinite_loss"]
    assert series.steps.tolist() == [1, 3]
    assert series.values.tolist() == [0.0, 2.0]


def test_flight_recorder_writes_every_step_around_a_nan(tmp_path, monkeypatch):
    """Around a first NaN every step is written, whatever update_freq says."""
    monkeypatch.setattr(flight_recorder, "FLIGHT_STEPS", 5)
    x, y = data(n=BATCH * 40)
    x[BATCH * 19 + 3] = np.nan  # step 20
    model = compiled(functional)
    cb = GradientHealthCallback(str(tmp_path / "run"), update_freq=10, on_flag=None)
    model.fit(
        x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0, callbacks=[cb]
    )
    series = read(str(tmp_path / "run")).scalars["step/nonfinite_loss"]
    # Step 1, the schedule, and steps 15-25 at full resolution; the counts
    # since the previous logged step add up to every NaN step (20 to 40).
    expected = [1, 10, *range(15, 26), 30, 40]
    assert series.steps.tolist() == expected
    assert series.values.sum() == 21
    assert series.values[expected.index(20)] == 1


def test_stop_on_nan_stops_training(tmp_path):
    """stop_on_nan=True ends fit at the first non-finite step, like TerminateOnNaN."""
    x, y = data()
    x[20] = np.nan
    model = compiled(functional)
    cb = GradientHealthCallback(str(tmp_path / "run"), stop_on_nan=True, on_flag=None)
    history = model.fit(
        x, y, batch_size=BATCH, epochs=5, shuffle=False, verbose=0, callbacks=[cb]
    )
    assert len(history.history["loss"]) == 1
    assert int(model.optimizer.iterations.numpy()) == 2


def test_removed_log_dir_warns_once_and_training_goes_on(tmp_path):
    """Deleting the log directory mid-training gives one warning and fit completes."""
    import shutil

    x, y = data()
    logdir = tmp_path / "run"

    class Remove(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            if epoch == 1:
                shutil.rmtree(logdir)
                logdir.write_text("not a directory")

    model = compiled(sequential)
    cb = GradientHealthCallback(str(logdir), update_freq=1, on_flag=None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        history = model.fit(
            x,
            y,
            batch_size=BATCH,
            epochs=4,
            shuffle=False,
            verbose=0,
            callbacks=[Remove(), cb],
        )
    assert len(history.history["loss"]) == 4
    ours = [w for w in caught if "GradientHealthCallback: writing" in str(w.message)]
    assert len(ours) == 1


def test_mixed_precision_skipped_steps_are_marked(tmp_path):
    """Under mixed precision, overflow steps count as skipped, not as divergence."""
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        x, y = data()
        # 2**20 overflows float16 at once: the first steps are skipped and halve
        # the scale until it fits.
        opt = keras.optimizers.LossScaleOptimizer(
            keras.optimizers.SGD(LR), initial_scale=2.0**20
        )
        model = compiled(sequential, optimizer=opt)
        cb = GradientHealthCallback(
            str(tmp_path / "run"), update_freq=1, stop_on_nan=True, on_flag=None
        )
        history = model.fit(
            x, y, batch_size=BATCH, epochs=3, shuffle=False, verbose=0, callbacks=[cb]
        )
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert len(history.history["loss"]) == 3  # stop_on_nan did not fire
    run = read(str(tmp_path / "run"))
    skipped = run.scalars["step/skipped_steps"]
    applied = int(model.optimizer.iterations.numpy())
    assert skipped.values.sum() == 12 - applied > 0
    assert skipped.steps.tolist() == list(range(1, applied + 1))
    assert np.all(np.diff(run.scalars["step/loss_scale"].values) <= 0)
    assert np.all(np.isfinite(run.scalars["step/grad_norm"].values))
    assert np.all(run.scalars["step/nonfinite_loss"].values == 0)


MIRRORED_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras
    sys.path.insert(0, sys.argv[2])
    from tb_gradplugin import GradientHealthCallback, reader
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 12)).astype("float32"); y = rng.integers(0, 3, 64)
    def make():
        # Two kernels of 4,800 entries (reduced alone, one per replica) and
        # small variables (reduced together).
        keras.utils.set_random_seed(1)
        m = keras.Sequential([keras.Input((12,)),
                              keras.layers.Dense(400, activation="relu"),
                              keras.layers.Dense(12, activation="relu"),
                              keras.layers.Dense(3)])
        m.compile(optimizer=keras.optimizers.SGD(0.05),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        return m
    out = {}
    from tb_gradplugin import step_reduction
    shared = step_reduction.StepReduction._replica_id
    # One strategy for the process: a second one numbers its collective ops
    # from 1 again, and the runtime mixes them up with the first one's.
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    configs = {"epoch": dict(update_freq=1),
               "in_step": dict(update_freq=2, variance_window=2),
               "unknown_replica": dict(update_freq=2, variance_window=2)}
    for config, kwargs in configs.items():
        # A replica whose number is not known when the step is traced (as
        # on a TPU): every replica reduces every variable, nothing doubled.
        step_reduction.StepReduction._replica_id = (
            (lambda self: None) if config == "unknown_replica" else shared)
        for name in ("single", "mirrored"):
            run_name = config + "_" + name
            if name == "mirrored":
                with strategy.scope():
                    model = make()
            else:
                model = make()
            slices = {
                "first": (model.layers[0].kernel.path, (0, 150)),
                "small": (model.layers[2].kernel.path, (1, 3)),
            }
            cb = GradientHealthCallback(sys.argv[1] + "/" + run_name,
                                        on_flag=None, slices=slices, **kwargs)
            model.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0,
                      callbacks=[cb])
            run = reader.read_run(reader.provider_for_logdir(sys.argv[1]), run_name)
            series = {**run.scalars, **run.tensors}
            got = {k: s.values.tolist() for k, s in series.items()}
            got["steps"] = run.scalars["step/loss"].steps.tolist()
            # Under the strategy the statistics read the gradients Keras
            # summed, and each replica reduces a share of the variables.
            reduction = cb._monitor.reduction
            assert cb._monitor.reused_all_reduce == (name == "mirrored")
            owners = set((reduction.owner or {}).values())
            assert owners == ({0, 1} if name == "mirrored" else set()), owners
            out.setdefault(config, {})[name] = got
    print(json.dumps(out))
    """
)


def test_mirrored_strategy_matches_single_device(tmp_path):
    """MirroredStrategy (replicas share the reduction) gives one device's statistics."""
    import json

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run(
        [sys.executable, "-c", MIRRORED_SCRIPT, str(tmp_path), repo],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    logged = {
        "epoch": list(range(1, 9)),
        "in_step": [1, 2, 4, 6, 8],
        "unknown_replica": [1, 2, 4, 6, 8],
    }
    for config, runs in out.items():
        single, mirrored = runs["single"], runs["mirrored"]
        assert mirrored["steps"] == single["steps"] == logged[config], config
        assert set(mirrored) == set(single), config
        assert any("slice" in k or "first" in k for k in single), sorted(single)
        for key in single:
            np.testing.assert_allclose(
                np.array(mirrored[key], dtype=float),
                np.array(single[key], dtype=float),
                rtol=1e-4,
                atol=1e-7,
                err_msg=f"{config}: {key}",
            )


def test_no_event_file_without_training(tmp_path):
    """Constructing the callback writes nothing; bad arguments raise ValueError."""
    GradientHealthCallback(str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()
    for kwargs in (
        {"update_freq": 0},
        {"update_freq": "batch"},
        {"hessian_freq": -1},
        {"update_freq": 4, "variance_window": 6},
        {"on_flag": "explode"},
    ):
        with pytest.raises(ValueError):
            GradientHealthCallback(str(tmp_path / "run"), **kwargs)


def test_unknown_slice_variable_is_a_clear_error(tmp_path):
    """A slice naming an unknown variable fails at train begin with the known paths."""
    x, y = data()
    model = compiled(sequential)
    cb = GradientHealthCallback(
        str(tmp_path / "run"), slices={"s": ("nope/kernel", (0, 2))}
    )
    with pytest.raises(ValueError, match="nope/kernel"):
        model.fit(x, y, batch_size=BATCH, epochs=1, verbose=0, callbacks=[cb])


def nested_tape_hessian(model, x, y):
    """The full Hessian of the model's loss by nested GradientTapes (float64)."""
    variables = model.trainable_variables
    with tf.GradientTape(persistent=True) as outer:
        with tf.GradientTape() as inner:
            loss = LOSS(y, model(x, training=False))
        grads = tf.concat(
            [tf.reshape(g, [-1]) for g in inner.gradient(loss, variables)], 0
        )
        rows = [grads[i] for i in range(int(grads.shape[0]))]
    h = np.stack(
        [
            np.concatenate(
                [tf.reshape(g, [-1]).numpy() for g in outer.gradient(r, variables)]
            )
            for r in rows
        ]
    )
    return (h + h.T) / 2


def tiny():
    return keras.Sequential(
        [
            keras.Input((12,)),
            keras.layers.Dense(4, activation="tanh"),
            keras.layers.Dense(3),
        ],
        name="tiny",
    )


def test_hessian_freq_logs_the_minimal_ratio_of_the_first_batch(tmp_path):
    """hessian_freq=1 logs the share of positive eigenvalues of the probe Hessian."""
    x, y = data()
    model = compiled(tiny)
    cb = GradientHealthCallback(str(tmp_path / "run"), hessian_freq=1, on_flag=None)
    model.fit(
        x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0, callbacks=[cb]
    )
    run = read(str(tmp_path / "run"))
    eig = np.linalg.eigvalsh(nested_tape_hessian(model, x[:BATCH], y[:BATCH]))
    content = run.scalars["hessian/min_ratio"].content
    # The exact path's stated tolerance: n·ε·max|λ| with float32 ε.
    tol = eig.size * content["eps"] * np.abs(eig).max()
    assert run.scalars["hessian/min_ratio"].steps.tolist() == [4]
    np.testing.assert_allclose(
        run.scalars["hessian/min_ratio"].values[0], np.mean(eig > tol), atol=1e-6
    )
    np.testing.assert_allclose(
        run.scalars["hessian/top_eigenvalue"].values[0], eig.max(), rtol=1e-3
    )
    assert run.tensors["hessian_layer/min_ratio"].names == [
        v.path for v in model.trainable_variables
    ]
    assert run.scalars["hessian/min_ratio"].content["probe_size"] == BATCH


def test_curvature_and_trajectory_leave_training_unchanged(tmp_path):
    """With hessian and trajectory on, the trained weights are bit-identical."""
    x, y = data()
    finals = []
    for kwargs in ({}, {"hessian_freq": 1, "trajectory_freq": 1}):
        model = compiled(tiny)
        cb = GradientHealthCallback(
            str(tmp_path / str(len(finals))), on_flag=None, **kwargs
        )
        model.fit(
            x, y, batch_size=BATCH, epochs=2, shuffle=False, verbose=0, callbacks=[cb]
        )
        finals.append(model.get_weights())
    for a, b in zip(*finals, strict=True):
        np.testing.assert_array_equal(a, b)


def test_trajectory_snapshots_project_the_weights(tmp_path):
    """trajectory_freq=1 logs the projection at step 0 and after every epoch."""
    from tb_gradplugin import trajectory

    x, y = data()
    model = compiled(tiny)
    start = trajectory.project_parameters(model.trainable_variables, dim=32, seed=3)
    cb = GradientHealthCallback(
        str(tmp_path / "run"),
        trajectory_freq=1,
        trajectory_dim=32,
        trajectory_seed=3,
        on_flag=None,
    )
    model.fit(
        x, y, batch_size=BATCH, epochs=2, shuffle=False, verbose=0, callbacks=[cb]
    )
    end = trajectory.project_parameters(model.trainable_variables, dim=32, seed=3)
    series = read(str(tmp_path / "run")).tensors["trajectory/projection"]
    assert series.steps.tolist() == [0, 4, 8]
    np.testing.assert_allclose(series.values[0], start, rtol=1e-6)
    np.testing.assert_allclose(series.values[-1], end, rtol=1e-6)
    assert series.content["seed"] == 3 and series.content["dim"] == 32


def test_unbuilt_subclassed_model_is_laid_out_at_its_first_step(tmp_path):
    """A subclassed model first built by its train step still gets every statistic."""
    x, y = data()
    keras.utils.set_random_seed(1)
    model = Subclassed()
    model.compile(optimizer=keras.optimizers.SGD(LR), loss=LOSS)
    assert not model.trainable_variables
    cb = GradientHealthCallback(str(tmp_path / "run"), update_freq=1, on_flag=None)
    model.fit(
        x, y, batch_size=BATCH, epochs=2, shuffle=False, verbose=0, callbacks=[cb]
    )
    run = read(str(tmp_path / "run"))
    assert run.scalars["step/loss"].steps.tolist() == list(range(1, 9))
    assert run.tensors["layer/grad_norm"].names == [
        v.path for v in model.trainable_variables
    ]
    assert np.all(np.isfinite(run.scalars["step/grad_norm"].values))


@pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="a thread's own nice is Linux's"
)
def test_writer_thread_runs_at_a_lower_priority(tmp_path):
    """The callback's writer thread runs at nice 10 during fit; training not."""
    import threading

    seen = []

    class Look(keras.callbacks.Callback):
        # Epoch ends are handed over with the next block: the thread may start
        # only at the end of a short fit (after the callback's own train end).
        def on_epoch_end(self, epoch, logs=None):
            self.on_train_end()

        def on_train_end(self, logs=None):
            writers = [
                t
                for t in threading.enumerate()
                if t.name.startswith("gradient_health_writer")
            ]
            seen.append(
                [
                    (
                        os.getpriority(os.PRIO_PROCESS, t.native_id),
                        os.sched_getscheduler(t.native_id),
                    )
                    for t in writers
                ]
            )

    rng = np.random.default_rng(0)
    x = rng.normal(size=(N, 12)).astype("float32")
    y = rng.integers(0, 3, N)
    model = sequential()
    model.compile(keras.optimizers.SGD(LR), "sparse_categorical_crossentropy")
    cb = GradientHealthCallback(str(tmp_path), update_freq=1, on_flag=None)
    own = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    model.fit(x, y, batch_size=BATCH, epochs=2, verbose=0, callbacks=[cb, Look()])
    assert len(seen) == 3 and seen[-1], seen
    expected = (min(own + host_pipeline.WRITER_NICE, 19), os.SCHED_OTHER)
    assert all(p == expected for found in seen for p in found), seen
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == own


# -- wider replays -------------------------------------------------------------
def test_long_run_small_ring_slow_writer_adam_schedule(tmp_path, monkeypatch):
    """320 steps through a 34-row ring, a writer behind, Adam on a schedule: exact."""
    import time

    monkeypatch.setattr(ring_module, "MAX_BLOCK_STEPS", 8)  # the ring wraps 9 times
    monkeypatch.setattr(host_pipeline, "MAX_WRITE_DELAY_S", 0.0)  # every step
    slow = reducer_module.BlockReducer.add_rows

    def add_rows(self, block, step_seconds=None):
        time.sleep(0.01)  # the writer falls behind: the step must wait for it
        return slow(self, block, step_seconds)

    monkeypatch.setattr(reducer_module.BlockReducer, "add_rows", add_rows)
    schedule = keras.optimizers.schedules.ExponentialDecay(0.01, 40, 0.5)
    x, y = data(n=BATCH * 160)
    model = compiled(sequential, optimizer=keras.optimizers.Adam(schedule))
    weights = model.get_weights()
    cb = GradientHealthCallback(str(tmp_path / "run"), update_freq=1, on_flag=None)
    model.fit(
        x, y, batch_size=BATCH, epochs=2, shuffle=False, verbose=0, callbacks=[cb]
    )
    run = read(str(tmp_path / "run"))
    _, records = reference(
        sequential, weights, x, y, epochs=2, optimizer=keras.optimizers.Adam(schedule)
    )
    steps = list(range(1, 321))
    assert run.scalars["step/loss"].steps.tolist() == steps
    assert_steps_match(run, records, steps)
    assert run.scalars["window/window_steps"].values.tolist() == [160, 160]


def wide():
    # A first kernel of 12 x 512 entries: reduced alone, not in the small group.
    return keras.Sequential(
        [
            keras.Input((12,)),
            keras.layers.Dense(512, activation="relu", name="wide"),
            keras.layers.Dense(3, name="out"),
        ]
    )


@pytest.mark.parametrize(
    "make_optimizer",
    [
        lambda: keras.optimizers.Adam(
            keras.optimizers.schedules.ExponentialDecay(0.01, 4, 0.5)
        ),
        lambda: keras.optimizers.AdamW(0.01, weight_decay=0.1),
        lambda: keras.optimizers.SGD(0.05, momentum=0.9),
    ],
    ids=["adam_schedule", "adamw", "sgd_momentum"],
)
def test_large_variable_update_norm_matches_gradient_tape(tmp_path, make_optimizer):
    """A large kernel's statistics, update norm included, match the reference."""
    from tb_gradplugin.step_reduction import GROUP_MAX_SIZE

    x, y = data()
    model = compiled(wide, optimizer=make_optimizer())
    assert model.trainable_variables[0].shape.num_elements() >= GROUP_MAX_SIZE
    weights = model.get_weights()
    cb = GradientHealthCallback(str(tmp_path / "run"), update_freq=1, on_flag=None)
    model.fit(
        x, y, batch_size=BATCH, epochs=EPOCHS, shuffle=False, verbose=0, callbacks=[cb]
    )
    run = read(str(tmp_path / "run"))
    _, records = reference(wide, weights, x, y, optimizer=make_optimizer())
    assert_steps_match(run, records, list(range(1, len(records) + 1)))


def test_update_freq_epoch_logs_each_epochs_last_step(tmp_path):
    """update_freq='epoch' logs exactly steps 4, 8, 12 with those steps' values."""
    _, weights, run, x, y = fit_and_read(tmp_path, sequential, update_freq="epoch")
    _, records = reference(sequential, weights, x, y)
    for key in ("step/loss", "step/grad_norm", "layer/update_norm"):
        series = run.scalars.get(key) or run.tensors[key]
        assert series.steps.tolist() == [4, 8, 12], key
    assert_steps_match(run, records, [4, 8, 12])
    assert run.scalars["step/loss"].content["update_freq"] == "epoch"


def test_a_fits_last_step_is_logged_whatever_update_freq(tmp_path):
    """update_freq=5 over 12 steps logs 1, 5, 10 and the fit's last step 12, exactly."""
    _, weights, run, x, y = fit_and_read(tmp_path, sequential, update_freq=5)
    _, records = reference(sequential, weights, x, y)
    for key in ("step/loss", "step/grad_norm", "layer/update_norm"):
        series = run.scalars.get(key) or run.tensors[key]
        assert series.steps.tolist() == [1, 5, 10, 12], key
    assert_steps_match(run, records, [1, 5, 10, 12])


def test_adaptive_default_logs_its_schedule_with_exact_values(tmp_path):
    """The default update_freq is chosen once, written in the content, and kept."""
    x, y = data(n=BATCH * 16)
    model = compiled(sequential)
    weights = model.get_weights()
    cb = GradientHealthCallback(str(tmp_path / "run"), on_flag=None)
    model.fit(
        x, y, batch_size=BATCH, epochs=3, shuffle=False, verbose=0, callbacks=[cb]
    )
    run = read(str(tmp_path / "run"))
    freq = run.scalars["step/loss"].content["update_freq"]
    assert isinstance(freq, int) and freq >= 1
    # Step 1, every multiple of the chosen frequency, and the fit's last step.
    expected = sorted({s for s in range(1, 49) if s == 1 or s % freq == 0} | {48})
    assert run.scalars["step/loss"].steps.tolist() == expected
    _, records = reference(sequential, weights, x, y)
    assert_steps_match(run, records, expected)
    # Every step is still counted: the epoch windows hold 16 steps each.
    assert run.scalars["window/window_steps"].values.tolist() == [16, 16, 16]


def test_sample_weights_statistics_match_gradient_tape(tmp_path):
    """With sample weights the statistics are those of the weighted loss."""
    x, y = data()
    sw = np.random.default_rng(3).uniform(0.0, 2.0, len(x)).astype("float32")
    model = compiled(sequential)
    weights = model.get_weights()
    cb = GradientHealthCallback(str(tmp_path / "run"), update_freq=1, on_flag=None)
    model.fit(
        x,
        y,
        sample_weight=sw,
        batch_size=BATCH,
        epochs=EPOCHS,
        shuffle=False,
        verbose=0,
        callbacks=[cb],
    )
    _, records = reference(sequential, weights, x, y, sample_weight=sw)
    assert_steps_match(read(str(tmp_path / "run")), records, range(1, 13))


def embedding_model():
    return keras.Sequential(
        [
            keras.Input((6,), dtype="int32"),
            keras.layers.Embedding(40, 8, name="emb"),
            keras.layers.GlobalAveragePooling1D(),
            keras.layers.Dense(3, name="out"),
        ],
        name="bag",
    )


@pytest.mark.parametrize("fused", [False, True])
def test_embedding_sparse_gradient_matches_dense_reference(
    tmp_path, monkeypatch, fused
):
    """An embedding's IndexedSlices gradient gives its dense gradient's statistics."""
    if fused:
        fuse_everything(monkeypatch)
    rng = np.random.default_rng(0)
    x = rng.integers(0, 20, (N, 6)).astype("int32")  # rows 20-39 never used
    x[:, 1] = x[:, 0]  # repeated rows within a batch
    y = rng.integers(0, 3, N)
    model = compiled(embedding_model)
    weights = model.get_weights()
    cb = GradientHealthCallback(
        str(tmp_path / "run"),
        update_freq=1,
        on_flag=None,
        slices={"lo": ("bag/emb/embeddings", (0, 4))},
    )
    model.fit(
        x, y, batch_size=BATCH, epochs=EPOCHS, shuffle=False, verbose=0, callbacks=[cb]
    )
    run = read(str(tmp_path / "run"))
    _, records = reference(embedding_model, weights, x, y)
    assert_steps_match(run, records, range(1, 13))
    series = run.tensors["layer/grad_norm"]
    assert series.content["sparse_variables"] == ["bag/emb/embeddings"]
    for e in range(EPOCHS):
        exp = expected_window(records[4 * e : 4 * e + 4])
        for key in ("window_layer/grad_variance", "window_layer/zero_fraction"):
            np.testing.assert_allclose(
                run.tensors[key].values[e], exp[key], rtol=2e-3, atol=1e-9
            )
        emb = np.stack([r["grads"][0] for r in records[4 * e : 4 * e + 4]])
        np.testing.assert_allclose(
            run.scalars["slice/lo/grad_variance"].values[e],
            emb[..., 0:4].var(axis=0).mean(),
            rtol=2e-3,
        )
    assert run.tensors["window_layer/zero_fraction"].values[0][0] >= 0.5


@pytest.mark.parametrize("fused", [False, True])
def test_mixed_precision_values_step_by_step(tmp_path, monkeypatch, fused):
    """Mixed precision: each applied step's unscaled grad norm and its loss scale."""
    if fused:
        fuse_everything(monkeypatch)
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        x, y = data()

        def optimizer():
            return keras.optimizers.LossScaleOptimizer(
                keras.optimizers.SGD(LR), initial_scale=2.0**20
            )

        model = compiled(sequential, optimizer=optimizer())
        weights = model.get_weights()
        cb = GradientHealthCallback(str(tmp_path / "run"), update_freq=1, on_flag=None)
        model.fit(
            x, y, batch_size=BATCH, epochs=3, shuffle=False, verbose=0, callbacks=[cb]
        )
        # The replay: Keras's own step, written out with a GradientTape.
        ref = sequential()
        ref.set_weights(weights)
        opt = optimizer()
        opt.build(ref.trainable_variables)
        expected = {}
        for _ in range(3):
            for i in range(0, N, BATCH):
                with tf.GradientTape() as tape:
                    loss = LOSS(y[i : i + BATCH], ref(x[i : i + BATCH], training=True))
                    scaled = opt.scale_loss(loss)
                grads = tape.gradient(scaled, ref.trainable_variables)
                scale = float(opt.dynamic_scale)
                before = int(opt.iterations.numpy())
                opt.apply(grads, ref.trainable_variables)
                if int(opt.iterations.numpy()) > before:
                    flat = np.concatenate([np.ravel(g.numpy()) for g in grads])
                    expected[before + 1] = (np.linalg.norm(flat) / scale, scale)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    run = read(str(tmp_path / "run"))
    assert run.scalars["step/grad_norm"].steps.tolist() == sorted(expected)
    np.testing.assert_allclose(
        run.scalars["step/grad_norm"].values,
        [expected[s][0] for s in sorted(expected)],
        rtol=1e-2,
    )
    np.testing.assert_array_equal(
        run.scalars["step/loss_scale"].values,
        [expected[s][1] for s in sorted(expected)],
    )


def test_probe_data_is_the_curvature_batch(tmp_path):
    """probe_data=(x, y) is the batch whose Hessian is logged, not the first batch."""
    x, y = data()
    px, py = data(seed=5, n=BATCH)
    model = compiled(tiny)
    cb = GradientHealthCallback(
        str(tmp_path / "run"), hessian_freq=1, probe_data=(px, py), on_flag=None
    )
    model.fit(
        x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0, callbacks=[cb]
    )
    run = read(str(tmp_path / "run"))
    eig = np.linalg.eigvalsh(nested_tape_hessian(model, px, py))
    np.testing.assert_allclose(
        run.scalars["hessian/top_eigenvalue"].values[0], eig.max(), rtol=1e-3
    )

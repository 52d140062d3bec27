"""Tests of rule non_finite (diagnosis.non_finite)."""

from __future__ import annotations

import numpy as np
import pytest

from tb_gradplugin.diagnosis import (
    diagnose,
)
from tests.diagnosis_runs import (
    VARS,
    N,
    healthy_grad,
    healthy_loss,
    kinds,
    layer_block,
    only,
    run_of,
)


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


def test_an_absent_layer_is_never_named_for_a_nan_loss():
    """A frozen layer's NaN with a non-finite count of 0 is absence, not a finding."""
    loss = healthy_loss()
    loss[300:] = np.nan
    layers = layer_block()
    layers["grad_norm"][:, :2] = np.nan  # seq/dense frozen: absent at every step
    layers["nonfinite_grads"] = np.zeros((N, 4))
    flags = diagnose(
        run_of(loss=loss, grad_norm=healthy_grad(), variables=VARS, layers=layers)
    )
    (flag,) = only(flags, "non_finite")
    assert flag.first_step == 301 and flag.layer is None
    assert not {f.layer for f in flags} & set(VARS[:2])


def test_a_nan_gradient_beside_an_absent_layer_names_its_own_layer():
    """The stepped layer whose count says non-finite is named, not the absent one."""
    grad = healthy_grad()
    grad[300:] = np.nan
    layers = layer_block()
    layers["grad_norm"][:, :2] = np.nan
    layers["grad_norm"][300:, 2] = np.nan
    layers["nonfinite_grads"] = np.zeros((N, 4))
    layers["nonfinite_grads"][300:, 2] = 7
    flags = diagnose(
        run_of(loss=healthy_loss(), grad_norm=grad, variables=VARS, layers=layers)
    )
    (flag,) = only(flags, "non_finite")
    assert (flag.first_step, flag.layer) == (301, VARS[2])


# -- real fits (TensorFlow is needed only to train) --------------------------------


def _fit_and_diagnose(tmp_path, model, x, y, optimizer_lr=0.05, **fit):
    """Fits with the callback at every step; the run's report, read both ways."""
    import os

    import keras

    from tb_gradplugin import GradientHealthCallback, diagnosis, flag_reads, reader

    log_dir = str(tmp_path / "run")
    model.compile(
        optimizer=keras.optimizers.SGD(optimizer_lr),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    cb = GradientHealthCallback(log_dir, update_freq=1, on_flag=None)
    model.fit(x, y, batch_size=8, shuffle=False, verbose=0, callbacks=[cb], **fit)
    cb.close()
    provider = reader.provider_for_logdir(os.path.dirname(log_dir))
    run = reader.read_run(provider, "run")
    report = diagnosis.run_report(run)
    assert flag_reads.run_report(provider, "run") == report
    return run, report


def _frozen_base_model():
    import keras

    keras.utils.set_random_seed(3)
    base = keras.layers.Dense(5, activation="tanh", name="base")
    model = keras.Sequential(
        [keras.Input((6,)), base, keras.layers.Dense(3, name="head")]
    )
    base.trainable = False
    return model


def test_real_fit_with_a_frozen_layer_and_a_nan_batch_names_the_stepped_layer(
    tmp_path,
):
    """A frozen base (absent) beside a head whose gradient turns NaN: head named."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(96, 6)).astype("float32")
    y = rng.integers(0, 3, 96)
    x[64:] = np.nan  # from step 9 the batches are NaN
    run, report = _fit_and_diagnose(tmp_path, _frozen_base_model(), x, y, epochs=1)
    grad = run.tensor("layer/grad_norm")
    base = [i for i, p in enumerate(grad.names) if "base" in p]
    assert base and np.isnan(grad.values[:, base]).all()  # absent at every step
    counts = run.tensor("layer/nonfinite_grads")
    assert (counts.values[:, base] == 0).all()
    (flag,) = [f for f in report["flags"] if f["kind"] == "non_finite"]
    assert flag["first_step"] == 9
    assert flag["layer"] is not None and "head" in flag["layer"]
    named = {f["layer"] for f in report["flags"]}
    assert not named & {grad.names[i] for i in base}


def test_real_fit_with_a_part_no_optimizer_steps_names_it_nowhere(tmp_path):
    """A two-optimizer step whose second part is never stepped: never named."""
    import keras

    # model.optimizer steps the head; a second optimizer steps the base in a
    # tf.cond branch, which the callback cannot see: the base is absent.
    from tests.test_callback_real_code import GatedBase

    rng = np.random.default_rng(1)
    x = rng.normal(size=(160, 6)).astype("float32")
    y = rng.integers(0, 3, 160)
    keras.utils.set_random_seed(8)
    model = GatedBase()
    model(x[:1])
    with pytest.warns(UserWarning, match="conditional branch"):
        run, report = _fit_and_diagnose(tmp_path, model, x, y, epochs=2)
    grad = run.tensor("layer/grad_norm")
    base = {p for p in grad.names if "/base/" in p}
    assert len(base) == 2
    assert np.isnan(grad.values[:, [grad.names.index(p) for p in base]]).all()
    assert not {f["layer"] for f in report["flags"]} & base
    assert not [f for f in report["flags"] if f["kind"] == "non_finite"]

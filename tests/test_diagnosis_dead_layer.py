"""Tests of rule dead_layer (diagnosis.dead_layer)."""

from __future__ import annotations

import numpy as np

from tb_gradplugin import reader
from tb_gradplugin.diagnosis import (
    Thresholds,
    diagnose,
)
from tests import eventfiles
from tests.diagnosis_runs import (
    STEPS,
    N,
    healthy_grad,
    healthy_loss,
    kinds,
    layer_block,
    layers_run,
    only,
    rng,
)


def test_dead_relu_layer_is_an_error_on_its_kernel():
    """A bias whose gradient is all zero marks its layer's units as dead."""
    layers = layer_block(zero=(1.0, 1.0, 0.1, 0.0), grad=(0.0, 0.0, 0.5, 0.3))
    flags = diagnose(layers_run(layers))
    (flag,) = only(flags, "dead_layer")
    assert flag.severity == "error"
    assert flag.layer == "seq/dense/kernel"
    assert flag.evidence["measured_on"] == "seq/dense/bias"


def test_partly_dead_layer_is_a_warning():
    """80 % of a layer's units dead at every step is a warning (AutoTrainer 70 %)."""
    z = np.tile([0.85, 0.8, 0.1, 0.0], (N, 1))
    z[:100, :2] = 0.1  # the units died at step 101
    flags = diagnose(layers_run({"zero_fraction": z}))
    (flag,) = only(flags, "dead_layer")
    assert flag.severity == "warning"
    assert 95 <= flag.first_step <= 110


def test_sparse_inputs_do_not_make_a_kernel_dead():
    """A kernel with 90 % zero entries but a live bias is not dead."""
    z = np.tile([0.9, 0.2, 0.75, 0.0], (N, 1))
    flags = diagnose(layers_run({"zero_fraction": z}))
    assert "dead_layer" not in kinds(flags)


def test_embedding_sparsity_is_not_death():
    """Embedding gradients are mostly zero rows by design: no dead_layer flag."""
    z = np.tile([0.99, 0.1], (N, 1))
    flags = diagnose(
        layers_run({"zero_fraction": z}, ["m/embedding/embeddings", "m/dense/kernel"])
    )
    assert "dead_layer" not in kinds(flags)


def test_fluctuating_zero_share_of_batch_size_one_is_not_dead():
    """A zero share that hovers around 55 % per example is not a dead layer."""
    z = np.clip(0.55 + 0.12 * rng(7).standard_normal((N, 4)), 0, 1)
    flags = diagnose(layers_run({"zero_fraction": z}))
    assert "dead_layer" not in kinds(flags)


# -- sparse by design: decided by the gradient's structure --------------------

SPARSE_VARS = ["rec/user_table", "rec/item_bias", "rec/dense/kernel", "rec/dense/bias"]


def read_back(tmp_path, **series):
    """Writes a run as a real event file and reads it as the CLI would."""
    eventfiles.write_run(tmp_path, "run", steps=STEPS, **series)
    provider = reader.provider_for_logdir(tmp_path)
    return reader.read_run(provider, "run")


def sparse_run(tmp_path, *, sparse=None, window=None, dense_zero=0.05):
    """A lookup table and a per-item bias read by gather, then a dense layer.

    Per step, 97 % of the table's and the bias's entries get no gradient (only
    the batch's rows do); ``window`` gives the window share per variable.
    """
    per_step = np.tile([0.97, 0.97, dense_zero, dense_zero], (N, 1))
    content = {"variables": SPARSE_VARS}
    if sparse is not None:
        content["sparse_variables"] = sparse
    tensors = {
        "layer/zero_fraction": (STEPS, per_step, content),
        "layer/grad_norm": (STEPS, np.tile([0.1, 0.1, 0.5, 0.3], (N, 1)), content),
    }
    if window is not None:
        window_steps = STEPS[99::100]
        values = np.tile(np.asarray(window, float), (len(window_steps), 1))
        tensors["window_layer/zero_fraction"] = (
            window_steps,
            values,
            {"variables": SPARSE_VARS, "window": 100},
        )
    return read_back(
        tmp_path,
        loss=healthy_loss(),
        grad_norm=healthy_grad(),
        param_norm=np.full(N, 10.0),
        tensors=tensors,
    )


def test_variables_whose_gradient_arrives_as_rows_are_not_dead(tmp_path):
    """A table and a per-item bias listed as sparse get no dead_layer flag."""
    run = sparse_run(
        tmp_path,
        sparse=["rec/user_table", "rec/item_bias"],
        window=[0.3, 0.2, 0.0, 0.0],
    )
    assert only(diagnose(run), "dead_layer") == []


def test_sparse_variables_alone_decide_without_window_shares(tmp_path):
    """With the structure but no window share, sparse variables are still exempt."""
    run = sparse_run(tmp_path, sparse=["rec/user_table", "rec/item_bias"])
    assert only(diagnose(run), "dead_layer") == []


def test_a_gathered_bias_in_logs_without_structure_falls_back_to_the_name(tmp_path):
    """Without sparse_variables only names with "embedding" are exempt."""
    run = sparse_run(tmp_path)
    flagged = {f.layer for f in only(diagnose(run), "dead_layer")}
    assert flagged == {"rec/user_table", "rec/item_bias"}


def test_units_touched_at_some_step_of_each_window_are_not_dead(tmp_path):
    """A dense layer zero at most steps but reached within each window lives."""
    run = sparse_run(
        tmp_path,
        sparse=["rec/user_table", "rec/item_bias"],
        window=[0.0, 0.0, 0.1, 0.1],
        dense_zero=0.9,
    )
    assert only(diagnose(run), "dead_layer") == []


def test_units_never_touched_in_a_window_are_dead_per_window(tmp_path):
    """With window shares, a dead layer is judged on entries never touched."""
    run = sparse_run(
        tmp_path,
        sparse=["rec/user_table", "rec/item_bias"],
        window=[0.0, 0.0, 1.0, 1.0],
        dense_zero=1.0,
    )
    (flag,) = only(diagnose(run), "dead_layer")
    assert flag.layer == "rec/dense/kernel"
    assert flag.severity == "error"
    assert flag.evidence["measured_over"] == "windows"
    assert flag.evidence["measured_on"] == "rec/dense/bias"
    assert flag.first_step == 100 and flag.last_step == N


# -- a dead layer starves the layers before it ---------------------------------

CHAIN = [
    f"seq/dense{suffix}/{leaf}"
    for suffix in ("", "_1", "_2")
    for leaf in ("kernel", "bias")
]


def chain_run(zero_row, grad_row):
    layers = {
        "zero_fraction": np.tile(np.asarray(zero_row, float), (N, 1)),
        "grad_norm": np.tile(np.asarray(grad_row, float), (N, 1)),
    }
    return layers_run(layers, CHAIN)


def test_the_blocking_layer_is_the_error_and_names_the_starved_ones():
    """A fully dead second layer is one error; the first, starved, is evidence."""
    flags = diagnose(chain_run([1, 1, 1, 1, 0.1, 0.0], [0, 0, 0, 0, 0.5, 0.2]))
    (flag,) = only(flags, "dead_layer")
    assert flag.layer == "seq/dense_1/kernel"
    assert flag.severity == "error"
    assert flag.evidence["starved_layers"] == ["seq/dense/kernel"]
    assert "seq/dense/kernel" in flag.message


def test_a_partly_dead_later_layer_starves_nothing():
    """Where the later layer still passes gradient, an earlier dead layer is its own."""
    flags = diagnose(chain_run([1, 1, 0.96, 0.9, 0.1, 0.0], [0, 0, 0.2, 0.1, 0.5, 0.2]))
    dead = {f.layer: f for f in only(flags, "dead_layer")}
    assert set(dead) == {"seq/dense/kernel", "seq/dense_1/kernel"}
    assert "starved_layers" not in dead["seq/dense_1/kernel"].evidence


def test_a_dead_layer_after_a_healthy_one_starves_nothing_before_it():
    """Only a contiguous run of all-zero gradients is starved."""
    flags = diagnose(chain_run([1, 1, 0.1, 0.0, 1, 1], [0, 0, 0.2, 0.1, 0, 0]))
    dead = {f.layer for f in only(flags, "dead_layer")}
    assert dead == {"seq/dense/kernel", "seq/dense_2/kernel"}


def test_units_that_fire_now_and_then_at_batch_size_one_are_not_dead():
    """At batch size 1 a live layer is silent most steps; a step that fires counts."""
    zero = np.ones((N, 4))
    zero[::12, :2] = 0.6  # some units get a gradient every twelfth step
    zero[:, 2:] = 0.05
    layers = {"zero_fraction": zero, "grad_norm": np.tile([0.2, 0.1, 0.5, 0.3], (N, 1))}
    flags = diagnose(layers_run(layers))
    assert only(flags, "dead_layer") == []
    strict = Thresholds(dead_touch_steps=1)
    (flag,) = only(
        diagnose(
            layers_run(layers),
            strict,
        ),
        "dead_layer",
    )
    assert flag.layer == "seq/dense/kernel"

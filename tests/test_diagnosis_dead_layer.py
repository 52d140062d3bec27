"""Tests of rule dead_layer (diagnosis.dead_layer)."""

from __future__ import annotations

import numpy as np

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
    rng,
    run_of,
)


def test_dead_relu_layer_is_an_error_on_its_kernel():
    """A bias whose gradient is all zero marks its layer's units as dead."""
    layers = layer_block(zero=(1.0, 1.0, 0.1, 0.0), grad=(0.0, 0.0, 0.5, 0.3))
    flags = diagnose(
        run_of(
            loss=healthy_loss(),
            grad_norm=healthy_grad(),
            variables=VARS,
            layers=layers,
        )
    )
    (flag,) = only(flags, "dead_layer")
    assert flag.severity == "error"
    assert flag.layer == "seq/dense/kernel"
    assert flag.evidence["measured_on"] == "seq/dense/bias"


def test_partly_dead_layer_is_a_warning():
    """80 % of a layer's units dead at every step is a warning (AutoTrainer 70 %)."""
    z = np.tile([0.85, 0.8, 0.1, 0.0], (N, 1))
    z[:100, :2] = 0.1  # the units died at step 101
    flags = diagnose(
        run_of(
            loss=healthy_loss(),
            grad_norm=healthy_grad(),
            variables=VARS,
            layers={"zero_fraction": z},
        )
    )
    (flag,) = only(flags, "dead_layer")
    assert flag.severity == "warning"
    assert 95 <= flag.first_step <= 110


def test_sparse_inputs_do_not_make_a_kernel_dead():
    """A kernel with 90 % zero entries but a live bias is not dead."""
    z = np.tile([0.9, 0.2, 0.75, 0.0], (N, 1))
    flags = diagnose(
        run_of(
            loss=healthy_loss(),
            grad_norm=healthy_grad(),
            variables=VARS,
            layers={"zero_fraction": z},
        )
    )
    assert "dead_layer" not in kinds(flags)


def test_embedding_sparsity_is_not_death():
    """Embedding gradients are mostly zero rows by design: no dead_layer flag."""
    z = np.tile([0.99, 0.1], (N, 1))
    flags = diagnose(
        run_of(
            loss=healthy_loss(),
            grad_norm=healthy_grad(),
            variables=["m/embedding/embeddings", "m/dense/kernel"],
            layers={"zero_fraction": z},
        )
    )
    assert "dead_layer" not in kinds(flags)


def test_fluctuating_zero_share_of_batch_size_one_is_not_dead():
    """A zero share that hovers around 55 % per example is not a dead layer."""
    z = np.clip(0.55 + 0.12 * rng(7).standard_normal((N, 4)), 0, 1)
    flags = diagnose(
        run_of(
            loss=healthy_loss(),
            grad_norm=healthy_grad(),
            variables=VARS,
            layers={"zero_fraction": z},
        )
    )
    assert "dead_layer" not in kinds(flags)

"""The step's own loss, read from the change of a Mean metric over the step."""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from tb_gradplugin.step_loss import StepLoss, is_mean_metric


def _model():
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    return model


def test_the_step_value_is_the_trackers_mean_over_the_step_only():
    """After steps of 1.0 and 3.0, a step of 8.0 reads 8.0, not the mean 4.0."""
    model = _model()
    tracker = model._loss_tracker
    assert is_mean_metric(tracker) and not is_mean_metric(model)
    losses = StepLoss(model, [])

    @tf.function
    def step(value):
        before = losses.state()
        tracker.update_state(value)
        after = losses.state()
        return losses.step_values({"loss": tracker.result()}, before, after)

    for value in (1.0, 3.0):
        step(tf.constant(value))
    loss, known, components = step(tf.constant(8.0))
    assert float(tracker.result()) == 4.0
    assert float(loss) == 8.0 and float(known) == 1.0 and components == []


def test_no_loss_in_the_logs_or_an_unchanged_tracker_is_unknown():
    """No 'loss' entry, or a tracker the step left alone: NaN marked unknown."""
    model = _model()
    tracker = model._loss_tracker
    losses = StepLoss(model, [])
    tracker.update_state(2.0)

    @tf.function
    def step(logs_of):
        before = losses.state()
        after = losses.state()
        return losses.step_values(logs_of(), before, after)

    for logs_of in (dict, lambda: {"loss": tracker.result()}):
        loss, known, _ = step(logs_of)
        assert np.isnan(float(loss)) and float(known) == 0.0


class WithTracker(keras.Model):
    """A model that keeps its own Mean tracker, as the keras.io VAE does."""

    def __init__(self):
        super().__init__()
        self.dense = keras.layers.Dense(1)
        self.kl_tracker = keras.metrics.Mean(name="kl_loss")

    def call(self, x):
        """The output."""
        return self.dense(x)

    @property
    def metrics(self):
        """The tracker."""
        return [self.kl_tracker]


def test_components_are_per_step_only_when_they_are_mean_metrics():
    """A component that is a Mean of the model is per step; another is per epoch."""
    model = WithTracker()
    model.compile(optimizer="sgd", loss="mse")
    losses = StepLoss(model, ["kl_loss", "lm_loss"])
    assert losses.step_components == ["kl_loss"]
    assert losses.epoch_components == ["lm_loss"]
    assert not losses.components_appeared()
    model.kl_tracker.update_state([1.0, 4.0])
    assert losses.results(["kl_loss", "lm_loss"]) == {"kl_loss": 2.5}


def test_a_result_found_in_the_graph_reads_as_one_found_by_value():
    """A result found in the graph or (behind a multiply) by value reads the same."""
    model = _model()
    tracker = model._loss_tracker
    other = keras.metrics.Mean(name="mae")
    losses = StepLoss(model, [])
    losses.loss_metrics = [other, tracker]

    @tf.function
    def step(value, hide):
        before = losses.state()
        other.update_state(value + 1.0)
        tracker.update_state(value)
        after = losses.state()
        result = tracker.result() * 1.0 if hide else tracker.result()
        return losses.step_values({"loss": result}, before, after)

    got = {}
    for hide in (False, True):
        for value in (1.0, 3.0):
            step(tf.constant(value), hide)
        got[hide] = [float(t) for t in step(tf.constant(8.0), hide)[:2]]
        tracker.reset_state()
        other.reset_state()
    assert got[False] == got[True] == [8.0, 1.0]


def test_a_logged_loss_that_is_no_metric_result_is_the_step_value():
    """A plain loss tensor in the logs is the step's value, known."""
    model = _model()
    losses = StepLoss(model, [])

    @tf.function
    def step(value):
        before = losses.state()
        model._loss_tracker.update_state(value * 2.0)
        after = losses.state()
        return losses.step_values({"loss": value}, before, after)

    loss, known, _ = step(tf.constant(5.0))
    assert float(loss) == 5.0 and float(known) == 1.0

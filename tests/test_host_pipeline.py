"""Tests of the host side: which writer tasks the training thread hands over."""

from __future__ import annotations

import os

import keras
import numpy as np

from tb_gradplugin import GradientHealthCallback, host_pipeline, reader

EPOCHS = 20
STEPS = 4  # steps an epoch


def fit_counting_tasks(tmp_path, monkeypatch, **cb_kwargs):
    """Fits a small MLP on arrays; returns the epoch ends of each writer task."""
    tasks = []
    process = host_pipeline.Monitor._process

    def counting(self, start, stop, step_seconds, epochs):
        tasks.append(len(epochs))
        return process(self, start, stop, step_seconds, epochs)

    monkeypatch.setattr(host_pipeline.Monitor, "_process", counting)
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.Input((6,)), keras.layers.Dense(5, "relu"), keras.layers.Dense(2)]
    )
    model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8 * STEPS, 6)).astype("float32")
    y = rng.integers(0, 2, 8 * STEPS)
    logdir = str(tmp_path / "run")
    cb = GradientHealthCallback(logdir, update_freq=1, **cb_kwargs)
    model.fit(x, y, batch_size=8, epochs=EPOCHS, verbose=0, callbacks=[cb])
    provider = reader.provider_for_logdir(os.path.dirname(logdir))
    return tasks, reader.read_run(provider, "run")


def test_short_epochs_are_handed_over_with_the_blocks(tmp_path, monkeypatch):
    """Epochs of 4 steps share writer tasks, and every epoch's window is written."""
    tasks, run = fit_counting_tasks(tmp_path, monkeypatch, on_flag=None)
    # 80 steps, 64-step blocks: a task per epoch would be 20.
    assert len(tasks) <= EPOCHS // 2
    assert sum(tasks) == EPOCHS
    steps = run.scalars["window/window_steps"]
    assert steps.steps.tolist() == list(range(STEPS, EPOCHS * STEPS + 1, STEPS))
    assert steps.values.tolist() == [STEPS] * EPOCHS


def test_stop_on_flag_hands_each_epoch_over_at_its_end(tmp_path, monkeypatch):
    """With on_flag="stop" each epoch end is its own task (a flag stops that epoch)."""
    tasks, _ = fit_counting_tasks(tmp_path, monkeypatch, on_flag="stop")
    assert [n for n in tasks if n] == [1] * EPOCHS

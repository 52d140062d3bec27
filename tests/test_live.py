"""Live diagnosis during fit: warnings and stops on real unhealthy trainings."""

from __future__ import annotations

import logging
import warnings

import keras
import numpy as np

from tb_gradplugin import GradientHealthCallback
from tb_gradplugin.live import LiveDiagnosis


def _data(n=256, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 20)).astype("float32")
    w = rng.normal(size=(20,))
    y = (x @ w > 0).astype("int64")
    return x, y


def _model(lr):
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((20,)),
            keras.layers.Dense(32, activation="relu"),
            keras.layers.Dense(32, activation="relu"),
            keras.layers.Dense(2),
        ]
    )
    model.compile(
        optimizer=keras.optimizers.SGD(lr),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    return model


def _fit(tmp_path, lr, on_flag, epochs=8):
    x, y = _data()
    model = _model(lr)
    cb = GradientHealthCallback(str(tmp_path / "run"), on_flag=on_flag)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        history = model.fit(
            x, y, batch_size=16, epochs=epochs, verbose=0, callbacks=[cb]
        )
    ours = [
        str(w.message) for w in caught if "GradientHealthCallback:" in str(w.message)
    ]
    return len(history.history["loss"]), ours, cb


def test_each_flag_is_reported_once_with_the_steps_it_covers(tmp_path, caplog):
    """A live flag is one warning, naming the last step written when it was found."""
    import re

    with caplog.at_level(logging.WARNING, logger="tb_gradplugin.live"):
        _, messages, _ = _fit(tmp_path, lr=50.0, on_flag="warn")
    assert messages
    assert not [r for r in caplog.records if "Gradient health" in r.getMessage()]
    for message in messages:
        found = re.search(r"in the steps written up to step (\d+)", message)
        assert found, message
        first = re.search(r"steps (\d+)-(\d+)", message)
        assert first and int(first.group(2)) <= int(found.group(1)), message


def test_exploding_training_warns_and_goes_on(tmp_path):
    """A far too high learning rate gives an error-flag warning; training goes on."""
    epochs, messages, _ = _fit(tmp_path, lr=50.0, on_flag="warn")
    assert epochs == 8
    assert any("exploding_gradient" in m or "non_finite" in m for m in messages)


def test_exploding_training_stops_with_on_flag_stop(tmp_path):
    """on_flag='stop' ends fit at the epoch where the error flag appears."""
    epochs, messages, _ = _fit(tmp_path, lr=50.0, on_flag="stop", epochs=30)
    # The gradients blow up in the first epoch: training stops at its end.
    assert messages and epochs == 1


def test_healthy_training_gets_no_warning(tmp_path):
    """A well-tuned training raises no live warning and runs every epoch."""
    epochs, messages, _ = _fit(tmp_path, lr=0.05, on_flag="stop")
    assert epochs == 8
    assert messages == []


def test_a_training_shorter_than_the_interval_warns_at_its_end(tmp_path, monkeypatch):
    """Seed 004's vanishing run, no check during the fit: the end of fit warns."""
    from demo import Settings, seed004
    from tb_gradplugin import live

    # No check during the fit: only the one at its end can warn.
    monkeypatch.setattr(live, "LIVE_INTERVAL_S", 1e9)
    plan = seed004.build("vanishing", Settings(quick=True, verbose=0))
    cb = GradientHealthCallback(str(tmp_path / "run"), on_flag="warn")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        plan.model.fit(
            plan.x,
            plan.y,
            batch_size=plan.batch_size,
            epochs=plan.epochs,
            verbose=0,
            callbacks=[cb],
        )
    ours = [
        str(w.message) for w in caught if "GradientHealthCallback:" in str(w.message)
    ]
    assert ours and all("end of training" in m for m in ours)
    assert any("vanishing_gradient" in m for m in ours)


def test_live_diagnosis_reports_each_flag_once(tmp_path):
    """A second reload without new trouble reports no flag again."""
    _, _, cb = _fit(tmp_path, lr=50.0, on_flag=None, epochs=3)
    live = LiveDiagnosis(cb.log_dir)
    first = live.new_errors()
    assert first and all(f.severity == "error" for f in first)
    assert live.new_errors() == []


def test_live_diagnosis_runs_on_the_writer_thread_rate_limited(tmp_path, monkeypatch):
    """Many short epochs: the rules run on the writer thread, every few seconds."""
    import threading
    import time

    from tb_gradplugin import live

    calls = []
    original = live.LiveDiagnosis.new_errors

    def new_errors(self):
        calls.append((threading.current_thread().name, time.monotonic()))
        return original(self)

    monkeypatch.setattr(live.LiveDiagnosis, "new_errors", new_errors)
    x, y = _data(n=64)
    model = _model(0.05)
    cb = GradientHealthCallback(str(tmp_path / "run"), on_flag="warn")
    start = time.monotonic()
    model.fit(x, y, batch_size=16, epochs=40, verbose=0, callbacks=[cb])
    elapsed = time.monotonic() - start
    assert calls and all(name.startswith("gradient_health_writer") for name, _ in calls)
    # At most one run per interval, plus the one at the end of training.
    assert len(calls) <= elapsed / 5.0 + 2
    assert len(calls) < 40


def test_live_flags_equal_the_whole_runs_diagnosis(tmp_path):
    """The live check flags what the rules flag on the run read whole from disk."""
    from tb_gradplugin import diagnosis, reader

    _, _, cb = _fit(tmp_path, lr=50.0, on_flag=None, epochs=3)
    full = reader.read_run(reader.provider_for_logdir(str(tmp_path)), "run")
    expected = [
        (f.kind, f.layer, f.first_step)
        for f in diagnosis.diagnose(full)
        if f.severity == "error"
    ]
    live = LiveDiagnosis(cb.log_dir)
    found = [(f.kind, f.layer, f.first_step) for f in live.new_errors()]
    assert expected and found == expected


def test_warn_runs_take_at_most_their_share_of_the_time(tmp_path, monkeypatch):
    """A "warn" run of d s waits d / LIVE_SHARE, save a folder's first and fit ends."""
    import time

    from tb_gradplugin import live

    def slow(self):
        time.sleep(0.2)
        return []

    monkeypatch.setattr(live.LiveDiagnosis, "new_errors", slow)
    monkeypatch.setattr(live, "LIVE_INTERVAL_S", 0.0)
    for on_flag, due_after in (("warn", False), ("stop", True)):
        reports = live.LiveReports(on_flag)
        assert reports.due(urgent=True, epoch_end=False)
        reports.run(str(tmp_path))  # the first run: the folder's history
        assert reports.due(urgent=True, epoch_end=True)
        reports.run(str(tmp_path))
        # 0.2 s of rules: "warn" waits 20 s before the next run, even urgent.
        assert reports.due(urgent=True, epoch_end=True) is due_after
        assert reports.due(urgent=False, epoch_end=False, final=True)
        reports.forget_run()  # a new folder: its first run again
        reports.run(str(tmp_path))
        assert reports.due(urgent=True, epoch_end=True)

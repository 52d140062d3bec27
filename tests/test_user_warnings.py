"""The callback's warnings name the user's line, not one of the package's."""

from __future__ import annotations

import inspect
import warnings

import keras
import numpy as np

from tb_gradplugin import GradientHealthCallback, user_warnings


def test_a_direct_warning_names_its_callers_line():
    """Called from outside the package, the warning is located at that call."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        line = inspect.currentframe().f_lineno + 1
        user_warnings.warn("GradientHealthCallback: example")
    assert [(w.filename, w.lineno) for w in caught] == [(__file__, line)]
    assert caught[0].category is RuntimeWarning


def test_warnings_of_a_fit_name_the_fit_call(tmp_path):
    """An exploding training's live warnings point at the line calling fit."""
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(256, 20)).astype("float32")
    y = (x[:, 0] > 0).astype("int64")
    model = keras.Sequential(
        [keras.Input((20,)), keras.layers.Dense(32, "relu"), keras.layers.Dense(2)]
    )
    model.compile(
        keras.optimizers.SGD(50.0),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    cb = GradientHealthCallback(str(tmp_path / "run"), on_flag="warn")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        line = inspect.currentframe().f_lineno + 1
        model.fit(x, y, batch_size=16, epochs=3, verbose=0, callbacks=[cb])
    ours = [w for w in caught if "GradientHealthCallback:" in str(w.message)]
    assert ours
    assert {(w.filename, w.lineno) for w in ours} == {(__file__, line)}

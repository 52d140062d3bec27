"""Tests of the flag model and its JSON and text forms (diagnosis.flags)."""

from __future__ import annotations

import math

import numpy as np

from tb_gradplugin import diagnosis
from tb_gradplugin.diagnosis import Flag, json_safe


def test_json_safe_encodes_non_finite_numbers_like_tensorboard():
    """NaN and ±Inf become the strings TensorBoard's http_util uses."""
    value = {"a": np.float32("nan"), "b": [math.inf, -math.inf], "c": np.int64(3)}
    assert json_safe(value) == {"a": "NaN", "b": ["Infinity", "-Infinity"], "c": 3}


def test_severity_rank_orders_info_warning_error():
    """The one severity order: info < warning < error; unknown ranks as info."""
    assert [diagnosis.severity_rank(s) for s in ("info", "warning", "error")] == [
        0,
        1,
        2,
    ]
    assert diagnosis.severity_rank("bogus") == 0


def test_sort_flags_puts_the_worst_first_then_the_earliest():
    """Flags sort by severity, then first step, then kind."""
    made = [
        Flag("loss_plateau", "info", 5, 9, None, "a"),
        Flag("dead_layer", "error", 30, 40, "d/kernel", "b"),
        Flag("oscillating_loss", "warning", 1, 9, None, "c"),
        Flag("non_finite", "error", 10, 40, None, "d"),
    ]
    got = [(f.severity, f.first_step) for f in diagnosis.sort_flags(made)]
    assert got == [("error", 10), ("error", 30), ("warning", 1), ("info", 5)]


def test_flag_advice_defaults_to_the_kind_advice():
    """A flag made without advice gets its kind's advice; given advice is kept."""
    assert (
        Flag("dead_layer", "error", 1, 2, None, "m").advice
        == (diagnosis.ADVICE["dead_layer"])
    )
    assert Flag("dead_layer", "error", 1, 2, None, "m", "mine").advice == "mine"
    assert set(diagnosis.ADVICE) == set(diagnosis.KINDS)


def test_format_flag_is_the_same_for_a_flag_and_its_json():
    """The text form has the head, message and advice lines, names made printable."""
    flag = Flag("dead_layer", "warning", 3, 9, "bad\x1bname/kernel", "Half dead.")
    text = diagnosis.format_flag(flag, indent="  ")
    assert text == diagnosis.format_flag(flag.to_json(), indent="  ")
    head, message, advice = text.split("\n")
    assert head == "  WARNING dead_layer  steps 3-9  bad\\x1bname/kernel"
    assert message == "          Half dead."
    assert advice == "          Advice: " + diagnosis.ADVICE["dead_layer"]
    no_layer = diagnosis.format_flag(Flag("non_finite", "error", 1, 1, None, "x"))
    assert no_layer.split("\n")[0] == "ERROR   non_finite  steps 1-1"


def test_the_docstring_examples_of_the_package_run():
    """Every >>> example in the diagnosis package gives the output it shows."""
    import doctest
    import importlib
    import pkgutil

    tried = 0
    for info in pkgutil.iter_modules(diagnosis.__path__):
        module = importlib.import_module(f"tb_gradplugin.diagnosis.{info.name}")
        result = doctest.testmod(module, raise_on_error=False, verbose=False)
        assert result.failed == 0, info.name
        tried += result.attempted
    assert tried >= 4

"""Pathology rules over a run's gradient-health series (numpy only).

:func:`diagnose` turns a run's series (as :func:`tb_gradplugin.reader.read_run`
returns them) into :class:`Flag` objects of the contract's kinds:
``non_finite``, ``exploding_gradient``, ``vanishing_gradient``,
``oscillating_loss``, ``loss_plateau``, ``dead_layer`` and ``saddle_point``.
:func:`run_report` wraps them into the JSON object that the plugin's ``flags``
route and ``tb-gradhealth check --json`` both return; :func:`format_flag` is
their text for a person.

The rules start from published ones (AutoTrainer, ICSE 2021; DeepDiagnosis,
ICSE 2022; the cs231n notes; the project's seed 004) and use what those tools
lack: every logged step. They are written for runs they were not tuned on:
robust statistics (:mod:`.robust`) instead of single points, thresholds
relative to the run's own scale, the noise of small batches never taken for a
finding, and a series that is missing, too short, constant or all NaN
silences only the rules that need it.

Layout: :mod:`.flags` (the flag model, severity order, advice, JSON and text
forms), :mod:`.thresholds` (every threshold with its source), :mod:`.robust`,
:mod:`.summaries` (display figures), :mod:`.run_view` (the series the rules
read), one module per rule, and :mod:`.report` (the order of the rules).
"""

from __future__ import annotations

from tb_gradplugin.diagnosis.flags import (
    ADVICE,
    KINDS,
    SEVERITIES,
    Flag,
    format_flag,
    json_safe,
    severity_rank,
    sort_flags,
)
from tb_gradplugin.diagnosis.report import (
    SERIES_KEYS,
    TENSOR_KEYS,
    diagnose,
    run_report,
)
from tb_gradplugin.diagnosis.run_view import DeferredTensor
from tb_gradplugin.diagnosis.summaries import RECENT_STEPS, recent_median, volatility
from tb_gradplugin.diagnosis.thresholds import Thresholds
from tb_gradplugin.reader import RunData, Series

__all__ = [
    "ADVICE",
    "DeferredTensor",
    "KINDS",
    "RECENT_STEPS",
    "SERIES_KEYS",
    "SEVERITIES",
    "TENSOR_KEYS",
    "Flag",
    "RunData",
    "Series",
    "Thresholds",
    "diagnose",
    "format_flag",
    "json_safe",
    "recent_median",
    "run_report",
    "severity_rank",
    "sort_flags",
    "volatility",
]

"""The one JSON encoding of the package: non-finite floats as TensorBoard sends them.

JSON has no NaN or infinity. TensorBoard's ``http_util.Respond`` (through
``json_util.Cleanse``) sends them as the strings ``"NaN"``, ``"Infinity"`` and
``"-Infinity"``; every payload of this package does the same, so a client reads a
NaN as a finding rather than a gap. Imports no TensorFlow.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import numpy as np
from tensorboard.backend import json_util

__all__ = ["encode_json", "float_list", "json_safe", "nonfinite_text"]


def nonfinite_text(value: float) -> str:
    """Names a non-finite float as TensorBoard's JSON does.

    Args:
        value: A NaN or an infinity.

    Returns:
        ``"NaN"``, ``"Infinity"`` or ``"-Infinity"``.
    """
    if np.isnan(value):
        return "NaN"
    return "Infinity" if value > 0 else "-Infinity"


def float_list(values: np.ndarray) -> list:
    """Converts floats to JSON-ready lists the way TensorBoard's JSON does.

    Same output as ``json_util.Cleanse``, but vectorised: the lists of a
    100,000-step series are converted without a Python call per finite value.

    Args:
        values: A 1-D or 2-D float array.

    Returns:
        Nested lists of floats and, for non-finite entries, the strings of
        :func:`nonfinite_text`.
    """
    arr = np.asarray(values, dtype=np.float64)
    out = arr.tolist()
    finite = np.isfinite(arr)
    if finite.all():
        return out
    for idx in np.argwhere(~finite):
        text = nonfinite_text(arr[tuple(idx)])
        if arr.ndim == 1:
            out[idx[0]] = text
        else:
            out[idx[0]][idx[1]] = text
    return out


def json_safe(value: Any) -> Any:
    """Converts a value into data that strict JSON accepts.

    Args:
        value: Nested dicts, lists, tuples, numpy values, numbers and strings.

    Returns:
        The same structure with numpy values turned into Python ones and
        non-finite floats into the strings of :func:`nonfinite_text`.
    """
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, np.ndarray):
        return [json_safe(v) for v in value.tolist()]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        number = float(value)
        return number if np.isfinite(number) else nonfinite_text(number)
    return value


def encode_json(payload: Any) -> str:
    """Serialises a payload; NaN and infinities as TensorBoard's ``json_util`` does.

    Payloads built with :func:`float_list` are already clean and go straight to
    ``json.dumps``; anything else that still holds a non-finite float (e.g. a
    flag's evidence) goes through ``json_util.Cleanse``.

    Args:
        payload: JSON-serialisable data.

    Returns:
        The JSON text.
    """
    try:
        return json.dumps(payload, allow_nan=False)
    except ValueError:
        return json.dumps(json_util.Cleanse(payload), allow_nan=False)

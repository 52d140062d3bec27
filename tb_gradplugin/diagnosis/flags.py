"""The flag model: kinds, the severity order, advice, JSON and text forms.

Every other module that shows a flag (the CLI, the live warnings of the
callback, the plugin's ``flags`` route) takes its form from here.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

from tb_gradplugin.json_encoding import json_safe

KINDS = (
    "non_finite",
    "exploding_gradient",
    "vanishing_gradient",
    "oscillating_loss",
    "loss_plateau",
    "dead_layer",
    "saddle_point",
)
"""The flag kinds of the contract."""

SEVERITIES = ("info", "warning", "error")
"""Severities from the mildest to the worst."""


def severity_rank(severity: str) -> int:
    """Returns a severity's place in :data:`SEVERITIES` (higher is worse).

    Args:
        severity: ``"info"``, ``"warning"`` or ``"error"``.

    Returns:
        0, 1 or 2; an unknown name ranks as ``info`` (0).
    """
    return SEVERITIES.index(severity) if severity in SEVERITIES else 0


ADVICE = {
    "non_finite": (
        "Find the first non-finite value: check the input data and labels for "
        "NaN/Inf, guard divisions and logarithms in the loss (add an epsilon, use "
        "from_logits=True), lower the learning rate and clip gradients "
        "(clipnorm=1.0)."
    ),
    "exploding_gradient": (
        "Lower the learning rate (by 10x as a start) or add a warm-up, clip "
        "gradients (optimizer clipnorm=1.0), and add normalisation "
        "(BatchNormalization/LayerNormalization); check the weight initialisation."
    ),
    "vanishing_gradient": (
        "Use ReLU-family activations instead of sigmoid/tanh in deep stacks, a "
        "He/Glorot initialisation instead of tiny weights, normalisation layers "
        "or residual connections; an adaptive optimizer (Adam) helps too."
    ),
    "oscillating_loss": (
        "Lower the learning rate (or the momentum), use a larger batch, or a "
        "learning-rate schedule that decays; clip gradients if the swings come "
        "with gradient spikes."
    ),
    "loss_plateau": (
        "Check that the labels match the inputs and the loss fits the output "
        "(e.g. from_logits), normalise the inputs, raise the learning rate or "
        "change the initialisation; a loss stuck at chance level means the model "
        "predicts the class prior."
    ),
    "dead_layer": (
        "Units whose ReLU never fires get no gradient: lower the learning rate, "
        "use LeakyReLU/ELU/GELU, a He initialisation and zero (not negative) "
        "biases, or add normalisation before the activation."
    ),
    "saddle_point": (
        "The optimizer sits on a saddle: momentum or an adaptive optimizer "
        "(Adam), a larger learning rate or a little gradient noise (smaller "
        "batches) help it leave."
    ),
}
"""What to try, per flag kind."""


@dataclasses.dataclass
class Flag:
    """One pathology found in a run.

    Attributes:
        kind: One of :data:`KINDS`.
        severity: ``"error"``, ``"warning"`` or ``"info"``.
        first_step: The first logged step where the pathology is seen.
        last_step: The last logged step where it is seen.
        layer: The variable path it applies to, or ``None`` for the whole model.
        message: What happened, for a person.
        advice: What to try. Defaults to ``None``: the kind's entry of
            :data:`ADVICE`.
        evidence: The numbers that tripped the rule.

    Example:
        >>> flag = Flag("non_finite", "error", 12, 40, None, "NaN loss")
        >>> flag.to_json()["kind"], flag.advice == ADVICE["non_finite"]
        ('non_finite', True)
    """

    kind: str
    severity: str
    first_step: int
    last_step: int
    layer: str | None
    message: str
    advice: str | None = None
    evidence: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.advice is None:
            self.advice = ADVICE.get(self.kind, "")

    def to_json(self) -> dict[str, Any]:
        """Returns the flag as strict JSON-ready data.

        Returns:
            The contract's keys (``kind``, ``severity``, ``first_step``,
            ``last_step``, ``layer``, ``message``, ``advice``) plus
            ``evidence``; non-finite numbers become the strings ``"NaN"``,
            ``"Infinity"`` and ``"-Infinity"`` as TensorBoard's ``http_util``
            sends them.
        """
        return json_safe(
            {
                "kind": self.kind,
                "severity": self.severity,
                "first_step": int(self.first_step),
                "last_step": int(self.last_step),
                "layer": self.layer,
                "message": self.message,
                "advice": self.advice,
                "evidence": self.evidence,
            }
        )


def sort_flags(flags: list[Flag]) -> list[Flag]:
    """Returns the flags the most severe first, then by first step and kind.

    Args:
        flags: The flags, in any order.

    Returns:
        A new sorted list.
    """
    return sorted(
        flags, key=lambda f: (-severity_rank(f.severity), f.first_step, f.kind)
    )


def figure(x: float, digits: int = 4) -> float:
    """Rounds a number for a flag's evidence, keeping NaN, ±Inf and 0.

    Args:
        x: The number.
        digits: Significant digits. Defaults to 4.

    Returns:
        The rounded float.
    """
    x = float(x)
    if not math.isfinite(x) or x == 0:
        return x
    return float(f"{x:.{digits}g}")


def short(x: float) -> str:
    """Writes a number for a flag's message: three significant digits.

    Args:
        x: The number.

    Returns:
        E.g. ``"0.00123"``, ``"NaN"``, ``"Inf"``.
    """
    x = float(x)
    if math.isnan(x):
        return "NaN"
    if math.isinf(x):
        return "Inf" if x > 0 else "-Inf"
    return f"{x:.3g}"


def printable(text: Any) -> str:
    """Makes a name safe to print: no control characters, no bad surrogates.

    Args:
        text: Any value; run names and variable paths come from files.

    Returns:
        The text with non-printable characters written as escapes.
    """
    out = []
    for ch in str(text):
        if ch.isprintable():
            out.append(ch)
        else:
            out.append(ch.encode("unicode_escape").decode("ascii"))
    return "".join(out).encode("utf-8", "backslashreplace").decode("utf-8")


def format_flag(flag: Flag | Mapping[str, Any], indent: str = "") -> str:
    """Writes a flag for a person: the one text form of the CLI and live warnings.

    Args:
        flag: A :class:`Flag` or its :meth:`Flag.to_json` form.
        indent: Put before each of the three lines. Defaults to ``""``.

    Returns:
        Three lines: ``SEVERITY kind  steps FIRST-LAST  LAYER``, the message,
        and ``Advice: …``; names made printable.
    """
    data = flag.to_json() if isinstance(flag, Flag) else flag
    where = f"  {printable(data['layer'])}" if data.get("layer") else ""
    head = (
        f"{data['severity'].upper():<8}{data['kind']}  steps "
        f"{data['first_step']}-{data['last_step']}{where}"
    )
    body = " " * 8
    return "\n".join(
        [
            indent + head,
            indent + body + printable(data["message"]),
            indent + body + "Advice: " + printable(data["advice"]),
        ]
    )

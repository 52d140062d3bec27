"""Names and summary metadata of the gradient-health data (no TensorFlow import).

Every summary the callback writes carries the plugin name ``gradient_health``, a
data class, and a JSON ``content`` that says what the series holds. The writer
(``callback.py``) and the readers (``reader.py``, the plugin, the CLI) share the
names below and nothing else.

Layout of a run's tags, all under :data:`TAG_PREFIX`:

* ``step/<stat>`` scalars, one point per logged optimizer step
  (:data:`STEP_SCALARS`).
* ``layer/<stat>`` float32 tensors of shape ``[n_variables]``, one per logged
  step (:data:`LAYER_STATS`); the content names the variables in order and
  (:data:`SPARSE_VARIABLES`) those whose gradient arrives as rows.
* ``window/<stat>`` the statistics over a window of steps (gradient variance
  over steps, average gradient magnitude), per variable as tensors and for the
  whole model as scalars (:data:`WINDOW_LAYER_STATS`, :data:`WINDOW_SCALARS`).
* ``slice/<name>/<stat>`` scalars for named parameter slices
  (:data:`SLICE_STATS`).
* ``loss_component/<name>`` scalars for the logged loss components.
* ``optimizer/<attribute>/<stat>`` scalars, one point per logged step, when
  more than one optimizer steps the model (a GAN's ``d_optimizer`` and
  ``g_optimizer``): the global norms over the variables each one updates
  (:data:`OPTIMIZER_STATS`).
* ``hessian/<stat>`` curvature scalars, ``hessian_layer/<stat>`` tensors,
  ``hessian_spectrum/density`` the spectral density of each curvature step.
* ``trajectory/projection`` float32 tensors: a random projection of the
  parameters.
"""

from __future__ import annotations

import json
from typing import Any

from tensorboard.compat.proto import summary_pb2

PLUGIN_NAME = "gradient_health"
"""The plugin name on every summary and the TensorBoard route prefix."""

CONTENT_VERSION = 1
"""Version of the JSON in ``PluginData.content``; bump on incompatible change."""

TAG_PREFIX = "gradient_health/"

# Per-step scalars (whole model), keyed by the stat name used in the tag.
STEP_SCALARS = {
    "loss": "training loss of the batch at this step (unscaled)",
    "grad_norm": "L2 norm of the whole gradient",
    "param_norm": "L2 norm of all trainable parameters after the step",
    "update_norm": "L2 norm of the parameter change made by the step",
    "update_ratio": "update_norm / param_norm",
    "learning_rate": "the optimizer's learning rate at this step",
    "nonfinite_grads": "NaN/Inf gradient entries since the previous logged step",
    "nonfinite_loss": "steps with a NaN/Inf loss since the previous logged step",
    "skipped_steps": "loss-scale overflow steps skipped since the previous log",
    "loss_scale": "the dynamic loss scale (mixed precision only)",
}

# Per-step scalars of each optimizer that steps the model, when there are several,
# over the variables it updated at the step.
OPTIMIZER_STATS = {
    "grad_norm": "L2 norm of the gradient this optimizer applied",
    "param_norm": "L2 norm of the parameters this optimizer updated, after the step",
    "update_norm": "L2 norm of the parameter change this optimizer made",
    "update_ratio": "update_norm / param_norm of this optimizer's parameters",
}

# Per-step tensors of shape [n_variables].
LAYER_STATS = {
    "grad_norm": "L2 norm of the variable's gradient",
    "grad_mean_abs": "mean |g| over the variable's entries",
    "param_norm": "L2 norm of the variable after the step",
    "update_norm": "L2 norm of the variable's change made by the step",
    "update_ratio": "update_norm / param_norm of the variable",
    "zero_fraction": "share of the gradient entries that are exactly 0",
    "nonfinite_grads": "NaN/Inf gradient entries since the previous logged step",
}

# Window statistics per variable, tensors of shape [n_variables].
WINDOW_LAYER_STATS = {
    "grad_variance": (
        "per-entry variance of the gradient over the window's steps, averaged "
        "over the variable's entries"
    ),
    "grad_mean_abs": "mean |g| over the window's steps and the variable's entries",
    "zero_fraction": (
        "share of the variable's entries whose gradient was exactly 0 at every "
        "step of the window (an entry touched at some step counts as non-zero)"
    ),
}

SPARSE_VARIABLES = "sparse_variables"
"""Content key of the ``layer/*`` tags: the paths of the variables whose gradient
arrived as ``tf.IndexedSlices`` (rows read with a gather, e.g. a lookup table)."""

# Window statistics of the whole model, scalars.
WINDOW_SCALARS = {
    "grad_variance": "per-entry gradient variance over the window, averaged",
    "grad_mean_abs": "mean |g| over the window's steps and all entries",
    "noise_scale": "gradient noise scale B_simple = B tr(Sigma_B) / |G|^2",
    "grad_snr": "gradient signal-to-noise ratio |G|^2 / tr(Sigma_B)",
    "window_steps": "number of optimizer steps in the window",
}

SLICE_STATS = {
    "grad_mean_abs": "mean |g| over the window's steps and the slice's entries",
    "grad_variance": "per-entry gradient variance over the window, averaged",
}

# Curvature of the whole model; definitions and tolerances in spectrum.py.
HESSIAN_SCALARS = {
    "min_ratio": (
        "minimal ratio: share of Hessian eigenvalues above n*eps*max|lambda| "
        "(exact) or spectral-density mass above 0 (Lanczos)"
    ),
    "min_ratio_low": "lower end of the minimal ratio's range: share surely positive",
    "min_ratio_high": "upper end of the minimal ratio's range: share not surely <0",
    "zero_ratio": "share within n*eps*max|lambda| of zero (exact; NaN on Lanczos)",
    "negative_ratio": (
        "share of eigenvalues below -n*eps*max|lambda| (exact) or density mass "
        "below 0 (Lanczos)"
    ),
    "zero_threshold": (
        "width within which a sign is not told: n*eps*max|lambda| (exact) or "
        "the density's broadening sigma (Lanczos)"
    ),
    "near_zero_ratio": "share with |lambda| <= resolution * max|lambda|",
    "band_min_ratio": "share of positive eigenvalues among those outside the band",
    "band_negative_ratio": "share of eigenvalues below -resolution * max|lambda|",
    "top_eigenvalue": "largest Hessian eigenvalue (sharpness)",
    "trace": "Hessian trace (exact, or Hutchinson estimate on Lanczos)",
    "tolerance": "bound on the error of min_ratio (0 when exact)",
    "probe_loss": "loss on the probe batch where the Hessian was taken",
    "grad_norm": "gradient norm on the probe batch",
}

HESSIAN_LAYER_STATS = {
    "min_ratio": "minimal ratio of the variable's diagonal Hessian block",
    "zero_ratio": "share of the block's eigenvalues within n*eps*max|lambda|",
    "top_eigenvalue": "largest eigenvalue of the variable's Hessian block",
}

HESSIAN_SPECTRUM_TAG = TAG_PREFIX + "hessian_spectrum/density"
"""Float32 tensor ``[1 + 3 * points]``: the density's broadening, then the
eigenvalue grid, the spectral density and the exact eigenvalue histogram (share
per bin; NaN on the Lanczos path); ``points`` is in the content."""

HESSIAN_SPECTRUM_TEXT = (
    "Hessian spectral density: grid, density (Gaussian broadening), exact histogram"
)

TRAJECTORY_TAG = TAG_PREFIX + "trajectory/projection"

TENSOR_FAMILIES = (
    "layer/",
    "window_layer/",
    "hessian_layer/",
    "hessian_spectrum/",
    "trajectory/",
    "block/",
)
"""Key prefixes of the families written as tensors; every other one is scalar."""

WINDOW_FAMILIES = ("window/", "window_layer/", "slice/")
"""Key prefixes of the families written when a window of steps closes; the
others are written per logged step (or per curvature probe, per snapshot)."""


def tag_key(tag: str) -> str | None:
    """Returns a tag's key: the tag without :data:`TAG_PREFIX`.

    Args:
        tag: A summary tag, e.g. ``"gradient_health/step/loss"``.

    Returns:
        The key, e.g. ``"step/loss"``; ``None`` for a tag of another plugin.
    """
    if not tag.startswith(TAG_PREFIX):
        return None
    return tag[len(TAG_PREFIX) :]


def key_tag(key: str) -> str:
    """Returns the tag of a key: :data:`TAG_PREFIX` + ``key``.

    Args:
        key: A key, e.g. ``"layer/grad_norm"``.

    Returns:
        The tag, e.g. ``"gradient_health/layer/grad_norm"``.
    """
    return TAG_PREFIX + key


def is_tensor_key(key: str) -> bool:
    """Whether a key's series is written as tensors (else as scalars).

    Args:
        key: A key without the prefix, e.g. ``"window_layer/grad_variance"``.

    Returns:
        True for the :data:`TENSOR_FAMILIES`.
    """
    return key.startswith(TENSOR_FAMILIES)


def is_window_key(key: str) -> bool:
    """Whether a key's series is written per window of steps.

    Args:
        key: A key without the prefix, e.g. ``"slice/lo/grad_variance"``.

    Returns:
        True for the :data:`WINDOW_FAMILIES`.
    """
    return key.startswith(WINDOW_FAMILIES)


def step_tag(stat: str) -> str:
    """Returns the tag of a per-step whole-model scalar, e.g. ``step/loss``."""
    return f"{TAG_PREFIX}step/{stat}"


def layer_tag(stat: str) -> str:
    """Returns the tag of a per-step per-variable tensor, e.g. ``layer/grad_norm``."""
    return f"{TAG_PREFIX}layer/{stat}"


def window_tag(stat: str) -> str:
    """Returns the tag of a whole-model window scalar."""
    return f"{TAG_PREFIX}window/{stat}"


def window_layer_tag(stat: str) -> str:
    """Returns the tag of a per-variable window tensor."""
    return f"{TAG_PREFIX}window_layer/{stat}"


def slice_tag(name: str, stat: str) -> str:
    """Returns the tag of a named slice's window scalar."""
    return f"{TAG_PREFIX}slice/{name}/{stat}"


def optimizer_tag(name: str, stat: str) -> str:
    """Returns the tag of one optimizer's per-step scalar.

    Args:
        name: The optimizer's attribute on the model, e.g. ``"d_optimizer"``.
        stat: One of :data:`OPTIMIZER_STATS`.

    Returns:
        E.g. ``"gradient_health/optimizer/d_optimizer/grad_norm"``.
    """
    return f"{TAG_PREFIX}optimizer/{name}/{stat}"


def loss_component_tag(name: str) -> str:
    """Returns the tag of a loss component scalar."""
    return f"{TAG_PREFIX}loss_component/{name}"


def hessian_tag(stat: str) -> str:
    """Returns the tag of a whole-model curvature scalar."""
    return f"{TAG_PREFIX}hessian/{stat}"


def hessian_layer_tag(stat: str) -> str:
    """Returns the tag of a per-variable curvature tensor."""
    return f"{TAG_PREFIX}hessian_layer/{stat}"


def create_summary_metadata(
    description: str, content: dict[str, Any] | None = None, *, tensor: bool = False
) -> summary_pb2.SummaryMetadata:
    """Builds the summary metadata of one gradient-health tag.

    Args:
        description: A sentence saying what the series holds.
        content: JSON-serialisable facts about the series (e.g. the variable
            names of a per-variable tensor). Defaults to ``None``: none.
        tensor: Whether the values are tensors rather than scalars. Defaults to
            ``False``.

    Returns:
        A ``SummaryMetadata`` proto with the plugin name, the JSON content and
        the data class set (the Rust data server drops summaries without one).
    """
    payload = {"version": CONTENT_VERSION, **(content or {})}
    return summary_pb2.SummaryMetadata(
        summary_description=description,
        plugin_data=summary_pb2.SummaryMetadata.PluginData(
            plugin_name=PLUGIN_NAME,
            content=json.dumps(payload, sort_keys=True).encode("utf-8"),
        ),
        data_class=(
            summary_pb2.DATA_CLASS_TENSOR if tensor else summary_pb2.DATA_CLASS_SCALAR
        ),
    )


def parse_plugin_content(content: bytes) -> dict[str, Any]:
    """Parses the JSON ``content`` of a gradient-health summary.

    Args:
        content: The ``PluginData.content`` bytes of the summary.

    Returns:
        The decoded object; an empty dict when the content is empty.

    Raises:
        ValueError: When the content is not a JSON object or its version is
            newer than this package understands.
    """
    if not content:
        return {}
    try:
        payload = json.loads(content.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"gradient_health content is not JSON: {err}") from err
    if not isinstance(payload, dict):
        raise ValueError("gradient_health content is not a JSON object")
    if int(payload.get("version", 0)) > CONTENT_VERSION:
        raise ValueError(
            f"gradient_health content version {payload['version']} is newer than "
            f"{CONTENT_VERSION}; upgrade tb-gradplugin"
        )
    return payload

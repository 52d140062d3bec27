"""The adaptive default of ``update_freq``: cheap on tiny steps, every step on big.

Writing one logged step costs the writer thread ~4 µs a series on the host
(reducing and encoding; 50-75 µs for the ~17 series of the 16 k MLP, measured by
``benchmarks/writer_cost.py``) and some bytes on disk. The default logs every N
steps, N the smallest of 1, 2, 5, 10, 20, 50, ... that keeps that work under
:data:`EVENT_SHARE` of the measured step time and the event file under
:data:`DISK_BYTES_PER_STEP` per step. It is decided once, from the first block
of steps.
"""

from __future__ import annotations

EVENT_SECONDS = 4e-6  # one series of a logged step on the host (2 CPU cores).
EVENT_SHARE = 0.01  # events may take this share of the step time.
DISK_BYTES_PER_STEP = 1000.0  # a 1,000,000-step run stays under ~1 GB.
_FREQ_LADDER = (1, 2, 5)

# Bytes of one series of a logged step in the event file, metadata excluded (it
# goes with a tag's first value only): measured when each series was an event of
# its own; one event a step now takes ~1 KB for the 16 k MLP's ~17 series, so
# these bound the disk from above.
SCALAR_EVENT_BYTES = 80
TENSOR_EVENT_BYTES = 90


def adaptive_update_freq(
    step_seconds: float | None, events_per_log: int, bytes_per_log: float
) -> int:
    """The default ``update_freq``: cheap on tiny steps, every step on big ones.

    Writing one logged step costs ``events_per_log`` events of ~4 µs each on
    the host and ``bytes_per_log`` bytes on disk; the frequency is the
    smallest of 1, 2, 5, 10, 20, 50, ... that keeps the events under 1 % of
    the step time and the disk under :data:`DISK_BYTES_PER_STEP` per step.

    Args:
        step_seconds: Measured seconds per optimizer step, or ``None`` when
            not measured (then only the disk bound applies).
        events_per_log: Summary events per logged step.
        bytes_per_log: Event-file bytes per logged step.

    Returns:
        The number of steps between logged steps.

    Example:
        >>> adaptive_update_freq(0.001, 17, 1500.0)
        10
        >>> adaptive_update_freq(0.5, 17, 900.0)
        1
    """
    need = bytes_per_log / DISK_BYTES_PER_STEP
    if step_seconds is not None and step_seconds > 0:
        need = max(need, events_per_log * EVENT_SECONDS / (EVENT_SHARE * step_seconds))
    scale = 1
    while True:
        for base in _FREQ_LADDER:
            if base * scale >= need:
                return base * scale
        scale *= 10


def update_freq_for(
    step_seconds: float | None, scalars: int, tensors: int, num_variables: int
) -> int:
    """The adaptive ``update_freq`` of a logged step of scalars and layer tensors.

    Args:
        step_seconds: Measured seconds per step, or ``None``.
        scalars: Scalar events per logged step.
        tensors: ``[num_variables]`` tensor events per logged step.
        num_variables: Entries of each tensor.

    Returns:
        The number of steps between logged steps.
    """
    size = scalars * SCALAR_EVENT_BYTES + tensors * (
        TENSOR_EVENT_BYTES + 4 * num_variables
    )
    return adaptive_update_freq(step_seconds, scalars + tensors, size)

"""Window statistics of the gradient, finished on the host from the step's sums.

The per-step sums of a window (:mod:`tb_gradplugin.stats`, reduced in the step)
and the reduced running sum of the gradient give the per-entry variance of the
gradient over the window's steps, averaged over entries, exactly
(:func:`window_statistics`):

    mean_i Var_t(g_ti) = (1/(n P)) sum_t |g_t|^2 - (1/P) |g_bar|^2,
    g_bar = (1/n) sum_t g_t,

and from the same sums the gradient noise scale and SNR of McCandlish et al.
2018 ("An Empirical Model of Large-Batch Training", eq. 2.8 and appendix A).
numpy only.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from tb_gradplugin.stats import Layout


@dataclasses.dataclass
class WindowSums:
    """Per-step sums accumulated over the steps of the open window (float64).

    Attributes:
        count: Steps in the window (skipped overflow steps excluded).
        grad_sq: Per variable, ``Σ_t Σ g²`` ``[V]``.
        grad_abs: Per variable, ``Σ_t Σ |g|`` ``[V]``.
        slice_sq: Per slice, ``Σ_t Σ g²`` ``[S]``.
        slice_abs: Per slice, ``Σ_t Σ |g|`` ``[S]``.
        batch: Examples over the window's steps.
        absent: Per variable, whether some step of the window did not update
            it ``[V]`` (bool); such a variable has no window statistics.
    """

    count: float
    grad_sq: np.ndarray
    grad_abs: np.ndarray
    slice_sq: np.ndarray
    slice_abs: np.ndarray
    batch: float
    absent: np.ndarray | None = None

    @classmethod
    def empty(cls, layout: Layout) -> WindowSums:
        """A window with no step yet."""
        v, s = layout.num_variables, len(layout.slices)
        return cls(0.0, np.zeros(v), np.zeros(v), np.zeros(s), np.zeros(s), 0.0)

    def add_rows(
        self, grad_sq, grad_abs, slice_sq, slice_abs, batch, absent=None
    ) -> None:
        """Adds the sums of some steps, one step after the other.

        Summed one row after the other (``cumsum``), as adding each step to
        the sums would: the window variance subtracts two close sums, so the
        rounding stays that of a step at a time.

        Args:
            grad_sq: ``[k, V]`` per-step ``Σ g²``.
            grad_abs: ``[k, V]`` per-step ``Σ |g|``.
            slice_sq: ``[k, S]`` per-step slice ``Σ g²``.
            slice_abs: ``[k, S]`` per-step slice ``Σ |g|``.
            batch: ``[k]`` examples per step.
            absent: ``[k, V]`` the variables each step did not update.
                Defaults to ``None``: every one updated.
        """
        batch = np.atleast_1d(np.asarray(batch, np.float64))
        if not len(batch):
            return

        def added(total, rows):
            return np.cumsum(np.vstack([total, rows]), axis=0)[-1]

        self.grad_sq = added(self.grad_sq, grad_sq)
        self.grad_abs = added(self.grad_abs, grad_abs)
        self.slice_sq = added(self.slice_sq, slice_sq)
        self.slice_abs = added(self.slice_abs, slice_abs)
        self.batch = float(added([self.batch], batch[:, None])[0])
        self.count += float(len(batch))
        if absent is not None:
            absent = np.asarray(absent, bool).any(axis=0)
            self.absent = absent if self.absent is None else self.absent | absent


def safe_ratio(num, den) -> np.ndarray:
    """``num / den`` with 0 where ``den`` is 0 (a zero-size or all-zero variable)."""
    num, den = np.broadcast_arrays(np.asarray(num, np.float64), den)
    out = np.zeros(num.shape)
    np.divide(num, den, out=out, where=den != 0)
    return out


def window_statistics(
    layout: Layout,
    sums: WindowSums,
    running_sq: np.ndarray,
    running_zero: np.ndarray,
    slice_running_sq: np.ndarray,
) -> dict[str, np.ndarray]:
    """The statistics of one closed window, from its sums.

    Args:
        layout: The variables' layout.
        sums: The per-step sums over the window's ``n`` steps.
        running_sq: Per variable, ``|S|²`` of the running gradient sum
            ``S = Σ_t g_t`` ``[V]``.
        running_zero: Per variable, entries of ``S`` exactly 0 ``[V]``.
        slice_running_sq: Per slice, ``|S|²`` over the slice ``[S]``.

    Returns:
        Per variable (``[V]``): ``layer_grad_variance`` (per-entry variance over
        the window's steps, averaged over the variable's entries),
        ``layer_grad_mean_abs``, ``layer_zero_fraction`` (share of entries
        whose gradient was exactly 0 at every step). Whole model (scalars):
        ``grad_variance``, ``grad_mean_abs``, ``noise_scale`` (B_simple of
        McCandlish et al. 2018, ``B tr(Σ) / |G|²`` with ``B`` the mean examples
        per step, ``tr(Σ)`` the summed per-entry variance and ``G`` the window's
        mean gradient), ``grad_snr`` (``|G|² / tr(Σ)``), ``window_steps``. Per
        slice (``[S]``): ``slice_grad_variance``, ``slice_grad_mean_abs``.
    """
    n = max(sums.count, 1.0)
    # Σ_entries Var_t = (1/n) Σ_t |g_t|² - |S/n|², clamped against rounding.
    trace = np.maximum(sums.grad_sq / n - np.asarray(running_sq) / n**2, 0.0)
    slice_trace = np.maximum(
        sums.slice_sq / n - np.asarray(slice_running_sq) / n**2, 0.0
    )
    total = float(max(layout.size, 1))
    # A variable absent at a step of the window (not updated then) has no
    # window statistics: its running sum of zeros is no "always zero" gradient.
    # A NaN gradient of an updated variable makes the whole-model figures NaN.
    absent = (
        np.zeros(layout.num_variables, bool) if sums.absent is None else sums.absent
    )
    tr_sigma = float(np.sum(trace[~absent]))
    g_sq = float(np.sum(running_sq)) / n**2
    return {
        "layer_grad_variance": trace / layout.sizes_array,
        "layer_grad_mean_abs": sums.grad_abs / (n * layout.sizes_array),
        "layer_zero_fraction": np.where(
            absent, np.nan, np.asarray(running_zero) / layout.sizes_array
        ),
        "grad_variance": np.float64(tr_sigma / total),
        "grad_mean_abs": np.float64(np.sum(sums.grad_abs[~absent]) / (n * total)),
        "noise_scale": safe_ratio(sums.batch / n * tr_sigma, g_sq),
        "grad_snr": safe_ratio(g_sq, tr_sigma),
        "window_steps": np.float64(sums.count),
        "slice_grad_variance": slice_trace / np.maximum(layout.slice_sizes, 1.0),
        "slice_grad_mean_abs": sums.slice_abs
        / (n * np.maximum(layout.slice_sizes, 1.0)),
    }

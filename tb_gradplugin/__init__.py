"""Gradient Health for TensorBoard.

The public API is :class:`GradientHealthCallback` (needs TensorFlow and Keras)
and ``__version__``. The callback is imported lazily so that TensorBoard can
load the plugin side of this package without TensorFlow.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tb_gradplugin.version import __version__

if TYPE_CHECKING:
    from tb_gradplugin.callback import GradientHealthCallback

__all__ = ["GradientHealthCallback", "__version__"]


def __getattr__(name: str) -> Any:
    if name == "GradientHealthCallback":
        from tb_gradplugin.callback import GradientHealthCallback

        return GradientHealthCallback
    raise AttributeError(f"module 'tb_gradplugin' has no attribute {name!r}")

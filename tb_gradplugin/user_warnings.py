"""The callback's warnings, located at the user's own line (their ``fit`` call).

A warning raised in a Keras callback is many frames below the line that caused
it: located with a fixed ``stacklevel`` it names a line of this package (or of
Keras) and prints that line's source under the message, which reads like a
fault of the package. :func:`warn` names the first frame outside this package,
Keras and TensorFlow instead (``warnings.warn``'s ``skip_file_prefixes`` does
this from Python 3.12). Imports no TensorFlow.
"""

from __future__ import annotations

import os
import sys
import warnings

_INTERNAL = ("tb_gradplugin", "keras", "tensorflow", "tf_keras")


def _internal_prefixes() -> tuple[str, ...]:
    """The folders of this package and of the frameworks already imported."""
    prefixes = []
    for name in _INTERNAL:
        module = sys.modules.get(name)
        path = getattr(module, "__file__", None)
        if path:
            prefixes.append(os.path.dirname(os.path.abspath(path)) + os.sep)
    return tuple(prefixes)


def outside_stacklevel() -> int:
    """The ``stacklevel`` of the first frame outside this package and Keras.

    Returns:
        The level for a ``warnings.warn`` called in the function that calls
        this one (1 would be that function's line, 2 its caller's): the
        first of its callers outside this package, Keras and TensorFlow; 2
        when there is none (a callback run by a framework's own thread).
    """
    prefixes = _internal_prefixes()
    frame = sys._getframe(2)  # the caller of the function that asks
    level = 2
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(
        prefixes
    ):
        frame = frame.f_back
        level += 1
    return level if frame is not None else 2


def warn(message: str, category: type[Warning] = RuntimeWarning) -> None:
    """Warns, located at the first line outside this package, Keras and TensorFlow.

    Args:
        message: The warning's text.
        category: Its category. Defaults to ``RuntimeWarning``.

    Example:
        >>> import warnings
        >>> with warnings.catch_warnings(record=True) as caught:
        ...     warnings.simplefilter("always")
        ...     warn("GradientHealthCallback: example")
        >>> caught[0].category.__name__
        'RuntimeWarning'
    """
    warnings.warn(message, category, stacklevel=outside_stacklevel())

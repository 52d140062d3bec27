"""Runs Python code in a fresh interpreter where TensorFlow and Keras cannot load."""

from __future__ import annotations

import subprocess
import sys

_BLOCK = "import sys; sys.modules['tensorflow'] = None; sys.modules['keras'] = None;"


def run_without_tensorflow(code: str) -> str:
    """Runs ``code`` with TensorFlow and Keras blocked and returns its stdout.

    An import of either raises ``ImportError`` in the child, so the call fails
    when the code under test needs them.
    """
    done = subprocess.run(
        [sys.executable, "-c", _BLOCK + code],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout

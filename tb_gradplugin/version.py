"""The package version, kept apart so that setup.py can read it without imports."""

__version__ = "0.1.0"

"""Exception types raised at AnoMem's boundaries.

Every error a user can trigger with bad input derives from :class:`AnoMemError`, so the
CLI can turn it into a one-line message and exit code 2 instead of a traceback.
"""

from __future__ import annotations


class AnoMemError(Exception):
    """Base class for errors caused by user input (config, data, checkpoints)."""


class ConfigError(AnoMemError, ValueError):
    """A configuration value is missing, of the wrong type or out of range."""


class DataError(AnoMemError, ValueError):
    """Input images, labels or dataset files are missing, corrupt or inconsistent."""


class CheckpointError(AnoMemError):
    """A checkpoint file is missing, corrupt, unsafe or from an incompatible version."""


class NotFittedError(AnoMemError, RuntimeError):
    """A method that needs a fitted detector was called before ``fit``."""


class OutputError(AnoMemError, ValueError):
    """An output path would overwrite an input, a foreign file, or a run another process owns."""

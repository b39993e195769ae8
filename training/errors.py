"""Specific exceptions of the training side.

Every message names the file (and the column or setting) at fault, so that a researcher who
points an adapter at a differently laid out copy of a dataset sees at once what differs.
"""

from __future__ import annotations


class TrainingError(Exception):
    """Base class of every error raised by ``training``."""


class DatasetLayoutError(TrainingError, ValueError):
    """A dataset folder does not have the published layout an adapter expects."""


class ManifestError(TrainingError, ValueError):
    """A manifest CSV is malformed (missing column, bad value)."""


class LeakageError(TrainingError):
    """A patient or an identical image sits in more than one split."""

    def __init__(self, message: str, leaks: list[str]) -> None:
        super().__init__(message)
        self.leaks = leaks


class ConfigError(TrainingError, ValueError):
    """A run configuration (TOML) is missing a setting or has a bad value."""

"""Exception types of the node; each names the setting, file or UID at fault."""

from __future__ import annotations


class NodeError(Exception):
    """Base class of every error raised by the node."""


class ConfigError(NodeError, ValueError):
    """The TOML configuration is invalid (the message names the key)."""


class StoreError(NodeError, OSError):
    """The instance store could not write or read a file (disk full, permissions, ...)."""


class DiskFullError(StoreError):
    """Free space fell below ``[node].min_free_disk_mb``: new data is refused."""


class DatabaseError(NodeError):
    """The database rejected or could not complete a write."""


class InvalidInstanceError(NodeError, ValueError):
    """A received dataset cannot be accepted; ``status`` is the C-STORE failure status to return."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class DeliveryError(NodeError):
    """A C-STORE to a destination failed (association refused, failure status, network)."""

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


class ListenerStartError(NodeError):
    """The listener processes (``[node] listener_processes``) did not all start accepting."""


class NoNodeDataError(NodeError):
    """An operator command found no node database where the configuration points."""


class ModelsUnavailableError(NodeError):
    """The model bundles cannot be loaded at start-up (the message names the folder and the reason)."""


class ImageFailure(NodeError):
    """One image of a job cannot be analysed, for a reason that will not change on a retry.

    The job goes on with the study's other images and records this one's reason. ``stage`` says where
    it failed (``read``, ``analyse``, ``write``); the message carries no patient data (node.phi).
    """

    def __init__(self, sop_instance_uid: str, stage: str, reason: str) -> None:
        super().__init__(f"{sop_instance_uid}: {stage}: {reason}")
        self.sop_instance_uid, self.stage, self.reason = sop_instance_uid, stage, reason

    def reader_text(self) -> str:
        """The sentence the image's "not analysed" SR shows a reader: what failed, then the reason."""
        what = STAGE_SENTENCES.get(self.stage, f"it failed at stage {self.stage}")
        return f"Image not analysed by the AI: {what} ({self.reason})."


class TransientJobError(NodeError):
    """The job could not finish for a reason outside its images (database, store I/O, lease lost):
    the same attempt may succeed later, so the job is queued again with a backoff."""


IMAGE_STAGES = ("read", "decode", "analyse", "write", "store")
STAGE_SENTENCES = {
    "read": "its stored file could not be read",
    "decode": "its pixel data could not be decoded",
    "analyse": "the analysis failed",
    "write": "its result objects could not be written",
    "store": "its result objects could not be stored",
}


def parse_image_failures(note: str | None) -> list[dict[str, str]]:
    """The per-image lines of a job's note or error (``<uid>: <stage>: <reason>``, one per line)."""
    found = []
    for line in (note or "").splitlines():
        uid, _, rest = line.partition(": ")
        stage, _, reason = rest.partition(": ")
        if stage in IMAGE_STAGES and uid and reason:
            found.append({"sop_instance_uid": uid, "stage": stage, "reason": reason})
    return found

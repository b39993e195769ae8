"""Specific exception types of the AI side.

Callers (the node's worker, ``cxr-node analyze``, the trainers) catch these to turn a bad file or a
bad bundle into a clear message or a failed job, never a crash of the whole process.
"""

from __future__ import annotations


class PipelineError(Exception):
    """Base class of every error raised on purpose by ``pipelines``."""


class ImageDecodeError(PipelineError, ValueError):
    """An input file is not an image we can analyse; the message names the file and the reason."""


class BundleError(PipelineError):
    """A model bundle is missing, incomplete, corrupt (sha256 mismatch) or made for another task."""


class ModelRunError(PipelineError):
    """A model failed while running on one image (message names the image and the stage)."""

"""Refused instances counted where they are refused (C-STORE handler, STOW-RS), for /metrics.

Nothing is stored for a refused instance, so the database cannot count them: each receiving
process keeps its own tally, which the metrics endpoint of that process reports.
"""

from __future__ import annotations

import threading
from collections import Counter


class ReceiveOutcomes:
    """Refused instances by (protocol, status), counted in this process (nothing is stored for them)."""

    def __init__(self) -> None:
        self._counts: Counter[tuple[str, str]] = Counter()
        self._lock = threading.Lock()

    def refused(self, protocol: str, status: int) -> None:
        with self._lock:
            self._counts[(protocol, f"0x{status:04X}")] += 1

    def snapshot(self) -> dict[tuple[str, str], int]:
        with self._lock:
            return dict(self._counts)

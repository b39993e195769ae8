"""What a destination's sender answers for each result object it was given.

Kept apart from the outbox loop (``node.delivery``) so that every transport (C-STORE there,
STOW-RS in ``node.http.dicomweb_sender``) depends on this small contract and the loop can
import every transport at module level.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from node.repository import DeliveryFault, DueDelivery

# PS3.7 C.4.2.1.4 / PS3.4 B.2.3: "Refused: SOP Class not supported" (also STOW-RS's FailureReason).
SOP_CLASS_NOT_SUPPORTED = 0x0122


@dataclass(frozen=True)
class DeliveryFailure:
    """A failed attempt and its kind; a sender may also answer a plain string (transient)."""

    message: str
    fault: DeliveryFault = DeliveryFault.TRANSIENT


Outcome = str | DeliveryFailure | None


class Sender(Protocol):
    def send(self, items: Sequence[DueDelivery]) -> dict[int, Outcome]:
        """Send ``items``; map delivery id -> None (stored) or the failure (a message: transient)."""
        ...

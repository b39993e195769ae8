"""STOW-RS delivery (PS3.18 10.5, user agent side): result objects to a ``type = "dicomweb"`` destination.

Same outbox, backoff and failure reporting as C-STORE (node.delivery): the loop hands this
sender the due rows of its destination and records what it answers per row. Objects are sent
as stored (read from the store, written back by pydicom in their stored transfer syntax) with
dicomweb-client, grouped per study and posted to ``{url}/studies/{study}`` so that they land
in the source study. Authentication: HTTP basic (``username``/``password``) or a bearer
``token``; https is verified against ``tls_ca_certificates`` (empty: the system store), with
an optional client certificate.

Outcome per object, from the PS3.18 response (Referenced SOP Sequence / Failed SOP Sequence):
stored; failed with Failure Reason 0x0122 (SOP class not supported) -> refused at once (no
retry can succeed, ``cxr-node resend`` re-queues); anything else (connection, HTTP 4xx/5xx,
other failure reasons, an object the server does not mention) -> transient, retried with
backoff. dicomweb-client's own retries are off: the outbox owns the retry policy.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Sequence

import pydicom
import requests
from dicomweb_client.api import DICOMwebClient
from requests.auth import HTTPBasicAuth

from node.config import Destination, NodeConfig
from node.delivery_outcome import SOP_CLASS_NOT_SUPPORTED, DeliveryFailure, Outcome
from node.repository import DeliveryFault, DueDelivery
from node.store import InstanceStore

log = logging.getLogger("node.delivery.dicomweb")

MAX_REQUEST_BYTES = 64 * 2**20  # objects per STOW-RS request, by stored size


class StowRsSender:
    """Sends due deliveries of one DICOMweb destination by STOW-RS."""

    def __init__(self, destination: Destination, config: NodeConfig, store: InstanceStore) -> None:
        self.destination = destination
        self.store = store
        session = requests.Session()
        if destination.username or destination.password:
            session.auth = HTTPBasicAuth(destination.username, destination.password)
        # The [[destinations]] TLS keys (node.tls) apply to https as they do to DICOM TLS.
        ca, cert, key = (str(getattr(destination, k, "") or "")
                         for k in ("tls_ca_certificates", "tls_certificate", "tls_private_key"))
        if ca:
            session.verify = ca
        if cert and key:
            session.cert = (cert, key)
        headers = {"Authorization": f"Bearer {destination.token}"} if destination.token else None
        self.client = DICOMwebClient(destination.url.rstrip("/"), session=session, headers=headers,
                                     timeout=(10.0, config.node.network_timeout))
        self.client.set_http_retry_params(retry=False)

    @property
    def label(self) -> str:
        return f"destination {self.destination.name!r} ({self.destination.url})"

    def send(self, items: Sequence[DueDelivery]) -> dict[int, Outcome]:
        outcome: dict[int, Outcome] = {}
        by_study: dict[str, list[DueDelivery]] = defaultdict(list)
        for item in items:
            by_study[item.instance.study_instance_uid].append(item)
        for study, group in by_study.items():
            for chunk in _chunks(group):
                outcome.update(self._send_study(study, chunk))
        return outcome

    def _send_study(self, study: str, items: list[DueDelivery]) -> dict[int, Outcome]:
        outcome: dict[int, Outcome] = {}
        datasets = []
        for item in items:
            path = self.store.path(item.instance.path)
            try:
                datasets.append(pydicom.dcmread(path))
            except (OSError, pydicom.errors.InvalidDicomError) as exc:
                outcome[item.id] = f"cannot read {path}: {exc}"
        sending = [i for i in items if i.id not in outcome]
        if not sending:
            return outcome
        answer: pydicom.Dataset | None
        try:
            answer = self.client.store_instances(datasets, study_instance_uid=study)
        except requests.HTTPError as exc:
            answer = _response_dataset(exc.response)
            if answer is None:
                status = exc.response.status_code if exc.response is not None else "?"
                message = f"STOW-RS to {self.label}: HTTP {status}"
                outcome.update({i.id: message for i in sending})
                return outcome
        except requests.RequestException as exc:
            message = f"STOW-RS to {self.label}: {exc.__class__.__name__}: {exc}"
            outcome.update({i.id: message for i in sending})
            return outcome
        outcome.update(self._read_answer(answer, sending))
        return outcome

    def _read_answer(self, answer: pydicom.Dataset, items: list[DueDelivery]) -> dict[int, Outcome]:
        """Per object: in the Referenced SOP Sequence -> stored; in the Failed SOP Sequence -> its reason."""
        stored = {str(i.get("ReferencedSOPInstanceUID", "")) for i in answer.get("ReferencedSOPSequence", [])}
        failed = {str(i.get("ReferencedSOPInstanceUID", "")): int(i.get("FailureReason", 0x0110))
                  for i in answer.get("FailedSOPSequence", [])}
        outcome: dict[int, Outcome] = {}
        for item in items:
            uid = item.instance.sop_instance_uid
            if uid in failed:
                reason = failed[uid]
                message = f"STOW-RS to {self.label}: failure reason 0x{reason:04X} for {uid}"
                refused = reason == SOP_CLASS_NOT_SUPPORTED
                fault = DeliveryFault.REFUSED if refused else DeliveryFault.TRANSIENT
                outcome[item.id] = DeliveryFailure(message, fault)
            elif uid in stored:
                outcome[item.id] = None
            else:
                outcome[item.id] = f"STOW-RS to {self.label}: the response does not list {uid}"
        return outcome


def _response_dataset(response: requests.Response | None) -> pydicom.Dataset | None:
    """The Store Instances Response of a 4xx answer (409 lists the failures), when it has one."""
    if response is None or not response.content:
        return None
    try:
        return pydicom.Dataset.from_json(response.json())
    except ValueError:
        return None


def _chunks(items: list[DueDelivery]) -> list[list[DueDelivery]]:
    chunks: list[list[DueDelivery]] = [[]]
    size = 0
    for item in items:
        if chunks[-1] and size + item.instance.size_bytes > MAX_REQUEST_BYTES:
            chunks.append([])
            size = 0
        chunks[-1].append(item)
        size += item.instance.size_bytes
    return chunks

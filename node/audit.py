"""The audit trail: one structured record per security-relevant event, after PS3.15 Annex A.5.

Records carry the fields of the DICOM Audit Message schema (PS3.15 A.5.1, after RFC 3881):
Event Identification (EventID, EventActionCode, EventDateTime, EventOutcomeIndicator,
EventTypeCode), Active Participants (UserID = AE title, AlternativeUserID ``AETITLES=``,
UserIsRequestor, NetworkAccessPointID and its type, RoleIDCode), the Audit Source, and
Participant Objects (Study Instance UIDs with their SOP classes and instance UIDs,
PS3.15 A.5.2.1). They are written as one JSON object per line, in snake_case, to
``<data_dir>/audit/audit.jsonl`` (``[audit] path``), and optionally to syslog.

What is audited (event codes from PS3.16 CID 400/401):

=====================================  =============================================
association accepted / rejected        110113 Security Alert, type 110126 Node Authentication
TLS handshake refused on the listener  110113 Security Alert, type 110126 Node Authentication
instances received                     110104 DICOM Instances Transferred, action C (U: resent)
result delivered (or failed)           110104 DICOM Instances Transferred, action R
``cxr-node resend``                    110102 Begin Transferring DICOM Instances, action E
study removed (``purge``, retention)   110105 DICOM Study Deleted, action D
=====================================  =============================================

Received instances are recorded per association (or STOW-RS request) and study, as the DICOM
Instances Transferred message describes a transfer (PS3.15 A.5.3.4): one record when the
association or request ends, the peer moves on to another study, or :data:`RECEIVED_PER_RECORD`
instances have gathered; a refused instance gets its own record with its status and reason.

Deliberate deviation: the schema's Patient participant object (PS3.15 A.5.2.1, Patient ID
and name) is never written. The node's rule is that patient names, IDs and birth dates appear
in no log, and the Study Instance UID identifies the study for anyone allowed to look it up in
the PACS. Builders take UIDs, AE titles, hosts and counts only, and a record with a field
named like a patient attribute is refused (:data:`node.logs.FORBIDDEN_FIELDS`).
"""

from __future__ import annotations

import datetime
import getpass
import ipaddress
import json
import logging
import logging.handlers
import os
import socket
import threading
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import Enum, IntEnum
from pathlib import Path
from typing import Any

from node.config import NodeConfig
from node.errors import ConfigError
from node.logs import FORBIDDEN_FIELDS, log_event
from node.tls import TlsPeer

log = logging.getLogger("node.audit")

# The most received instances one record lists (a long association is recorded in parts).
RECEIVED_PER_RECORD = 500
SYSLOG_FACILITIES = ("auth", "authpriv", "daemon", "local0", "local1", "local2", "local3", "local4",
                     "local5", "local6", "local7", "user")


@dataclass(frozen=True)
class Code:
    """A coded concept (PS3.3 8.8): value, scheme, meaning."""

    value: str
    meaning: str
    scheme: str = "DCM"

    def as_dict(self) -> dict[str, str]:
        return {"code": self.value, "scheme": self.scheme, "meaning": self.meaning}


class AuditEvent(Enum):
    """EventID (PS3.16 CID 400 Audit Event ID) with the short name used in the ``event`` field."""

    BEGIN_TRANSFERRING = Code("110102", "Begin Transferring DICOM Instances")
    INSTANCES_TRANSFERRED = Code("110104", "DICOM Instances Transferred")
    STUDY_DELETED = Code("110105", "DICOM Study Deleted")
    SECURITY_ALERT = Code("110113", "Security Alert")

    @property
    def slug(self) -> str:
        return self.name.lower().replace("_", "-")


NODE_AUTHENTICATION = Code("110126", "Node Authentication")  # CID 401 Security Alert type
SOURCE_ROLE = Code("110153", "Source Role ID")  # CID 402 Audit Active Participant Role ID
DESTINATION_ROLE = Code("110152", "Destination Role ID")
APPLICATION_ROLE = Code("110150", "Application")
LAUNCHER_ROLE = Code("110151", "Application Launcher")
STUDY_UID_TYPE = Code("110180", "Study Instance UID")  # CID 404 participant object ID type


class Action(Enum):
    """EventActionCode (PS3.15 A.5.1)."""

    CREATE = "C"
    READ = "R"
    UPDATE = "U"
    DELETE = "D"
    EXECUTE = "E"


class Outcome(IntEnum):
    """EventOutcomeIndicator (PS3.15 A.5.1, RFC 3881)."""

    SUCCESS = 0
    MINOR_FAILURE = 4
    SERIOUS_FAILURE = 8
    MAJOR_FAILURE = 12


@dataclass(frozen=True)
class Participant:
    """An ActiveParticipant: a DICOM AE (UserID = AE title) or a person running a command."""

    user_id: str
    host: str
    requestor: bool
    role: Code
    ae_title: bool = True  # False: user_id is an operating-system user

    def as_dict(self) -> dict[str, Any]:
        try:
            ipaddress.ip_address(self.host)
            access_point_type = "2"  # IP address
        except ValueError:
            access_point_type = "1"  # machine name
        return {
            "user_id": self.user_id,
            "alternative_user_id": f"AETITLES={self.user_id}" if self.ae_title else "",
            "user_is_requestor": self.requestor,
            "network_access_point_id": self.host,
            "network_access_point_type_code": access_point_type if self.host else "",
            "role_id_code": self.role.as_dict(),
        }


@dataclass(frozen=True)
class InstanceRef:
    """One object the event touched, by UIDs only."""

    study_instance_uid: str
    sop_class_uid: str
    sop_instance_uid: str


@dataclass(frozen=True)
class AuditMessage:
    event: AuditEvent
    action: Action
    outcome: Outcome
    participants: tuple[Participant, ...]
    description: str = ""  # EventOutcomeDescription: why it failed
    event_type: Code | None = None
    instances: tuple[InstanceRef, ...] = ()
    studies: tuple[str, ...] = ()  # studies named without their instances (e.g. deleted)
    tls: TlsPeer | None = None
    transport: str = ""  # "tls" / "tcp" for network events, "" otherwise
    detail: Mapping[str, str | int | float | bool] = field(default_factory=dict)

    def record(self, audit_source: str, now: datetime.datetime | None = None) -> dict[str, Any]:
        """The JSON object of one audit line."""
        bad = FORBIDDEN_FIELDS.intersection(k.lower() for k in self.detail)
        if bad:
            raise ValueError(f"refusing to audit patient-identifying field(s) {sorted(bad)}")
        when = now or datetime.datetime.now(datetime.UTC)
        out: dict[str, Any] = {
            "event_date_time": when.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "event": self.event.slug,
            "event_id": self.event.value.as_dict(),
            "event_action_code": self.action.value,
            "event_outcome_indicator": int(self.outcome),
            "event_outcome_description": self.description,
            "event_type_code": [self.event_type.as_dict()] if self.event_type else [],
            "active_participants": [p.as_dict() for p in self.participants],
            "audit_source": {"audit_source_id": audit_source, "audit_source_type_code": "4"},
            "participant_objects": _participant_objects(self.instances, self.studies),
        }
        if self.transport:
            out["transport"] = self.transport
        if self.tls is not None:
            out["tls"] = {"version": self.tls.version, "cipher": self.tls.cipher,
                          "peer_certificate_subject": self.tls.subject}
        if self.detail:
            out["detail"] = dict(self.detail)
        return out


def _participant_objects(instances: Iterable[InstanceRef], studies: Iterable[str]) -> list[dict[str, Any]]:
    """Participant Objects of type 2 (system object), role 3 (report), ID type Study Instance
    UID, with their SOP classes and instances (PS3.15 A.5.2.1 "Study" object)."""
    by_study: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for ref in instances:
        by_study[ref.study_instance_uid][ref.sop_class_uid].append(ref.sop_instance_uid)
    for study in studies:
        by_study.setdefault(study, defaultdict(list))
    return [
        {
            "participant_object_id": study,
            "participant_object_type_code": 2,
            "participant_object_type_code_role": 3,
            "participant_object_id_type_code": STUDY_UID_TYPE.as_dict(),
            "sop_classes": [
                {"uid": sop_class, "number_of_instances": len(uids), "instance_uids": uids}
                for sop_class, uids in classes.items()
            ],
        }
        for study, classes in by_study.items()
    ]


# -- builders: the only way the node makes audit messages -------------------------------------
def _transport(tls: TlsPeer | None, over_tls: bool) -> str:
    return "tls" if over_tls or tls is not None else "tcp"


def association(
    *,
    accepted: bool,
    calling_aet: str,
    host: str,
    node_aet: str,
    node_host: str,
    over_tls: bool,
    tls: TlsPeer | None = None,
    reason: str = "",
) -> AuditMessage:
    """An association request answered (accepted, or rejected with ``reason``)."""
    return AuditMessage(
        event=AuditEvent.SECURITY_ALERT,
        event_type=NODE_AUTHENTICATION,
        action=Action.EXECUTE,
        outcome=Outcome.SUCCESS if accepted else Outcome.MINOR_FAILURE,
        description="association accepted" if accepted else reason,
        participants=(
            Participant(calling_aet, host, True, SOURCE_ROLE),
            Participant(node_aet, node_host, False, DESTINATION_ROLE),
        ),
        tls=tls,
        transport=_transport(tls, over_tls),
    )


def tls_refused(*, host: str, node_aet: str, node_host: str, reason: str) -> AuditMessage:
    """A connection to the TLS port whose handshake failed (no AE title is known yet)."""
    return AuditMessage(
        event=AuditEvent.SECURITY_ALERT,
        event_type=NODE_AUTHENTICATION,
        action=Action.EXECUTE,
        outcome=Outcome.MINOR_FAILURE,
        description=reason,
        participants=(
            Participant("", host, True, SOURCE_ROLE, ae_title=False),
            Participant(node_aet, node_host, False, DESTINATION_ROLE),
        ),
        transport="tls",
    )


def instances_received(
    *,
    calling_aet: str,
    host: str,
    node_aet: str,
    node_host: str,
    instances: Iterable[InstanceRef],
    status: int,
    over_tls: bool,
    duplicate: bool = False,
    reason: str = "",
) -> AuditMessage:
    """Instances of one study received from one peer: stored (action C, or U for instances the
    node already held) or refused with their DIMSE status (one refused instance per record, with
    its reason)."""
    return AuditMessage(
        event=AuditEvent.INSTANCES_TRANSFERRED,
        action=Action.UPDATE if duplicate else Action.CREATE,
        outcome=Outcome.SUCCESS if status == 0 else Outcome.MINOR_FAILURE,
        description=reason,
        participants=(
            Participant(calling_aet, host, True, SOURCE_ROLE),
            Participant(node_aet, node_host, False, DESTINATION_ROLE),
        ),
        instances=tuple(instances),
        transport="tls" if over_tls else "tcp",
        detail={"status": f"0x{status:04X}"},
    )


class ReceivedInstances:
    """Instances one peer stored in one transfer (an association, a STOW-RS request), gathered for
    one :func:`instances_received` record per study: a record is due when the peer moves on to
    another study, when :data:`RECEIVED_PER_RECORD` have gathered, and at the transfer's end."""

    def __init__(self) -> None:
        self._gathered: dict[tuple[str, bool], list[InstanceRef]] = {}  # (study, already held)

    def add(self, ref: InstanceRef, *, duplicate: bool) -> list[tuple[bool, list[InstanceRef]]]:
        """Gather ``ref``; returns the (duplicate, instances) groups to record now, if any."""
        due = self.take() if any(s != ref.study_instance_uid for s, _ in self._gathered) else []
        self._gathered.setdefault((ref.study_instance_uid, duplicate), []).append(ref)
        if sum(map(len, self._gathered.values())) >= RECEIVED_PER_RECORD:
            due += self.take()
        return due

    def take(self) -> list[tuple[bool, list[InstanceRef]]]:
        """Every gathered group, to record (the transfer ended); nothing stays gathered."""
        gathered, self._gathered = self._gathered, {}
        return [(duplicate, refs) for (_study, duplicate), refs in gathered.items()]


def instances_sent(
    *,
    node_aet: str,
    node_host: str,
    destination: str,
    destination_aet: str,
    destination_host: str,
    instances: Iterable[InstanceRef],
    error: str | None,
    over_tls: bool,
) -> AuditMessage:
    """Result objects sent to a destination (the sender's side of 110104, action R)."""
    return AuditMessage(
        event=AuditEvent.INSTANCES_TRANSFERRED,
        action=Action.READ,
        outcome=Outcome.SUCCESS if error is None else Outcome.MINOR_FAILURE,
        description=error or "",
        participants=(
            Participant(node_aet, node_host, True, SOURCE_ROLE),
            Participant(destination_aet, destination_host, False, DESTINATION_ROLE),
        ),
        instances=tuple(instances),
        transport="tls" if over_tls else "tcp",
        detail={"destination": destination},
    )


def resend_requested(*, node_aet: str, destination: str | None, count: int) -> AuditMessage:
    """``cxr-node resend``: failed deliveries put back in the outbox by an operator."""
    return AuditMessage(
        event=AuditEvent.BEGIN_TRANSFERRING,
        action=Action.EXECUTE,
        outcome=Outcome.SUCCESS,
        participants=(_operator(), Participant(node_aet, socket.gethostname(), False, APPLICATION_ROLE)),
        detail={"command": "resend", "destination": destination or "*", "deliveries": count},
    )


def study_deleted(
    *, node_aet: str, study_instance_uid: str, command: str, by_operator: bool, instances: int | None = None
) -> AuditMessage:
    """A study's objects removed from the node (``purge`` or the retention loop)."""
    participants: tuple[Participant, ...] = (
        Participant(node_aet, socket.gethostname(), not by_operator, APPLICATION_ROLE),
    )
    if by_operator:
        participants = (_operator(), *participants)
    return AuditMessage(
        event=AuditEvent.STUDY_DELETED,
        action=Action.DELETE,
        outcome=Outcome.SUCCESS,
        participants=participants,
        studies=(study_instance_uid,),
        detail={"command": command} if instances is None else {"command": command, "instances": instances},
    )


def _operator() -> Participant:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    return Participant(user, socket.gethostname(), True, LAUNCHER_ROLE, ae_title=False)


# -- the trail ---------------------------------------------------------------------------------
def parse_syslog_address(text: str) -> tuple[str | tuple[str, int], socket.SocketKind]:
    """``/dev/log`` (a Unix socket), ``udp://host:port`` / ``host:port`` or ``tcp://host:port``
    -> (address, socket type) for :class:`logging.handlers.SysLogHandler`."""
    value = text.strip()
    if value.startswith("/"):
        return value, socket.SOCK_DGRAM
    kind = socket.SOCK_DGRAM
    for prefix, sock_type in (("udp://", socket.SOCK_DGRAM), ("tcp://", socket.SOCK_STREAM)):
        if value.startswith(prefix):
            value, kind = value[len(prefix):], sock_type
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ConfigError("[audit].syslog_address must be '/dev/log', 'udp://host:port' or "
                          f"'tcp://host:port', got {text!r}")
    return (host.strip("[]"), int(port)), kind


class AuditTrail:
    """Appends audit records as JSON lines (and sends them to syslog when configured).

    The file is opened with O_APPEND and each record is one ``write``, so the serve process, a
    worker and the CLI commands can append to the same file without interleaving lines. An
    audit write that fails is logged as an error and never fails the DICOM operation.
    """

    def __init__(
        self,
        audit_source: str,
        path: Path | None,
        *,
        syslog_address: str = "",
        syslog_facility: str = "authpriv",
    ) -> None:
        self.audit_source = audit_source
        self.path = path
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._syslog: logging.Logger | None = None
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        if syslog_address:
            if syslog_facility not in SYSLOG_FACILITIES:
                raise ConfigError(f"[audit].syslog_facility must be one of {SYSLOG_FACILITIES}, "
                                  f"got {syslog_facility!r}")
            address, sock_type = parse_syslog_address(syslog_address)
            handler = logging.handlers.SysLogHandler(
                address=address,
                facility=logging.handlers.SysLogHandler.facility_names[syslog_facility],
                socktype=sock_type,
            )
            handler.setFormatter(logging.Formatter("cxr-node-audit: %(message)s"))
            self._syslog = logging.Logger(f"node.audit.syslog.{id(self)}")  # not in the logging tree
            self._syslog.addHandler(handler)
            self._syslog.setLevel(logging.INFO)

    def record(self, message: AuditMessage) -> None:
        line = json.dumps(message.record(self.audit_source), separators=(",", ":"), default=str)
        try:
            if self._fd is not None:
                with self._lock:
                    os.write(self._fd, (line + "\n").encode("utf-8"))
            if self._syslog is not None:
                level = logging.INFO if message.outcome is Outcome.SUCCESS else logging.WARNING
                self._syslog.log(level, "%s", line)
        except OSError as exc:
            log_event(log, "audit.write_failed", logging.ERROR, path=str(self.path), error=str(exc),
                      audit_event=message.event.slug)

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
        if self._syslog is not None:
            for handler in self._syslog.handlers:
                handler.close()


def open_audit_trail(config: NodeConfig) -> AuditTrail:
    """The trail ``[audit]`` describes; the audit source is the node's AE title on this host."""
    settings = config.audit
    if not settings.enabled:
        return NoAudit()
    try:
        return AuditTrail(
            f"{config.node.ae_title}@{socket.gethostname()}",
            config.audit_path,
            syslog_address=settings.syslog_address,
            syslog_facility=settings.syslog_facility,
        )
    except OSError as exc:
        raise ConfigError(f"[audit]: cannot open the audit trail {config.audit_path} "
                          f"(or syslog {settings.syslog_address!r}): {exc}") from exc


class NoAudit(AuditTrail):
    """``[audit] enabled = false``: records go nowhere."""

    def __init__(self) -> None:
        super().__init__("", None)

    def record(self, message: AuditMessage) -> None:
        return None

"""STOW-RS receive (PS3.18 10.5): ``POST /dicomweb/studies[/{study}]``, each part stored as a C-STORE is.

The request body (``multipart/related; type="application/dicom"``, PS3.18 8.6.1.2) is parsed
as it arrives by python-multipart; each part, a DICOM Part 10 file, is streamed into the
store's incoming folder with its size checked against ``max_instance_bytes`` on the way, so a
request of any size costs bounded memory. A complete part then takes exactly the C-STORE path
(node.ingest): the same header check (:func:`~node.ingest.inspect_file`), the same SOP classes
and transfer syntaxes as the listener (node.scp), the same duplicate policy and the same
durable commit (:func:`~node.ingest.store_received`: file fsynced and renamed, row committed),
all before the response is sent.

Response (PS3.18 10.5.3, Store Instances Response Module): DICOM JSON (``application/dicom+json``,
PS3.18 F.2) or the Native DICOM Model XML (``application/dicom+xml``, PS3.19 A.1) per Accept, with
Referenced SOP Sequence (stored) and Failed SOP Sequence (Failure Reason = the C-STORE status the
listener would have answered). HTTP status: 200 all stored, 202 some stored, 409 none stored,
400 malformed body, 415 not ``multipart/related; type="application/dicom"``, 406 unacceptable
Accept, 503 when this process has no receive path. Each failure's reason is also in a
``Warning: 299`` header (PS3.18 8.7.5).
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import time
import uuid
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from node import audit
from node.errors import DatabaseError, DiskFullError, InvalidInstanceError, StoreError
from node.http.metrics import STOW_CALLING_AET
from node.ingest import (
    STATUS_CANNOT_UNDERSTAND,
    STATUS_DATABASE_FAILURE,
    STATUS_DATASET_MISMATCH,
    STATUS_OUT_OF_RESOURCES,
    file_meta_bytes,
    inspect_file,
    store_received,
)
from node.logs import log_event
from node.scp import decodable_transfer_syntaxes
from node.sop_classes import is_stored
from node.store import data_set_offset, valid_uid

if TYPE_CHECKING:  # python-multipart declares its callback types for type checkers only
    from python_multipart.multipart import MultipartCallbacks

log = logging.getLogger("node.http.stow")
_HOSTNAME = socket.gethostname()

DICOM_JSON = "application/dicom+json"
DICOM_XML = "application/dicom+xml"
# PS3.18 Table 10.5.3-3 failure reasons beside the C-STORE statuses of node.ingest:
STATUS_SOP_CLASS_NOT_SUPPORTED = 0x0122  # Referenced SOP Class not supported
STATUS_TRANSFER_SYNTAX_NOT_SUPPORTED = 0xC122  # Referenced Transfer Syntax not supported
_META_ALLOWANCE = 64 * 1024  # preamble + File Meta group on top of the data set limit
_CHUNK_WRITE = 1 << 20


class BadRequest(Exception):
    """The body is not a well-formed multipart/related message (HTTP 400)."""


@dataclass
class PartOutcome:
    sop_class_uid: str = ""
    sop_instance_uid: str = ""
    status: int = 0
    reason: str = ""
    new: bool = False
    study_instance_uid: str = ""


@dataclass
class _Part:
    path: Path
    fd: int
    headers: dict[str, str] = field(default_factory=dict)
    size: int = 0
    refused: PartOutcome | None = None


class StowReceiver:
    """python-multipart callbacks that stream each part to a file and store it when it ends.

    Runs on a worker thread (``parser.write`` is called through the thread pool): the writes,
    fsyncs and the wait for the group commit never block the event loop.
    """

    def __init__(self, ctx: Any, study_uid: str | None, client_host: str = "") -> None:
        self.ctx = ctx
        self.study_uid = study_uid
        self.client_host = client_host
        self.outcomes: list[PartOutcome] = []
        self._received = audit.ReceivedInstances()  # stored, not yet in an audit record
        self.finished = False
        self._part: _Part | None = None
        self._field = b""
        self._value = b""
        node = ctx.config.node
        self._max_part = node.max_instance_bytes + _META_ALLOWANCE
        self._syntaxes = set(decodable_transfer_syntaxes())

    def callbacks(self) -> MultipartCallbacks:
        return {
            "on_part_begin": self._begin, "on_part_data": self._data, "on_part_end": self._end,
            "on_header_field": self._header_field, "on_header_value": self._header_value,
            "on_header_end": self._header_end, "on_end": self._finished,
        }

    def _begin(self) -> None:
        path = self.ctx.store.incoming / f"stow-{uuid.uuid4().hex}.dcm"
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
        except OSError as exc:
            raise StoreError(f"cannot write {path}: {exc.strerror or exc}") from exc
        self._part = _Part(path, fd)

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._field += data[start:end]

    def _header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def _header_end(self) -> None:
        if self._part is not None:
            name = self._field.decode("latin-1").strip().lower()
            self._part.headers[name] = self._value.decode("latin-1").strip()
        self._field, self._value = b"", b""

    def _data(self, data: bytes, start: int, end: int) -> None:
        part = self._part
        if part is None or part.refused is not None:
            return
        part.size += end - start
        if part.size > self._max_part:
            limit = self.ctx.config.node.max_instance_bytes
            part.refused = PartOutcome(status=STATUS_OUT_OF_RESOURCES,
                                       reason=f"part is over max_instance_bytes={limit}")
            return
        view = memoryview(data)[start:end]
        while view:
            written = os.write(part.fd, view[:_CHUNK_WRITE])
            view = view[written:]

    def _end(self) -> None:
        part, self._part = self._part, None
        if part is None:
            return
        try:
            os.close(part.fd)
            outcome = self._refused(part) if part.refused else self._store(part)
        finally:
            part.path.unlink(missing_ok=True)  # adopted (renamed) when stored; else dropped here
        self.outcomes.append(outcome)
        self._audit(outcome)
        if outcome.status:
            self.ctx.outcomes.refused("dicomweb", outcome.status)
            log_event(log, "stow.failed", logging.WARNING, sop_instance_uid=outcome.sop_instance_uid,
                      status=f"0x{outcome.status:04X}", reason=outcome.reason)

    def _audit(self, outcome: PartOutcome) -> None:
        """PS3.15 A.5.3.4 DICOM Instances Transferred, the receiver's record (UIDs only), as for a
        C-STORE: stored instances gathered per study for one record (:meth:`record_received`), a
        refused one recorded at once with its status and reason."""
        o = outcome
        ref = audit.InstanceRef(o.study_instance_uid, o.sop_class_uid, o.sop_instance_uid)
        if o.status:
            self._record([ref], o.status, reason=o.reason)
            return
        for held, refs in self._received.add(ref, duplicate=not o.new):
            self._record(refs, 0, duplicate=held)

    def record_received(self) -> None:
        """One record per study for the instances stored since the last one (the request's end)."""
        for held, refs in self._received.take():
            self._record(refs, 0, duplicate=held)

    def _record(self, refs: list[audit.InstanceRef], status: int, *, duplicate: bool = False,
                reason: str = "") -> None:
        trail = self.ctx.audit_trail
        if trail is not None:
            trail.record(audit.instances_received(
                calling_aet=STOW_CALLING_AET, host=self.client_host, node_aet=self.ctx.config.node.ae_title,
                node_host=_HOSTNAME, over_tls=False, status=status, duplicate=duplicate, reason=reason,
                instances=refs))

    def _finished(self) -> None:
        self.finished = True

    def abort(self) -> None:
        """The request ended early: drop the part being received."""
        part, self._part = self._part, None
        if part is not None:
            os.close(part.fd)
            part.path.unlink(missing_ok=True)

    @staticmethod
    def _refused(part: _Part) -> PartOutcome:
        """A part refused while it arrived: name its instance from the File Meta group it began with."""
        assert part.refused is not None
        try:
            meta = _read_meta(part.path)
        except Exception:  # whatever the head holds, the refusal stands
            return part.refused
        for keyword, attr in (("MediaStorageSOPClassUID", "sop_class_uid"),
                              ("MediaStorageSOPInstanceUID", "sop_instance_uid")):
            if valid_uid(value := str(meta.get(keyword, ""))):
                setattr(part.refused, attr, value)
        return part.refused

    def _store(self, part: _Part) -> PartOutcome:
        media = parse_options_header(part.headers.get("content-type", "application/dicom"))[0].decode()
        if media != "application/dicom":
            return PartOutcome(status=STATUS_CANNOT_UNDERSTAND,
                               reason=f"part of type {media!r}, not application/dicom")
        try:
            meta = _part10_meta(part.path)
            offset = data_set_offset(part.path)
        except Exception as exc:  # pydicom and the store raise several types on a non-Part 10 body
            return PartOutcome(status=STATUS_CANNOT_UNDERSTAND,
                               reason=f"not a DICOM Part 10 file: {exc.__class__.__name__}: {exc}")
        sop_class = str(meta.get("MediaStorageSOPClassUID", ""))
        sop_instance = str(meta.get("MediaStorageSOPInstanceUID", ""))
        ts = str(meta.get("TransferSyntaxUID", ""))
        outcome = PartOutcome(sop_class_uid=sop_class if valid_uid(sop_class) else "",
                              sop_instance_uid=sop_instance if valid_uid(sop_instance) else "")
        if not is_stored(sop_class):
            outcome.status = STATUS_SOP_CLASS_NOT_SUPPORTED
            outcome.reason = f"SOP class {sop_class[:64]} is not a Storage SOP Class"
            return outcome
        if ts not in self._syntaxes:
            outcome.status = STATUS_TRANSFER_SYNTAX_NOT_SUPPORTED
            outcome.reason = f"transfer syntax {ts[:64]} cannot be decoded here"
            return outcome
        node = self.ctx.config.node
        try:
            header = inspect_file(part.path, offset, ts, expected_sop_class=sop_class,
                                  affected_sop_instance=sop_instance, max_bytes=node.max_instance_bytes,
                                  max_pixels=node.max_pixels)
            if self.study_uid and header.study_instance_uid != self.study_uid:
                raise InvalidInstanceError(
                    f"StudyInstanceUID {header.study_instance_uid} is not the request's {self.study_uid}",
                    STATUS_DATASET_MISMATCH)
            outcome.study_instance_uid = header.study_instance_uid
            self.ctx.store.check_free_space(part.size)
            outcome.new = store_received(self.ctx.store, self.ctx.committer, header, part.path,
                                         transfer_syntax=ts, calling_aet=STOW_CALLING_AET)
        except InvalidInstanceError as exc:
            outcome.status, outcome.reason = exc.status, str(exc)
        except (DiskFullError, StoreError) as exc:
            outcome.status, outcome.reason = STATUS_OUT_OF_RESOURCES, str(exc)
        except DatabaseError as exc:
            outcome.status, outcome.reason = STATUS_DATABASE_FAILURE, str(exc)
        return outcome


def _read_group2(f: BinaryIO) -> Dataset:
    """The File Meta group (explicit VR little endian, PS3.10 7.1), with or without the preamble;
    leaves ``f`` at the first data set element."""
    head = f.read(132)
    f.seek(132 if head[128:132] == b"DICM" else 0)
    return read_dataset(f, False, True, stop_when=lambda tag, _vr, _length: tag.group != 0x0002)


def _read_meta(path: Path) -> Dataset:
    with open(path, "rb") as f:
        return _read_group2(f)


def _part10_meta(path: Path) -> Dataset:
    """Rewrite a received part as the listener writes a C-STORE: the node's File Meta group
    (:func:`~node.ingest.file_meta_bytes`) followed by the data set bytes exactly as sent.

    PS3.18 asks for a PS3.10 file per part, but clients differ: dicomweb-client sends a data set
    made in memory with its File Meta group and no preamble, or without (0002,0000). Reading the
    group with pydicom and writing ours makes every stored file alike. Streamed, never held.
    """
    with open(path, "rb") as f:
        meta = _read_group2(f)
        if not len(meta) or "TransferSyntaxUID" not in meta:
            raise StoreError("no File Meta Information group (PS3.10 7.1) with a Transfer Syntax UID")
        fixed = path.with_name(path.name + ".part10")
        with open(fixed, "wb") as dst:
            dst.write(file_meta_bytes(str(meta.get("MediaStorageSOPClassUID", "")),
                                      str(meta.get("MediaStorageSOPInstanceUID", "")),
                                      str(meta.TransferSyntaxUID), STOW_CALLING_AET))
            shutil.copyfileobj(f, dst, _CHUNK_WRITE)
    os.replace(fixed, path)
    return meta


def response_dataset(outcomes: list[PartOutcome]) -> Dataset:
    """The Store Instances Response Module (PS3.18 Table 10.5.3-2)."""
    ds = Dataset()
    stored, failed = [], []
    for o in outcomes:
        item = Dataset()
        if o.sop_class_uid:
            item.ReferencedSOPClassUID = o.sop_class_uid
        if o.sop_instance_uid:
            item.ReferencedSOPInstanceUID = o.sop_instance_uid
        if o.status:
            item.FailureReason = o.status
            failed.append(item)
        else:
            stored.append(item)
    if failed:
        ds.FailedSOPSequence = failed
    ds.ReferencedSOPSequence = stored
    return ds


def native_xml(ds: Dataset) -> bytes:
    """PS3.19 A.1 Native DICOM Model of a data set (the UI, US and SQ elements a response holds)."""
    root = ET.Element("NativeDicomModel", xmlns="http://dicom.nema.org/PS3.19/models/NativeDICOM")
    _xml_elements(root, ds)
    return b'<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="utf-8")


def _xml_elements(parent: ET.Element, ds: Dataset) -> None:
    for elem in ds:
        attr = ET.SubElement(parent, "DicomAttribute",
                             {"tag": f"{elem.tag:08X}", "vr": str(elem.VR), "keyword": elem.keyword})
        if elem.VR == "SQ":
            for number, item in enumerate(elem.value, start=1):
                _xml_elements(ET.SubElement(attr, "Item", number=str(number)), item)
        else:
            values = elem.value if elem.VM > 1 else [elem.value]
            for number, value in enumerate(values, start=1):
                ET.SubElement(attr, "Value", number=str(number)).text = str(value)


def _response_type(accept: str) -> str | None:
    """DICOM JSON unless the client asks for XML only; None when it accepts neither."""
    if not accept.strip():
        return DICOM_JSON
    types = [parse_options_header(t)[0].decode().lower() for t in accept.split(",")]
    for media in types:
        if media in (DICOM_JSON, "application/json", "*/*", "application/*"):
            return DICOM_JSON
        if media in (DICOM_XML, "application/xml"):
            return DICOM_XML
    return None


async def store_instances(request: Request) -> Response:
    started = time.monotonic()
    ctx = request.app.state.ctx
    study_uid = request.path_params.get("study")
    if study_uid is not None and not valid_uid(study_uid):
        return JSONResponse({"error": f"not a Study Instance UID: {study_uid[:80]!r}"}, status_code=400)
    media, params = parse_options_header(request.headers.get("content-type", ""))
    part_type = parse_options_header(params.get(b"type", b"application/dicom"))[0]
    if media.lower() != b"multipart/related" or part_type.lower() != b"application/dicom":
        return JSONResponse({"error": 'STOW-RS here takes multipart/related; type="application/dicom"'},
                            status_code=415)
    boundary = params.get(b"boundary")
    if not boundary:
        return JSONResponse({"error": "multipart/related without a boundary"}, status_code=400)
    answer = _response_type(request.headers.get("accept", ""))
    if answer is None:
        return JSONResponse({"error": f"the response is {DICOM_JSON} or {DICOM_XML}"}, status_code=406)
    if ctx.committer is None:
        return JSONResponse({"error": "this process has no receive path"}, status_code=503)
    receiver = StowReceiver(ctx, study_uid, request.client.host if request.client else "")
    parser = MultipartParser(boundary, receiver.callbacks())
    try:
        async for chunk in request.stream():
            if chunk:
                await run_in_threadpool(parser.write, chunk)
        if not receiver.finished:
            raise BadRequest("the body ends before the closing boundary")
        if not receiver.outcomes:
            raise BadRequest("the body holds no part")
    except (BadRequest, MultipartParseError) as exc:
        await run_in_threadpool(receiver.abort)
        return JSONResponse({"error": f"malformed multipart/related body: {exc}"}, status_code=400)
    except BaseException:
        await run_in_threadpool(receiver.abort)
        raise
    finally:
        receiver.record_received()  # what was stored is audited, whatever became of the request
        request.app.state.metrics.stow_seconds.observe(time.monotonic() - started)
    outcomes = receiver.outcomes
    stored = sum(1 for o in outcomes if not o.status)
    status = 200 if stored == len(outcomes) else 202 if stored else 409
    log_event(log, "stow.done", study=study_uid or "-", stored=stored, failed=len(outcomes) - stored,
              new=sum(1 for o in outcomes if o.new), http_status=status)
    warnings = [f'299 cxr-node "{o.sop_instance_uid or "part"}: 0x{o.status:04X} {o.reason}"'
                for o in outcomes if o.status]
    headers = {"Warning": ", ".join(w.replace("\n", " ")[:500] for w in warnings)} if warnings else {}
    ds = response_dataset(outcomes)
    if answer == DICOM_XML:
        return Response(native_xml(ds), status_code=status, media_type=DICOM_XML, headers=headers)
    return JSONResponse(ds.to_json_dict(), status_code=status, media_type=DICOM_JSON, headers=headers)


ROUTES = [
    Route("/dicomweb/studies", store_instances, methods=["POST"]),
    Route("/dicomweb/studies/{study}", store_instances, methods=["POST"]),
]

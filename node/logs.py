"""Structured log lines: one per association, study, job and delivery, with no PHI.

``log_event(logger, "job.done", job_id=3, study=uid)`` writes ``job.done job_id=3 study=1.2.3``
(or one JSON object per line with ``log_format = "json"``). Only identifiers go into logs:
UIDs, accession numbers, AE titles, counts and durations. Field names that would carry patient
identity (PS3.15 Annex E basic profile attributes such as PatientName, PatientBirthDate) are
refused, so a careless call cannot leak them.

Values are not trusted either: a UID or an exception message may come from a peer. Control
characters (CR, LF, ...) are escaped in every line, so one event is one line (no log injection),
and while the worker handles an image (:func:`redacting`) every record of that thread, including
warnings and other libraries' lines, has that image's patient name, ID and birth date replaced by
``[redacted]`` (the values themselves are gathered by node.phi).
"""

from __future__ import annotations

import json
import logging
import re
import sys
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

# Field names that must never appear in a log line (PS3.15 E.1-1 identity attributes).
FORBIDDEN_FIELDS = frozenset(
    {
        "patient_name",
        "patientname",
        "patient_birth_date",
        "patientbirthdate",
        "birth_date",
        "patient_id",
        "patientid",
        "patient_address",
        "patient_sex",
        "other_patient_names",
    }
)

_json_format = False
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
REDACTED = "[redacted]"
MAX_TRACEBACK_CHARS = 2000  # of a library's traceback, kept as the end of its one line
_context = threading.local()


def escape_control(text: str) -> str:
    """``text`` with every control character written as an escape (``\\n``, ``\\x1b``): one line."""
    return _CONTROL.sub(lambda m: json.dumps(m.group())[1:-1], text)


def redact(text: str, values: Iterable[str]) -> str:
    """``text`` with each of ``values`` (any case) replaced by ``[redacted]``, longest first."""
    for value in sorted({v for v in values if v}, key=len, reverse=True):
        text = re.sub(re.escape(value), REDACTED, text, flags=re.IGNORECASE)
    return text


def current_redactions() -> frozenset[str]:
    """The values that this thread's log records must not show (set by :func:`redacting`)."""
    return getattr(_context, "values", frozenset())


@contextmanager
def redacting(values: Iterable[str]) -> Iterator[None]:
    """While the block runs, records logged by this thread have ``values`` redacted (nested: added)."""
    before = current_redactions()
    _context.values = before | frozenset(values)
    try:
        yield
    finally:
        _context.values = before


def log_event(logger: logging.Logger, event: str, level: int = logging.INFO, **fields: Any) -> None:
    """Log one structured line ``event key=value ...``; raises ValueError on a PHI field name."""
    bad = FORBIDDEN_FIELDS.intersection(k.lower() for k in fields)
    if bad:
        raise ValueError(f"refusing to log patient-identifying field(s) {sorted(bad)}")
    if not logger.isEnabledFor(level):
        return
    if _json_format:
        logger.log(level, "%s", json.dumps({"event": event, **fields}, default=str, separators=(",", ":")))
        return
    parts = [escape_control(event)]
    for key, value in fields.items():
        if isinstance(value, float):
            value = f"{value:.3f}"
        text = str(value)
        if not text or any(c in text for c in ' "=') or _CONTROL.search(text):
            text = json.dumps(text)  # quoted, with control characters escaped
        parts.append(f"{escape_control(key)}={text}")
    logger.log(level, "%s", " ".join(parts))


class _JsonFormatter(logging.Formatter):
    """One JSON object per line; event lines are embedded as objects, others as text."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        try:
            body: Any = json.loads(message) if message.startswith("{") else message
        except ValueError:
            body = message
        out = {"ts": self.formatTime(record), "level": record.levelname, "logger": record.name, "msg": body}
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


class SafeRecordFilter(logging.Filter):
    """Makes every record one line without patient values, whoever logged it (pydicom, highdicom, warnings).

    The message is rendered, the thread's :func:`redacting` values removed and control characters
    escaped; a traceback is kept, redacted, as the escaped end of the same line.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        values = current_redactions()
        message = record.getMessage()
        if values:
            message = redact(message, values)
        record.msg, record.args = escape_control(message), None
        if record.exc_info:
            text = escape_control(redact(logging.Formatter().formatException(record.exc_info), values))
            record.exc_info, record.exc_text = None, None
            tail = text if len(text) <= MAX_TRACEBACK_CHARS else "..." + text[-MAX_TRACEBACK_CHARS:]
            record.msg = f"{record.msg} | {tail}"
        return True


def setup_logging(level: str = "INFO", fmt: str = "text") -> None:
    """Configure the root logger for a node process (stderr, one line per record, no patient values)."""
    global _json_format
    _json_format = fmt == "json"
    logging.captureWarnings(True)  # warnings (pydicom's invalid values) go through the same filter
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(SafeRecordFilter())
    if _json_format:
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # pynetdicom logs every PDU at INFO/DEBUG, including dataset summaries; highdicom logs every
    # module it copies and openjpeg every tile it encodes: keep them to warnings, one line per event.
    for library in ("pynetdicom", "highdicom", "openjpeg"):
        logging.getLogger(library).setLevel(logging.WARNING)

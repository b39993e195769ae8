"""Structured log lines: one per association, study, job and delivery, with no PHI.

``log_event(logger, "job.done", job_id=3, study=uid)`` writes ``job.done job_id=3 study=1.2.3``
(or one JSON object per line with ``log_format = "json"``). Only identifiers go into logs:
UIDs, accession numbers, AE titles, counts and durations. Field names that would carry patient
identity (PS3.15 Annex E basic profile attributes such as PatientName, PatientBirthDate) are
refused, so a careless call cannot leak them.
"""

from __future__ import annotations

import json
import logging
import sys
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
    parts = [event]
    for key, value in fields.items():
        if isinstance(value, float):
            value = f"{value:.3f}"
        text = str(value)
        if not text or any(c in text for c in ' "='):
            text = json.dumps(text)
        parts.append(f"{key}={text}")
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


def setup_logging(level: str = "INFO", fmt: str = "text") -> None:
    """Configure the root logger for a node process (stderr, one line per record)."""
    global _json_format
    _json_format = fmt == "json"
    handler = logging.StreamHandler(sys.stderr)
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

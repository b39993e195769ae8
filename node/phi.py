"""Patient identity kept out of messages: the values to redact, and exception text made safe.

Libraries put the values they choke on into their messages (pydicom: "Unable to convert
'1901-01-01' to 'DA' object"), so an error about one image can carry its patient's name, ID or
birth date into a log line, the job's error column and ``cxr-node status``. The node knows the
image it is working on: :func:`identity_values` reads that image's identifying attributes (PS3.15
Table E.1-1, the ones a message could plausibly quote), and :func:`safe_message` turns an exception
into "Class: message" with those values redacted, control characters escaped and the length capped.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pydicom.tag import BaseTag, Tag

from node.logs import escape_control, redact, redacting

# PS3.15 E.1-1 attributes of patient identity that a message about a value could quote.
IDENTITY_KEYWORDS = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientBirthTime",
    "OtherPatientIDs",
    "OtherPatientNames",
    "PatientBirthName",
    "PatientMotherBirthName",
    "PatientAddress",
    "PatientTelephoneNumbers",
)
IDENTITY_TAGS: list[BaseTag] = [Tag(k) for k in IDENTITY_KEYWORDS]
MIN_REDACTED_LENGTH = 3  # shorter fragments ("M", "1") would blank unrelated text; whole values always go
MAX_MESSAGE_CHARS = 500
_DATE = re.compile(r"(\d{4})(\d{2})(\d{2})")


def _variants(text: str) -> set[str]:
    """The value, its stripped form, its PN components / multi-values, and a DA written with dashes."""
    text = text.strip("\x00 ")
    if not text:
        return set()
    found = {text}
    for part in re.split(r"[\\^=]", text):
        part = part.strip()
        if len(part) >= MIN_REDACTED_LENGTH:
            found.add(part)
    date = _DATE.fullmatch(text)
    if date:
        found.add("-".join(date.groups()))
    if " " in text:
        found.add(text.replace("^", " "))
    return found


def identity_values(ds: Dataset | None) -> set[str]:
    """The patient-identity values of ``ds`` (top level) as text, raw and converted, never raising.

    Raw bytes are read without conversion so an invalid value ('1901-01-01' in a DA) is still known.
    """
    values: set[str] = set()
    if ds is None:
        return values
    present = []
    for tag in IDENTITY_TAGS:
        try:
            elem = ds.get_item(tag)
        except Exception:  # noqa: BLE001 - a damaged element is simply not known
            continue
        if elem is None:
            continue
        present.append(tag)
        raw = elem.value
        if isinstance(raw, bytes):
            for text in (raw.decode("latin-1", errors="replace"), raw.decode("utf-8", errors="replace")):
                values |= _variants(text)
        elif raw is not None:
            values |= _variants(str(raw))
    # Converting an invalid value makes pydicom warn and log it: silenced, and redacted if it slips out.
    with redacting(values), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for tag in present:
            try:
                converted = ds[tag].value
            except Exception:  # noqa: BLE001 - the raw text above is enough
                continue
            texts = [str(v) for v in converted] if isinstance(converted, list | tuple) else []
            for text in [*texts, str(converted)]:
                values |= _variants(text)
    return values


def identity_values_from_file(path: Path | str) -> set[str]:
    """:func:`identity_values` of a stored file whose full read failed (header only; never raises)."""
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=IDENTITY_TAGS, force=True)
    except Exception:  # noqa: BLE001 - RecursionError, truncated file...: nothing known, nothing quoted
        return set()
    return identity_values(ds)


def safe_message(exc: BaseException, values: set[str] | frozenset[str] = frozenset()) -> str:
    """``"Class: message"`` with ``values`` redacted, one line, at most MAX_MESSAGE_CHARS characters."""
    text = str(exc)
    if isinstance(exc, RecursionError):
        text = "data set nested too deeply to read"
    text = escape_control(redact(text, values))
    name = exc.__class__.__name__
    if len(text) > MAX_MESSAGE_CHARS:
        text = text[:MAX_MESSAGE_CHARS] + "..."
    return f"{name}: {text}" if text else name

"""C-STORE statuses of the receive path (PS3.4 Annex B.2.3, Table B.2-1, and PS3.7 Annex C).

- 0x0000 Success -- stored and recorded, a resend of a stored object (byte-identical or re-encoded),
  or a copy of one of the node's own result objects (not taken in again).
- 0xA700 Refused: Out of Resources -- free disk below the watermark, instance (or its inflated
  form) over ``max_instance_bytes``, image over ``max_pixels``, the store cannot write.
- 0xA900 Error: Data Set does not match SOP Class -- SOP class differs from the presentation
  context, required UIDs or Pixel Data missing, Pixel Data shorter than Rows x Columns needs,
  sequences nested deeper than MAX_SEQUENCE_DEPTH (no radiograph IOD nests that deep).
- 0x0111 Failure: Duplicate SOP Instance (PS3.7 C.4 general status) -- the SOP Instance UID is
  already stored as another object (other patient, study, series or grid, or other pixels in the
  same encoding); the stored copy stays, and the sender should not retry the same object.
- 0xC000 Error: Cannot understand -- the bytes are not a parseable data set (garbage, truncated).
- 0xC001 (Cannot understand range, node specific) -- the database could not record the
  instance; nothing was acknowledged, the peer may retry. Only for real storage/database faults.
"""

from __future__ import annotations

STATUS_SUCCESS = 0x0000
STATUS_OUT_OF_RESOURCES = 0xA700  # PS3.4 B.2.3: Refused: Out of Resources
STATUS_DATASET_MISMATCH = 0xA900  # PS3.4 B.2.3: Error: Data Set does not match SOP Class
STATUS_CANNOT_UNDERSTAND = 0xC000  # PS3.4 B.2.3: Error: Cannot understand
STATUS_DATABASE_FAILURE = 0xC001  # Cxxx "Cannot understand" range, node specific: DB write failed
STATUS_DUPLICATE_CONFLICT = 0x0111  # PS3.7 C.4: Failure: Duplicate SOP Instance (different content)

"""The receive path: header check, durable commit, DIMSE statuses.

What the C-STORE handler (node.scp) does for each instance, and nothing more (inference and
scheduling happen elsewhere):

1. :mod:`node.ingest.header` checks the data set without reading its pixels;
2. :mod:`node.ingest.commit` makes the file durable, then records its row (group commit),
   under the duplicate policy (a stored instance is never replaced);
3. :mod:`node.ingest.status` names the C-STORE status of every outcome;
4. :mod:`node.ingest.meta` encodes the File Meta Information written before the data set.
"""

from node.ingest.commit import (
    CommitTicket,
    DuplicateInstanceError,
    GroupCommitter,
    receive_record,
    store_durably,
    store_received,
)
from node.ingest.header import (
    MAX_SEQUENCE_DEPTH,
    Header,
    check_header,
    inflate_bytes,
    inflate_file,
    inspect_dataset,
    inspect_file,
)
from node.ingest.meta import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION, file_meta_bytes
from node.ingest.status import (
    STATUS_CANNOT_UNDERSTAND,
    STATUS_DATABASE_FAILURE,
    STATUS_DATASET_MISMATCH,
    STATUS_DUPLICATE_CONFLICT,
    STATUS_OUT_OF_RESOURCES,
    STATUS_SUCCESS,
)

__all__ = [
    "IMPLEMENTATION_CLASS_UID",
    "IMPLEMENTATION_VERSION",
    "MAX_SEQUENCE_DEPTH",
    "STATUS_CANNOT_UNDERSTAND",
    "STATUS_DATABASE_FAILURE",
    "STATUS_DATASET_MISMATCH",
    "STATUS_DUPLICATE_CONFLICT",
    "STATUS_OUT_OF_RESOURCES",
    "STATUS_SUCCESS",
    "CommitTicket",
    "DuplicateInstanceError",
    "GroupCommitter",
    "Header",
    "check_header",
    "file_meta_bytes",
    "inflate_bytes",
    "inflate_file",
    "inspect_dataset",
    "inspect_file",
    "receive_record",
    "store_durably",
    "store_received",
]

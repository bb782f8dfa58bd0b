"""Batch reprocessing of recorded series on a Dask cluster (``ltemlive reprocess``; docs/scale-out.md).

Importing this package starts nothing: ``distributed`` is imported only when :func:`reprocess` runs a batch.
"""

from ltemlive.batch.items import Discovery, WorkItem, discover, load_series
from ltemlive.batch.reprocess import BatchReport, reprocess
from ltemlive.batch.task import DONE_MARKER, done_record, process_item

__all__ = [
    "DONE_MARKER",
    "BatchReport",
    "Discovery",
    "WorkItem",
    "discover",
    "done_record",
    "load_series",
    "process_item",
    "reprocess",
]

"""One retrieve (C-GET or C-MOVE): the instances it brings in, and how it ended.

The DIMSE side runs in worker threads: instances arrive through :meth:`Transfer.receive` (on
the C-GET association itself, or on the storage SCP's association for a C-MOVE), are moved next
to the :class:`~gateway.retrieve.cache.InstanceCache` and queued for the HTTP side, which admits
them into the cache and iterates them as they come. Memory holds only the queue of paths, never
the instances.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import anyio.to_thread
from pydicom.dataset import Dataset

from gateway.dimse.spool import ResultSpool
from gateway.part10 import NotDicom
from gateway.retrieve.cache import CachedInstance, InstanceCache

__all__ = ["SubOperations", "Transfer"]

logger = logging.getLogger(__name__)

_STORE_SUCCESS = 0x0000


@dataclass
class SubOperations:
    """The sub-operation counts of a C-GET or C-MOVE response (PS3.4 C.4.2.1.6, C.4.3.1.3)."""

    remaining: int | None = None
    completed: int = 0
    failed: int = 0
    warning: int = 0
    failed_instances: list[str] = field(default_factory=list)

    def update(self, status: Dataset, identifier: Dataset | None) -> None:
        """Take the counts of one pending or final response."""
        self.remaining = status.get("NumberOfRemainingSuboperations", self.remaining)
        self.completed = int(status.get("NumberOfCompletedSuboperations", self.completed) or 0)
        self.failed = int(status.get("NumberOfFailedSuboperations", self.failed) or 0)
        self.warning = int(status.get("NumberOfWarningSuboperations", self.warning) or 0)
        if identifier is not None and "FailedSOPInstanceUIDList" in identifier:
            value = identifier.FailedSOPInstanceUIDList
            self.failed_instances = [str(v) for v in (value if isinstance(value, list | tuple) else [value]) if v]


class Transfer:
    """The instances of one C-GET or C-MOVE, from the DIMSE threads to one async consumer.

    Parameters
    ----------
    cache : InstanceCache
        Where each received instance is kept.
    description : str
        What is retrieved, for log lines (``study 1.2.3``).
    """

    def __init__(self, cache: InstanceCache, description: str) -> None:
        self.cache = cache
        self.description = description
        self.counts = SubOperations()
        self.final_status: int | None = None
        self.received = 0
        self.rejected = 0
        self._spool = ResultSpool(memory_items=sys.maxsize)  # records are small: never spill

    @property
    def lost(self) -> int:
        """Instances the PACS failed to send, or sent unreadable, so far."""
        return self.counts.failed + self.rejected

    @property
    def cancelled(self) -> bool:
        """True once the consumer has gone; the DIMSE side then sends C-CANCEL."""
        return self._spool.cancelled.is_set()

    def receive(self, path: Path) -> int:
        """Take one received Part 10 file (blocking; DIMSE thread); returns the C-STORE status.

        Only moves the file into the cache's staging area: the PACS waits for this answer before
        it sends the next instance, so reading the file's header is left to the consumer.
        """
        staged = self.cache.stage(path)
        self.received += 1
        if not self._spool.put(staged):
            staged.unlink(missing_ok=True)
        return _STORE_SUCCESS

    def finish(self, error: BaseException | None = None) -> None:
        """The operation is over (DIMSE side), with the error that ended it if any."""
        self._spool.finish(error)

    def cancel(self) -> None:
        """Stop: the consumer is gone. Instances received but not yet taken are deleted."""
        for staged in self._spool.cancel():
            staged.unlink(missing_ok=True)

    async def __aiter__(self) -> AsyncIterator[CachedInstance]:
        """Each instance as it arrives, pinned: the consumer releases it with ``cache.release``.

        A received file that is not a DICOM instance is counted in :attr:`rejected` and skipped.
        Raises the operation's error, if any, after the last instance.
        """
        async for staged in self._spool:
            try:
                entry = await anyio.to_thread.run_sync(self.cache.admit, staged)
            except NotDicom as exc:
                self.rejected += 1
                logger.warning("%s: received a file that is not a DICOM instance: %s", self.description, exc)
                continue
            yield entry

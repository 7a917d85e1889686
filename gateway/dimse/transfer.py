"""One retrieve (C-GET or C-MOVE): the instances it brings in, and how it ended.

The DIMSE side runs in worker threads: instances arrive through :meth:`Transfer.receive` (on
the C-GET association itself, or on the storage SCP's association for a C-MOVE), are handed to
an :class:`InstanceSink` (the retrieve cache, which lives in ``gateway.retrieve``: this package
speaks DIMSE only) and queued for the consumer, which iterates them as they come. Memory holds
only the queue of paths, never the instances.

Every instance is checked as it is received, before the PACS gets its C-STORE response and
before any consumer sees it: its header must be readable, name the SOP instance the C-STORE
request names, and belong to what the retrieve asked for (:class:`Scope`). A PACS that sends
something else, or a forger who got past the storage SCP's checks, gets a failure status.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Protocol

from pydicom.dataset import Dataset

from gateway.dimse.refusals import RefusalLog
from gateway.dimse.spool import ResultSpool
from gateway.part10 import InstanceHeader, NotDicom, read_instance_header

__all__ = ["CANNOT_UNDERSTAND", "NOT_AUTHORIZED", "InstanceSink", "Scope", "SubOperations", "Transfer"]


_STORE_SUCCESS = 0x0000
NOT_AUTHORIZED = 0x0124
"""C-STORE failure "Refused: Not authorized" (PS3.7 C.5.x): an instance nobody asked for."""
CANNOT_UNDERSTAND = 0xC000
"""C-STORE failure "Cannot understand" (PS3.4 B.2.3): no readable header, or not the instance named."""


@dataclass(frozen=True)
class Scope:
    """What a retrieve asked for: a study, a series of it, or one instance of that series."""

    study: str
    series: str | None = None
    instance: str | None = None

    def refusal(self, header: InstanceHeader) -> str | None:
        """Why an instance with `header` is outside this scope, or None if it is inside."""
        if header.study_instance_uid != self.study:
            return f"it is of study {header.study_instance_uid}, not {self.study}"
        if self.series is not None and header.series_instance_uid != self.series:
            return f"it is of series {header.series_instance_uid}, not {self.series}"
        if self.instance is not None and header.sop_instance_uid != self.instance:
            return f"it is not instance {self.instance}"
        return None

    def holds(self, study: str, series: str, instance: str) -> bool:
        """True if the instance with these UIDs is inside this scope."""
        return study == self.study and self.series in (None, series) and self.instance in (None, instance)


class InstanceSink(Protocol):
    """Where the instances a retrieve receives go (the retrieve cache implements it)."""

    def stage(self, received: Path) -> Path:
        """Take a just-received, checked Part 10 file; return where it is now.

        Blocking, in the DIMSE thread, while the PACS waits for the C-STORE response: keep it
        short (a rename).
        """
        ...


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
    sink : InstanceSink
        Where each received instance goes.
    description : str
        What is retrieved, for log lines (``study 1.2.3``).
    scope : Scope
        What is retrieved: every received instance must belong to it.
    """

    def __init__(self, sink: InstanceSink, description: str, scope: Scope) -> None:
        self.sink = sink
        self.description = description
        self.scope = scope
        self.counts = SubOperations()
        self.final_status: int | None = None
        self.received = 0
        self.rejected = 0
        """Instances received unreadable, or not the instance their C-STORE named, or turned down by
        the consumer (outside the scope by the sink's records): lost."""
        self.refused = 0
        """Instances received outside :attr:`scope`: not what was asked for, not lost."""
        self._spool = ResultSpool(memory_items=sys.maxsize)  # records are small: never spill

    @property
    def lost(self) -> int:
        """Instances the PACS failed to send, or sent unreadable, so far.

        The PACS counts the instances refused as outside :attr:`scope` among its failed
        sub-operations: they were not asked for, so they are not lost.
        """
        return max(self.counts.failed - self.refused, 0) + self.rejected

    @property
    def cancelled(self) -> bool:
        """True once the consumer has gone; the DIMSE side then sends C-CANCEL."""
        return self._spool.cancelled.is_set()

    def receive(self, path: Path, affected_sop_instance: str, peer: str, refusals: RefusalLog) -> int:
        """Take one received Part 10 file (blocking; DIMSE thread); returns the C-STORE status.

        Reads the file's header (it stops after the UIDs, so this costs the same for any size)
        and checks it against the C-STORE request and :attr:`scope`, then hands the file to the
        sink. Anything refused is deleted, counted and logged through `refusals`
        with the `peer` that sent it.
        """
        try:
            header = read_instance_header(path)
        except NotDicom as exc:
            path.unlink(missing_ok=True)
            self.rejected += 1
            refusals.refuse(peer, "%s: refused an unreadable instance from %s: %s", self.description, peer, exc)
            return CANNOT_UNDERSTAND
        if affected_sop_instance and header.sop_instance_uid != affected_sop_instance:
            path.unlink(missing_ok=True)
            self.rejected += 1
            refusals.refuse(
                peer,
                "%s: refused instance %s from %s: its data set is instance %s",
                self.description,
                affected_sop_instance,
                peer,
                header.sop_instance_uid,
            )
            return CANNOT_UNDERSTAND
        reason = self.scope.refusal(header)
        if reason is not None:
            path.unlink(missing_ok=True)
            self.refused += 1
            refusals.refuse(
                peer, "%s: refused instance %s from %s: %s", self.description, header.sop_instance_uid, peer, reason
            )
            return NOT_AUTHORIZED
        staged = self.sink.stage(path)
        self.received += 1
        if not self._spool.put(replace(header, path=staged)):
            staged.unlink(missing_ok=True)
        return _STORE_SUCCESS

    def finish(self, error: BaseException | None = None) -> None:
        """The operation is over (DIMSE side), with the error that ended it if any."""
        self._spool.finish(error)

    def cancel(self) -> None:
        """Stop: the consumer is gone. Instances received but not yet taken are deleted."""
        for header in self._spool.cancel():
            header.path.unlink(missing_ok=True)

    async def __aiter__(self) -> AsyncIterator[InstanceHeader]:
        """Each instance as it arrives and was checked, with the path the sink staged it at.

        Raises the operation's error, if any, after the last instance.
        """
        async for header in self._spool:
            yield header

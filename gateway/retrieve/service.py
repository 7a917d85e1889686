"""What WADO-RS asks of one upstream: instances streamed from the PACS, or served from the cache.

- Retrieving a study, series or instance as DICOM always asks the PACS (the answer is never
  stale) and streams the instances as they arrive, keeping them in the cache on the way.
- Metadata, frames, bulk data and rendered images are derived from the cache: a series is asked
  for once, then served locally while it is fresh (``cache_ttl``), and one instance's frames never
  cost a whole series. Concurrent requests for a series that is being retrieved wait for that
  retrieve instead of starting another one.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import anyio
import anyio.to_thread
from pydicom.dataset import Dataset

from gateway.dimse.client import UpstreamClient
from gateway.dimse.retrieve import RetrieveClient
from gateway.dimse.status import SUCCESS, describe_status
from gateway.dimse.transfer import Scope, Transfer
from gateway.errors import NotFound, UpstreamError, UpstreamFailureStatus
from gateway.retrieve.cache import CachedInstance, InstanceCache

__all__ = ["RetrieveService", "Target"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Target:
    """What a WADO-RS request names: a study, a series of it, or an instance of that series."""

    study: str
    series: str | None = None
    instance: str | None = None

    @property
    def level(self) -> str:
        """The Query/Retrieve level of the C-GET or C-MOVE."""
        return "IMAGE" if self.instance else "SERIES" if self.series else "STUDY"

    def identifier(self) -> Dataset:
        """The C-GET/C-MOVE identifier (PS3.4 C.4.2.2.1: unique keys down to the level)."""
        ds = Dataset()
        ds.QueryRetrieveLevel = self.level
        ds.StudyInstanceUID = self.study
        if self.series:
            ds.SeriesInstanceUID = self.series
        if self.instance:
            ds.SOPInstanceUID = self.instance
        return ds

    def names(self, entry: CachedInstance) -> bool:
        """True when `entry` is what this target names: of its study, and of its series and instance if given."""
        return (
            entry.study_uid == self.study
            and (self.series is None or entry.series_uid == self.series)
            and (self.instance is None or entry.sop_instance_uid == self.instance)
        )

    def __str__(self) -> str:
        if self.instance:
            return f"instance {self.instance} of series {self.series}"
        return f"series {self.series} of study {self.study}" if self.series else f"study {self.study}"


class RetrieveService:
    """Retrieval for one upstream, through its cache."""

    def __init__(self, retriever: RetrieveClient, finder: UpstreamClient, cache: InstanceCache) -> None:
        self.retriever = retriever
        self.finder = finder
        self.cache = cache
        self._series_in_flight: dict[tuple[str, str], anyio.Event] = {}

    def start(self, target: Target) -> Transfer:
        """Start retrieving `target` from the PACS; iterate the transfer for its instances."""
        transfer = Transfer(self.cache, str(target), Scope(target.study, target.series, target.instance))
        self.retriever.start(target.identifier(), transfer)
        return transfer

    async def _admitted(self, transfer: Transfer) -> AsyncIterator[CachedInstance]:
        """Each instance of `transfer` as it arrives, admitted into the cache and pinned.

        The consumer releases it with ``cache.release``. The cache may answer with the copy it
        already held (see :meth:`~gateway.retrieve.cache.InstanceCache.admit`); one that is outside
        the transfer's scope then is counted as rejected and skipped, and an instance that came
        twice is yielded once. Raises the operation's error, if any, after the last instance.
        """
        yielded: set[str] = set()
        async for header in transfer:
            entry = await anyio.to_thread.run_sync(self.cache.admit, header.path, header)
            if entry.sop_instance_uid in yielded:
                self.cache.release(entry)
                logger.warning("%s: instance %s arrived twice; sent once", transfer.description, entry.sop_instance_uid)
                continue
            if not transfer.scope.holds(entry.study_uid, entry.series_uid, entry.sop_instance_uid):
                self.cache.release(entry)
                transfer.rejected += 1
                logger.error(
                    "%s: instance %s is cached as part of series %s of study %s; not served here",
                    transfer.description,
                    entry.sop_instance_uid,
                    entry.series_uid,
                    entry.study_uid,
                )
                continue
            yielded.add(entry.sop_instance_uid)
            yield entry

    async def matching(self, target: Target, transfer: Transfer) -> AsyncIterator[CachedInstance]:
        """The instances of `transfer` that `target` names; the others are released, and logged.

        A PACS may match a C-GET or C-MOVE on the unique key of its level alone (PS3.4 C.4.2.2.1
        lets it ignore the parent UIDs), so ``/studies/{another study}/series/{S}`` would bring
        series S. What the URL names is answered, as Orthanc's own DICOMweb does: nothing of
        another study or series.
        """
        async for entry in self._admitted(transfer):
            if target.names(entry):
                yield entry
                continue
            logger.info(
                "%s: the PACS sent instance %s of series %s of study %s; not part of the answer",
                target,
                entry.sop_instance_uid,
                entry.series_uid,
                entry.study_uid,
            )
            self.cache.release(entry)

    @asynccontextmanager
    async def stream(self, target: Target) -> AsyncIterator[Transfer]:
        """A started transfer that is cancelled (C-CANCEL) if the caller leaves before its end."""
        transfer = self.start(target)
        try:
            yield transfer
        finally:
            transfer.cancel()

    async def check_found(self, target: Target, transfer: Transfer) -> None:
        """After a transfer that brought no instance: raise what the client should be told.

        Raises
        ------
        NotFound
            The PACS has nothing for `target` (PS3.18: 404 when no instance can be retrieved).
        UpstreamError
            The PACS has it but could not send any of it.
        """
        status = transfer.final_status
        lost = transfer.lost
        if not lost and (status == SUCCESS or not await self._exists(target)):
            raise NotFound(f"the PACS has no {target}")
        detail = f"the PACS could not send any instance of {target}"
        if lost:
            detail += f" ({lost} sub-operations failed)"
        if status is None:
            raise UpstreamError(detail, upstream=self.retriever.name)
        raise UpstreamFailureStatus(
            f"{detail}: status 0x{status:04X} ({describe_status(status)})", upstream=self.retriever.name, status=status
        )

    async def _exists(self, target: Target) -> bool:
        found = False
        async for _ in self.finder.find(target.identifier()):
            found = True
            break
        return found

    async def series_of_study(self, study: str) -> list[str]:
        """The series UIDs of a study, in SeriesNumber order, by C-FIND (hierarchical: any PACS answers)."""
        return await self._children(Target(study), "SERIES", "SeriesInstanceUID", "SeriesNumber")

    async def instances_of_series(self, study: str, series: str) -> list[str]:
        """The SOP instance UIDs of a series, in InstanceNumber order, by C-FIND."""
        return await self._children(Target(study, series), "IMAGE", "SOPInstanceUID", "InstanceNumber")

    async def _children(self, parent: Target, level: str, key: str, order: str) -> list[str]:
        identifier = parent.identifier()
        identifier.QueryRetrieveLevel = level
        setattr(identifier, key, "")
        setattr(identifier, order, None)
        found: dict[str, float] = {}
        async for answer in self.finder.find(identifier):
            uid = str(answer.get(key, "")).rstrip("\x00 ")
            number = answer.get(order)
            if uid:
                found.setdefault(uid, float(number) if number not in (None, "") else float("inf"))
        return sorted(found, key=lambda uid: found[uid])

    async def series(self, study: str, series: str) -> list[CachedInstance]:
        """Every instance of a series, pinned (release each with ``cache.release``).

        Served from the cache when it holds the whole series and it is fresh; otherwise the
        series is retrieved once, however many requests ask for it at the same time.
        """
        key = (study, series)
        while True:
            cached = self.cache.acquire_series(study, series)
            if cached is not None:
                return cached
            in_flight = self._series_in_flight.get(key)
            if in_flight is None:
                break
            await in_flight.wait()
        done = self._series_in_flight[key] = anyio.Event()
        try:
            return await self._retrieve_series(Target(study, series))
        finally:
            del self._series_in_flight[key]
            done.set()

    async def _retrieve_series(self, target: Target) -> list[CachedInstance]:
        assert target.series is not None
        received: list[CachedInstance] = []
        try:
            async with self.stream(target) as transfer:
                async for entry in self.matching(target, transfer):
                    received.append(entry)
        except BaseException:
            for entry in received:
                self.cache.release(entry)
            raise
        if not received:
            await self.check_found(target, transfer)
        if transfer.final_status == SUCCESS and not transfer.counts.failed:
            self.cache.mark_series_complete(target.study, target.series, [e.sop_instance_uid for e in received])
        else:
            logger.warning("%s: retrieved %d instances, some failed; not cached as complete", target, len(received))
        return received

    async def instances(self, target: Target) -> list[CachedInstance]:
        """Every instance `target` names, pinned, through the cache: a study series by series."""
        if target.instance is not None:
            return [await self.instance(target)]
        if target.series is not None:
            return await self.series(target.study, target.series)
        entries: list[CachedInstance] = []
        try:
            for series in await self.series_of_study(target.study):
                entries += await self.series(target.study, series)
        except BaseException:
            for entry in entries:
                self.cache.release(entry)
            raise
        if not entries:
            raise NotFound(f"the PACS has no {target}")
        return entries

    async def instance(self, target: Target) -> CachedInstance:
        """One instance, pinned: from the cache, else retrieved alone (never its whole series)."""
        assert target.instance is not None
        entry = self.cache.acquire(target.instance)
        if entry is not None and entry.study_uid == target.study and entry.series_uid == target.series:
            return entry
        if entry is not None:
            self.cache.release(entry)
            raise NotFound(f"instance {target.instance} is not in series {target.series} of study {target.study}")
        wanted: CachedInstance | None = None
        try:
            async with self.stream(target) as transfer:
                # Read to the final response: leaving early would cancel, and cost the association.
                async for received in self.matching(target, transfer):
                    if wanted is None:
                        wanted = received
                    else:
                        self.cache.release(received)
        except BaseException:
            if wanted is not None:
                self.cache.release(wanted)
            raise
        if wanted is not None:
            return wanted
        await self.check_found(target, transfer)
        raise NotFound(f"the PACS has no {target}")  # check_found always raises; keeps mypy honest


def partial_warning(transfer: Transfer) -> str | None:
    """The Warning header value for a transfer that lost instances, or None if it lost none."""
    lost = transfer.lost
    if lost == 0 and transfer.final_status in (SUCCESS, None):
        return None
    detail = f"{lost} instances could not be retrieved" if lost else "the PACS reported a failure"
    return f'299 - "{detail} (status 0x{(transfer.final_status or 0):04X})"'

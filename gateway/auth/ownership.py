"""Whose study is it? Decided by C-FIND before a patient-bound WADO-RS request retrieves anything.

For a patient-bound token, a WADO-RS request (instances, metadata, frames, rendered, thumbnail,
bulk data) for a study, series or instance of another patient is refused (403) before any C-GET
or C-MOVE is sent. A STUDY-level C-FIND tells the study's PatientID; a SERIES or IMAGE-level
C-FIND (hierarchical: within that study) tells that the series and instance belong to it, so a
path that pairs the patient's study with another patient's series cannot reach the PACS's
retrieve. A study the PACS does not have stays a 404.

Answers are cached briefly (``ttl``) in a bounded LRU, so a viewer's many frame requests cost one
C-FIND per series; a series or instance the cache does not list is asked for again (it may have
just been stored). Concurrent checks of one key wait for one C-FIND.

The same STUDY-level answer tells a patient-bound STOW-RS whether the study an instance names is
another patient's (:meth:`StudyOwnership.study_admits`).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable

import anyio
from pydicom.dataset import Dataset

from gateway.auth.patient import same_patient
from gateway.errors import Forbidden, NotFound
from gateway.retrieve.service import Target
from gateway.upstreams import Upstream

__all__ = ["StudyOwnership"]

_Key = tuple[str, ...]


class _TtlCache:
    """A bounded LRU of values that expire; one load at a time per key."""

    def __init__(self, ttl: float, size: int) -> None:
        self._ttl = ttl
        self._size = size
        self._values: OrderedDict[_Key, tuple[float, frozenset[str]]] = OrderedDict()
        self._loading: dict[_Key, anyio.Event] = {}

    def fresh(self, key: _Key) -> frozenset[str] | None:
        entry = self._values.get(key)
        if entry is None or entry[0] < time.monotonic():
            return None
        self._values.move_to_end(key)
        return entry[1]

    async def load(self, key: _Key, loader: Callable[[], Awaitable[frozenset[str]]]) -> frozenset[str]:
        """The value of `key` loaded now (or by the load already running); cached if not empty."""
        while (running := self._loading.get(key)) is not None:
            await running.wait()
            cached = self.fresh(key)
            if cached is not None:
                return cached
        done = self._loading[key] = anyio.Event()
        try:
            value = await loader()
        finally:
            del self._loading[key]
            done.set()
        if value:
            self._values[key] = (time.monotonic() + self._ttl, value)
            self._values.move_to_end(key)
            while len(self._values) > self._size:
                self._values.popitem(last=False)
        return value


class StudyOwnership:
    """Checks that a WADO-RS target belongs to a patient, with cached C-FINDs."""

    def __init__(self, ttl: float = 30.0, size: int = 4096) -> None:
        self._cache = _TtlCache(ttl, size)
        self.finds = 0
        """C-FINDs sent so far."""

    async def check(self, upstream: Upstream, target: Target, patient_id: str) -> None:
        """Return if `target` is `patient_id`'s.

        Raises
        ------
        NotFound
            The PACS has no such study, or the series or instance is not in it.
        Forbidden
            The study is another patient's (or its PatientID cannot be told).
        gateway.errors.UpstreamError
            The C-FIND failed.
        """
        study_key = (upstream.name, target.study)
        patients = self._cache.fresh(study_key)
        if patients is None:
            patients = await self._cache.load(study_key, lambda: self._patients_of(upstream, target.study))
        if not patients:
            raise NotFound(f"the PACS has no study {target.study}")
        if not all(same_patient(p, patient_id) for p in patients):
            raise Forbidden(f"study {target.study} is not the token's patient's")
        if target.series is not None:
            await self._require(
                upstream, (*study_key, target.series), target.series, lambda: self._series_of(upstream, target)
            )
        if target.instance is not None and target.series is not None:
            await self._require(
                upstream,
                (*study_key, target.series, "instances"),
                target.instance,
                lambda: self._instances_of(upstream, target),
            )

    async def study_admits(self, upstream: Upstream, study: str, patient_id: str) -> bool:
        """Whether a patient-bound STOW-RS may add to `study`: it is new, or `patient_id`'s already.

        An instance carrying the token's PatientID must not be slipped into another patient's study.
        """
        key = (upstream.name, study)
        patients = self._cache.fresh(key)
        if patients is None:
            patients = await self._cache.load(key, lambda: self._patients_of(upstream, study))
        return all(same_patient(p, patient_id) for p in patients)

    async def _require(
        self, upstream: Upstream, key: _Key, uid: str, loader: Callable[[], Awaitable[frozenset[str]]]
    ) -> None:
        known = self._cache.fresh(key)
        if known is None or uid not in known:
            known = await self._cache.load(key, loader)
        if uid not in known:
            raise NotFound(f"the PACS has no {uid} under {'/'.join(key[1:])}")

    async def _find(self, upstream: Upstream, identifier: Dataset, keyword: str) -> frozenset[str]:
        self.finds += 1
        found: set[str] = set()
        async for answer in upstream.client.find(identifier):
            found.add(str(answer.get(keyword, "") or "").strip(" \x00"))
        return frozenset(found)

    async def _patients_of(self, upstream: Upstream, study: str) -> frozenset[str]:
        identifier = Dataset()
        identifier.QueryRetrieveLevel = "STUDY"
        identifier.StudyInstanceUID = study
        identifier.PatientID = ""
        return await self._find(upstream, identifier, "PatientID")

    async def _series_of(self, upstream: Upstream, target: Target) -> frozenset[str]:
        identifier = Target(target.study).identifier()
        identifier.QueryRetrieveLevel = "SERIES"
        identifier.SeriesInstanceUID = ""
        return await self._find(upstream, identifier, "SeriesInstanceUID") - {""}

    async def _instances_of(self, upstream: Upstream, target: Target) -> frozenset[str]:
        identifier = Target(target.study, target.series).identifier()
        identifier.QueryRetrieveLevel = "IMAGE"
        identifier.SOPInstanceUID = ""
        return await self._find(upstream, identifier, "SOPInstanceUID") - {""}

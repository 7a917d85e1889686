"""Study and series aggregates derived from what the PACS holds now (PS3.4 C.3.4, requirement G5).

ModalitiesInStudy, NumberOfStudyRelatedSeries, NumberOfStudyRelatedInstances, SOPClassesInStudy
and NumberOfSeriesRelatedInstances describe the series and instances a study holds *now*. An
archive that wrote them when the first series arrived and never re-aggregated them answers them
stale (the "Common Operational Errors" of the ModalitiesInStudy attribute page), and nothing in
its answer tells a stale value from a fresh one. So, unless an upstream is configured as trusted,
the gateway derives them from lower-level C-FINDs, for a batch of results at a time:

- on a relational PACS, one SERIES C-FIND and (when an instance count is needed) one IMAGE
  C-FIND per batch of up to :data:`UID_LIST_SIZE` studies, each matching the studies' UIDs as a
  list (List of UID Matching, PS3.4 C.2.2.2.2), run in parallel;
- on a hierarchical PACS a level above the one queried takes a single UID (PS3.4 C.4.1.2.1):
  one SERIES C-FIND per study, then one IMAGE C-FIND per series when instances must be counted;
- on a hierarchical PACS that answers an IMAGE C-FIND by study alone (``instances_by_study``,
  dcmqrscp and qrscp do), a study whose instances are counted takes that one C-FIND instead: its
  answers name each instance's series and Modality, which gives the study's series and
  modalities as well, so it replaces the study's SERIES C-FIND too.

Every value comes from the PACS's instance and series records at query time: nothing stored as
an aggregate is read. (Neither dcmqrscp nor qrscp answers NumberOfSeriesRelatedInstances at
SERIES level, so a PACS's own series count is never used either.)

The C-FINDs of one :meth:`AggregateDeriver.load` that do not depend on each other run together;
a request never runs more than its ``fanout_concurrency`` of them at once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Coroutine, Iterable, Sequence
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any

import anyio
from pydicom.dataset import Dataset

from gateway.dimse.client import UpstreamClient
from gateway.query.attributes import QueryLevel, tag
from gateway.query.identifier import build_identifier
from gateway.query.params import MatchKey, MatchType
from gateway.search.batches import gather

__all__ = ["UID_LIST_SIZE", "AggregateDeriver", "StaleAggregates", "StudyAggregates"]

logger = logging.getLogger(__name__)

UID_LIST_SIZE = 50
"""UIDs in one list-matching C-FIND (about 3 KB of identifier), and results completed together."""

_STUDY_UID = tag("StudyInstanceUID")
_SERIES_UID = tag("SeriesInstanceUID")
_SOP_UID = tag("SOPInstanceUID")
_MODALITY = tag("Modality")


def uid_key(level: QueryLevel, uids: Sequence[str]) -> MatchKey:
    """StudyInstanceUID / SeriesInstanceUID / SOPInstanceUID matching `uids` (one value or a list)."""
    keyword = {QueryLevel.STUDY: "StudyInstanceUID", QueryLevel.SERIES: "SeriesInstanceUID"}.get(
        level, "SOPInstanceUID"
    )
    match_type = MatchType.SINGLE if len(uids) == 1 else MatchType.LIST
    return MatchKey((tag(keyword),), keyword, "UI", match_type, tuple(uids))


def _text(dataset: Dataset, tag_value: int) -> str:
    """A UI or CS value of `dataset` (ASCII by definition), read without pydicom's conversion.

    The fan-out reads a few values of every answer, hundreds per request: taking the raw bytes
    skips pydicom's value conversion and UID validation (several per cent of the gateway's CPU in
    a profile of OHIF's study list in front of dcmqrscp).
    """
    element = dataset.get_item(tag_value)
    if element is None or element.value is None:
        return ""
    value = element.value
    text = value.decode("ascii", "replace") if isinstance(value, bytes) else str(value)
    return text.rstrip("\x00 ")


_Call = Callable[[], Coroutine[Any, Any, None]]


def _chunks(items: Sequence[str]) -> list[Sequence[str]]:
    return [items[i : i + UID_LIST_SIZE] for i in range(0, len(items), UID_LIST_SIZE)]


@dataclass(frozen=True)
class StudyAggregates:
    """A study's aggregates as derived; ``None`` for what was not derived."""

    modalities: list[str]
    series: int
    instances: int | None
    sop_classes: list[str] | None


@dataclass
class _Study:
    series: dict[str, str] | None = None
    """SeriesInstanceUID -> Modality, once the study's series are known."""
    instances: dict[str, int] | None = None
    """SeriesInstanceUID -> number of instances, once the study's instances are counted."""
    sop_classes: set[str] | None = None


class AggregateDeriver:
    """Derives, and memoises for one request, the aggregates of studies and series on one upstream."""

    def __init__(
        self, client: UpstreamClient, *, relational: bool, concurrency: int, instances_by_study: bool = False
    ) -> None:
        self._client = client
        self._relational = relational
        self._instances_by_study = instances_by_study
        self._limiter = anyio.CapacityLimiter(concurrency)
        self._studies: dict[str, _Study] = {}
        self._series_counts: dict[str, int] = {}

    def study(self, uid: str) -> StudyAggregates:
        """What is known of study `uid` (after :meth:`load`)."""
        known = self._studies[uid]
        series = known.series or {}
        instances = known.instances
        return StudyAggregates(
            modalities=sorted(set(series.values()) - {""}),
            series=len(series),
            instances=sum(instances.values()) if instances is not None else None,
            sop_classes=sorted(known.sop_classes) if known.sop_classes is not None else None,
        )

    def series_count(self, series_uid: str) -> int:
        """The number of instances of series `series_uid` (after :meth:`load`)."""
        return self._series_counts.get(series_uid, 0)

    async def load(
        self,
        *,
        series_of: Iterable[str] = (),
        instances_of: Iterable[str] = (),
        sop_classes: bool = False,
        series: Iterable[tuple[str, str]] = (),
    ) -> None:
        """Derive what is not known yet: the series of the studies `series_of`, the instance counts
        (and SOP classes when `sop_classes`) of the studies `instances_of`, and the instance counts
        of the ``(study, series)`` pairs in `series`."""
        counting = [uid for uid in dict.fromkeys(instances_of) if not self._instances_known(uid, sop_classes)]
        listing = [
            uid for uid in dict.fromkeys([*series_of, *counting]) if self._studies.get(uid, _Study()).series is None
        ]
        for uid in listing + counting:
            self._studies.setdefault(uid, _Study())
        counted = set(counting)
        pairs = [(st, se) for st, se in dict.fromkeys(series) if se not in self._series_counts and st not in counted]
        if self._relational:
            calls = [self._series_call(chunk) for chunk in _chunks(listing)]
            calls += [self._instances_call(chunk, sop_classes) for chunk in _chunks(counting)]
            calls += self._series_count_calls(pairs)
            await gather(calls)
            return
        if self._instances_by_study and not sop_classes:
            # One IMAGE C-FIND per counted study (its series and their Modality come with it), one
            # SERIES C-FIND per other study, all at once.
            calls = [self._series_call([uid]) for uid in listing if uid not in counted]
            calls += [self._study_instances_call(uid) for uid in counting]
            calls += self._series_count_calls(pairs)
            await gather(calls)
            return
        # Hierarchical: the series of a study must be known before its instances can be asked for.
        await gather([self._series_call([uid]) for uid in listing])
        calls = [
            self._series_instances_call(uid, series_uid, sop_classes)
            for uid in counting
            for series_uid in self._studies[uid].series or {}
        ]
        calls += self._series_count_calls(pairs)
        for uid in counting:
            self._studies[uid].instances = {}
            self._studies[uid].sop_classes = set() if sop_classes else None
        await gather(calls)

    def _instances_known(self, uid: str, sop_classes: bool) -> bool:
        known = self._studies.get(uid)
        return known is not None and known.instances is not None and (not sop_classes or known.sop_classes is not None)

    async def _find(self, level: QueryLevel, keys: list[MatchKey], returns: list[int]) -> list[Dataset]:
        async with self._limiter:
            identifier = build_identifier(level, keys, returns)
            async with aclosing(self._client.find(identifier)) as found:  # type: ignore[type-var]
                return [dataset async for dataset in found]

    def _series_call(self, uids: Sequence[str]) -> _Call:
        async def call() -> None:
            answers = await self._find(
                QueryLevel.SERIES, [uid_key(QueryLevel.STUDY, uids)], [_STUDY_UID, _SERIES_UID, tag("Modality")]
            )
            found: dict[str, dict[str, str]] = {uid: {} for uid in uids}
            for dataset in answers:
                study_uid = _text(dataset, _STUDY_UID) if len(uids) > 1 else uids[0]
                series_uid = _text(dataset, _SERIES_UID)
                if series_uid and study_uid in found:
                    found[study_uid].setdefault(series_uid, _text(dataset, tag("Modality")))
            for uid, series in found.items():
                self._studies[uid].series = series

        return call

    def _instances_call(self, uids: Sequence[str], sop_classes: bool) -> _Call:
        async def call() -> None:
            returns = [_STUDY_UID, _SERIES_UID, _SOP_UID] + ([tag("SOPClassUID")] if sop_classes else [])
            answers = await self._find(QueryLevel.IMAGE, [uid_key(QueryLevel.STUDY, uids)], returns)
            members: dict[str, dict[str, set[str]]] = {uid: {} for uid in uids}
            classes: dict[str, set[str]] = {uid: set() for uid in uids}
            for dataset in answers:
                study_uid = _text(dataset, _STUDY_UID) if len(uids) > 1 else uids[0]
                sop_uid = _text(dataset, _SOP_UID)
                if sop_uid and study_uid in members:
                    members[study_uid].setdefault(_text(dataset, _SERIES_UID), set()).add(sop_uid)
                    sop_class = _text(dataset, tag("SOPClassUID"))
                    if sop_class:
                        classes[study_uid].add(sop_class)
            for uid, by_series in members.items():
                counts = {series_uid: len(instances) for series_uid, instances in by_series.items()}
                self._series_counts.update(counts)
                self._studies[uid].instances = counts
                self._studies[uid].sop_classes = classes[uid] if sop_classes else None

        return call

    def _study_instances_call(self, study_uid: str) -> _Call:
        """Count the instances of each series of a study by one IMAGE C-FIND of the study's UID alone
        (``instances_by_study``); the answers also give the study's series and their Modality."""

        async def call() -> None:
            returns = [_SERIES_UID, _SOP_UID, _MODALITY]
            answers = await self._find(QueryLevel.IMAGE, [uid_key(QueryLevel.STUDY, [study_uid])], returns)
            members: dict[str, set[str]] = {}
            modalities: dict[str, str] = {}
            for dataset in answers:
                series_uid = _text(dataset, _SERIES_UID)
                sop_uid = _text(dataset, _SOP_UID)
                if series_uid and sop_uid:
                    members.setdefault(series_uid, set()).add(sop_uid)
                    if not modalities.get(series_uid):
                        modalities[series_uid] = _text(dataset, _MODALITY)
            counts = {series_uid: len(instances) for series_uid, instances in members.items()}
            self._series_counts.update(counts)
            known = self._studies[study_uid]
            known.instances = counts
            if known.series is None:
                known.series = modalities

        return call

    def _series_instances_call(self, study_uid: str, series_uid: str, sop_classes: bool) -> _Call:
        async def call() -> None:
            returns = [_SOP_UID] + ([tag("SOPClassUID")] if sop_classes else [])
            keys = [uid_key(QueryLevel.STUDY, [study_uid]), uid_key(QueryLevel.SERIES, [series_uid])]
            answers = await self._find(QueryLevel.IMAGE, keys, returns)
            count = len({uid for uid in (_text(ds, _SOP_UID) for ds in answers) if uid})
            self._series_counts[series_uid] = count
            known = self._studies[study_uid]
            assert known.instances is not None
            known.instances[series_uid] = count
            if known.sop_classes is not None:
                known.sop_classes |= {c for c in (_text(ds, tag("SOPClassUID")) for ds in answers) if c}

        return call

    def _series_count_calls(self, pairs: list[tuple[str, str]]) -> list[_Call]:
        """C-FINDs counting the instances of series whose study is not being counted as a whole."""
        if not self._relational:
            return [self._count_call([study], [series]) for study, series in pairs]
        calls = []
        for start in range(0, len(pairs), UID_LIST_SIZE):
            chunk = pairs[start : start + UID_LIST_SIZE]
            calls.append(self._count_call(list(dict.fromkeys(st for st, _ in chunk)), [se for _, se in chunk]))
        return calls

    def _count_call(self, study_uids: list[str], series_uids: list[str]) -> _Call:
        async def call() -> None:
            keys = [uid_key(QueryLevel.STUDY, study_uids), uid_key(QueryLevel.SERIES, series_uids)]
            answers = await self._find(QueryLevel.IMAGE, keys, [_SERIES_UID, _SOP_UID])
            members: dict[str, set[str]] = {uid: set() for uid in series_uids}
            for dataset in answers:
                series_uid = _text(dataset, _SERIES_UID) if len(series_uids) > 1 else series_uids[0]
                sop_uid = _text(dataset, _SOP_UID)
                if sop_uid and series_uid in members:
                    members[series_uid].add(sop_uid)
            self._series_counts.update({uid: len(instances) for uid, instances in members.items()})

        return call


class StaleAggregates:
    """Studies whose PACS-held aggregates disagreed with the derived ones, for one upstream.

    Every disagreement is counted (``/health`` shows the total); at most one log line per
    `interval` seconds reports the latest one and how many there were since the previous line.
    """

    def __init__(self, upstream: str, interval: float = 60.0) -> None:
        self.upstream = upstream
        self.interval = interval
        self.count = 0
        self._unreported = 0
        self._next_report = 0.0

    def record(self, study_uid: str, disagreements: list[str]) -> None:
        """Count study `study_uid`, whose PACS-held values disagree as `disagreements` say."""
        self.count += 1
        self._unreported += 1
        now = time.monotonic()
        if now < self._next_report:
            return
        logger.warning(
            "upstream %s: stale aggregates of study %s held by the PACS: %s; %d stale study answer(s) "
            "since the last report, %d in all",
            self.upstream,
            study_uid,
            ", ".join(disagreements),
            self._unreported,
            self.count,
        )
        self._unreported = 0
        self._next_report = now + self.interval

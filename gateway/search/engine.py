"""Answer a :class:`QidoQuery` with C-FINDs, whatever the upstream can do.

The same query gives the same answer in front of a capable PACS and a strict legacy one
(requirement G1). What the PACS cannot do is emulated:

- relational queries (PS3.4 C.4.1.2.1.4): a PACS that is hierarchical only is queried level by
  level, studies first, then the series of each study, then the instances of each series;
- computed attributes (PS3.4 C.3.4): ModalitiesInStudy, NumberOfStudyRelatedSeries/Instances and
  NumberOfSeriesRelatedInstances missing from an answer are computed from lower-level C-FINDs;
- matching the PACS gets wrong (ModalitiesInStudy, value lists, person names in any case) is
  taken out of the upstream identifier and done by the gateway (:mod:`gateway.query.matching`);
- duplicates (one STUDY answer per instance) are dropped on the level's unique key.

Every sub-query is a separate C-FIND on its own pooled association; a request runs at most
``fanout_concurrency`` of them at once.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Iterable
from contextlib import aclosing
from dataclasses import dataclass, field

from pydicom.datadict import keyword_for_tag
from pydicom.dataset import Dataset

from gateway.dimse.client import UpstreamClient
from gateway.query.attributes import (
    COMPUTED_SERIES_ATTRIBUTES,
    COMPUTED_STUDY_ATTRIBUTES,
    DEFAULT_RETURN_KEYWORDS,
    GATEWAY_ATTRIBUTES,
    LEVEL_KEYWORDS,
    UNIQUE_KEY,
    QueryLevel,
    level_of,
    tag,
)
from gateway.query.identifier import build_identifier
from gateway.query.matching import matches, normalise_values, widened_for_upstream
from gateway.query.params import MatchKey, MatchType, QidoQuery
from gateway.search.batches import map_ordered
from gateway.settings import Capabilities

__all__ = ["SearchPlan", "Searcher", "plan_search"]

_LEVELS = (QueryLevel.STUDY, QueryLevel.SERIES, QueryLevel.IMAGE)
_COMPUTED_STUDY_TAGS = frozenset(tag(k) for k in COMPUTED_STUDY_ATTRIBUTES)
_SERIES_COUNT_TAG = tag(COMPUTED_SERIES_ATTRIBUTES[0])
_MODALITIES_TAG = tag("ModalitiesInStudy")
_SOP_CLASSES_TAG = tag("SOPClassesInStudy")
_UNIQUE_TAGS = {level: tag(keyword) for level, keyword in UNIQUE_KEY.items()}
# Default return attributes that PACS rarely hold and that are expensive to ask for: Orthanc
# answers them empty, but only after reading every matching file from disk (a STUDY C-FIND for
# 24 studies: first answer after 27 ms with them, 13 ms without). They are still answered (empty)
# unless the client names them in includefield or as a match key, which makes the gateway ask.
_NOT_ASKED_BY_DEFAULT = frozenset({tag("InstanceAvailability"), tag("TimezoneOffsetFromUTC")})


@dataclass(frozen=True)
class SearchPlan:
    """How one query is split between the PACS and the gateway."""

    level: QueryLevel
    levels: tuple[QueryLevel, ...]
    """The levels queried upstream, top first (one level for a direct query)."""
    upstream_keys: dict[QueryLevel, tuple[MatchKey, ...]]
    local_keys: dict[QueryLevel, tuple[MatchKey, ...]]
    return_tags: dict[QueryLevel, tuple[int, ...]]
    output_tags: frozenset[int] | None
    """The top-level tags each result carries; ``None`` for ``includefield=all``."""
    warnings: tuple[str, ...] = field(default=())


def _output_levels(query: QidoQuery) -> list[QueryLevel]:
    """Levels whose default attributes a result carries (PS3.18 Tables 10.6.3-3 to -5)."""
    scope_depth = query.scope.depth if query.scope is not None else -1
    return [
        lvl for lvl in _LEVELS if lvl.depth <= query.level.depth and (lvl is query.level or lvl.depth > scope_depth)
    ]


def _local_check(key: MatchKey, date_time_combined: bool) -> bool:
    """Whether the gateway re-checks `key` itself (after the PACS had it, or instead of it)."""
    if key.match_type is MatchType.UNIVERSAL or key.is_nested:
        return False
    if key.vr in ("TM", "DT") or (key.vr == "DA" and date_time_combined):
        return False  # combined date-time range matching (PS3.4 C.2.2.2.5.1) is the PACS's to do
    return True


def _send_upstream(key: MatchKey, caps: Capabilities) -> bool:
    """Whether `key` is trusted to the PACS's matching."""
    if key.match_type is MatchType.UNIVERSAL:
        return True
    if key.keyword == "ModalitiesInStudy":
        return bool(caps.modalities_in_study)
    if key.keyword in COMPUTED_STUDY_ATTRIBUTES or key.keyword in COMPUTED_SERIES_ATTRIBUTES:
        return False
    if key.match_type is MatchType.LIST and key.vr != "UI":
        return bool(caps.list_matching)
    if key.match_type is MatchType.LIST:
        return bool(caps.uid_list_matching)
    if key.vr == "PN":
        return bool(caps.case_insensitive_pn)
    return True


def plan_search(query: QidoQuery, caps: Capabilities) -> SearchPlan:
    """Decide which C-FINDs answer `query` and what the gateway does itself."""
    date_time_combined = query.key("StudyDate") is not None and query.key("StudyTime") is not None
    keys_by_level: dict[QueryLevel, list[MatchKey]] = {lvl: [] for lvl in _LEVELS}
    for key in query.match_keys:
        keys_by_level[level_of(key.keyword.split(".")[0], query.level)].append(key)

    output_levels = _output_levels(query)
    output: set[int] = {tag(k) for lvl in output_levels for k in DEFAULT_RETURN_KEYWORDS[lvl]}
    explicit = {k.tag for k in query.match_keys} | set(query.include_tags)
    output |= explicit

    # The top level queried: the study level unless the URL fixes the study and nothing else at
    # study level is asked for; likewise for the series level.
    top = query.level
    for lvl in (QueryLevel.SERIES, QueryLevel.STUDY):
        if lvl.depth >= query.level.depth:
            continue
        fixed = query.scope is not None and query.scope.depth >= lvl.depth
        others = [k for k in keys_by_level[lvl] if k.keyword != UNIQUE_KEY[lvl]]
        if not fixed or others or lvl in output_levels:
            top = lvl
    direct = top is query.level or bool(caps.relational)
    levels = (query.level,) if direct else tuple(lvl for lvl in _LEVELS if top.depth <= lvl.depth <= query.level.depth)

    upstream_keys: dict[QueryLevel, tuple[MatchKey, ...]] = {}
    local_keys: dict[QueryLevel, tuple[MatchKey, ...]] = {}
    return_tags: dict[QueryLevel, tuple[int, ...]] = {}
    for lvl in levels:
        # The levels whose keys and attributes this C-FIND carries: all of them for a direct query,
        # the top one and those above it for the first C-FIND of a fan-out, its own level after.
        if direct or lvl is top:
            covered = [x for x in _LEVELS if x.depth <= lvl.depth]
        else:
            covered = [lvl]
        keys = [k for x in covered for k in keys_by_level[x]]
        local_keys[lvl] = tuple(k for k in keys if _local_check(k, date_time_combined))
        upstream_keys[lvl] = tuple(
            widened_for_upstream(k) if k in local_keys[lvl] else k for k in keys if _send_upstream(k, caps)
        )
        wanted = {t for t in output if level_of(_keyword(t), query.level) in covered}
        if query.include_all:
            wanted |= {tag(k) for x in covered for k in LEVEL_KEYWORDS[x]}
        wanted |= {_UNIQUE_TAGS[x] for x in covered}
        wanted -= {tag(k) for k in GATEWAY_ATTRIBUTES}
        wanted -= _NOT_ASKED_BY_DEFAULT - explicit
        return_tags[lvl] = tuple(sorted(wanted))

    warnings: tuple[str, ...] = ()
    if query.fuzzy and not caps.fuzzy_matching:
        warnings = ("fuzzymatching not supported",)
    return SearchPlan(
        level=query.level,
        levels=levels,
        upstream_keys=upstream_keys,
        local_keys=local_keys,
        return_tags=return_tags,
        output_tags=None if query.include_all else frozenset(output),
        warnings=warnings,
    )


def _keyword(tag_value: int) -> str:
    return keyword_for_tag(tag_value) or ""


def _values(dataset: Dataset, key: MatchKey) -> list[str]:
    element = dataset.get(key.tag)
    return normalise_values(element.value) if element is not None else []


def _uid(dataset: Dataset, level: QueryLevel) -> str:
    return str(dataset.get(UNIQUE_KEY[level], "")).rstrip("\x00 ")


@dataclass
class _StudyAggregates:
    modalities: list[str]
    series: int
    instances: int
    sop_classes: list[str]


class Searcher:
    """Runs one planned search on one upstream; one instance per request (it memoises counts)."""

    def __init__(self, client: UpstreamClient, caps: Capabilities, plan: SearchPlan, concurrency: int) -> None:
        self._client = client
        self._caps = caps
        self._plan = plan
        self._concurrency = concurrency
        self._need_sop_classes = plan.output_tags is not None and _SOP_CLASSES_TAG in plan.output_tags
        self._study_aggregates: dict[str, _StudyAggregates] = {}
        self._series_counts: dict[tuple[str, str], int] = {}

    async def search(self, query: QidoQuery) -> AsyncGenerator[Dataset, None]:
        """Yield the matching results, de-duplicated, completed and filtered, in PACS order."""
        stream = self._descend(0, None)
        skipped = 0
        produced = 0
        async with aclosing(stream):  # type: ignore[type-var]
            async for dataset in stream:
                if skipped < query.offset:
                    skipped += 1
                    continue
                if query.limit is not None and produced >= query.limit:
                    return
                produced += 1
                yield dataset

    async def _descend(self, index: int, parent: Dataset | None) -> AsyncIterator[Dataset]:
        level = self._plan.levels[index]
        keys = list(self._plan.upstream_keys[level])
        if parent is not None:
            # Hierarchical query: the parents' unique keys, one value each (PS3.4 C.4.1.2.1.3).
            for upper in _LEVELS[: level.depth]:
                uid = _uid(parent, upper)
                keys = [k for k in keys if k.keyword != UNIQUE_KEY[upper]]
                keys.append(MatchKey((_UNIQUE_TAGS[upper],), UNIQUE_KEY[upper], "UI", MatchType.SINGLE, (uid,)))
        identifier = build_identifier(level, keys, self._plan.return_tags[level])
        found = self._unique(self._client.find(identifier), level, parent)
        prepared = map_ordered(found, lambda ds: self._prepare(ds, level), self._concurrency)
        last = index == len(self._plan.levels) - 1
        async with aclosing(prepared):  # type: ignore[type-var]
            async for dataset in prepared:
                if dataset is None:
                    continue
                if last:
                    yield dataset
                    continue
                children = self._descend(index + 1, dataset)
                async with aclosing(children):  # type: ignore[type-var]
                    async for child in children:
                        yield child

    async def _unique(
        self, found: AsyncIterator[Dataset], level: QueryLevel, parent: Dataset | None
    ) -> AsyncIterator[Dataset]:
        seen: set[str] = set()
        async with aclosing(found):  # type: ignore[type-var]
            async for dataset in found:
                uid = _uid(dataset, level)
                if not uid or uid in seen:
                    continue
                seen.add(uid)
                if parent is not None:
                    for element in parent:
                        if element.tag not in dataset:
                            dataset.add(element)
                yield dataset

    def _wants(self, tag_value: int) -> bool:
        output = self._plan.output_tags
        return (
            output is None
            or tag_value in output
            or any(k.tag == tag_value for lvl in self._plan.local_keys for k in self._plan.local_keys[lvl])
        )

    async def _prepare(self, dataset: Dataset, level: QueryLevel) -> Dataset | None:
        """Complete the computed attributes `dataset` lacks, then apply the gateway's matching."""
        study_uid = _uid(dataset, QueryLevel.STUDY)
        if study_uid and self._needs_study_aggregates(dataset):
            aggregates = await self._aggregates_of(study_uid)
            if self._wants(_MODALITIES_TAG):
                dataset.add_new(_MODALITIES_TAG, "CS", aggregates.modalities)
            dataset.NumberOfStudyRelatedSeries = aggregates.series
            dataset.NumberOfStudyRelatedInstances = aggregates.instances
            if self._need_sop_classes:
                dataset.add_new(_SOP_CLASSES_TAG, "UI", aggregates.sop_classes)
        series_uid = _uid(dataset, QueryLevel.SERIES)
        if series_uid and self._wants(_SERIES_COUNT_TAG) and _is_empty(dataset, _SERIES_COUNT_TAG):
            dataset.NumberOfSeriesRelatedInstances = await self._count_instances(study_uid, series_uid)
        for lvl in self._plan.levels:
            for key in self._plan.local_keys[lvl]:
                applies = level_of(key.keyword, self._plan.level).depth <= level.depth
                if applies and not matches(key, _values(dataset, key)):
                    return None
        return dataset

    def _needs_study_aggregates(self, dataset: Dataset) -> bool:
        if not any(self._wants(t) for t in _COMPUTED_STUDY_TAGS) and not self._need_sop_classes:
            return False
        if any(self._wants(t) and _is_empty(dataset, t) for t in _COMPUTED_STUDY_TAGS):
            return True
        if self._wants(_MODALITIES_TAG) and not self._caps.modalities_in_study:
            return True  # the PACS's value may be stale or made up: compute the true one
        return self._need_sop_classes and not dataset.get(_SOP_CLASSES_TAG)

    async def _aggregates_of(self, study_uid: str) -> _StudyAggregates:
        cached = self._study_aggregates.get(study_uid)
        if cached is not None:
            return cached
        study_key = MatchKey(
            (_UNIQUE_TAGS[QueryLevel.STUDY],), "StudyInstanceUID", "UI", MatchType.SINGLE, (study_uid,)
        )
        returns = [tag("SeriesInstanceUID"), tag("Modality"), _SERIES_COUNT_TAG]
        series: dict[str, Dataset] = {}
        identifier = build_identifier(QueryLevel.SERIES, [study_key], returns)
        async with aclosing(self._client.find(identifier)) as found:  # type: ignore[type-var]
            async for dataset in found:
                uid = _uid(dataset, QueryLevel.SERIES)
                if uid:
                    series.setdefault(uid, dataset)

        async def count(uid: str) -> tuple[int, list[str]]:
            if not _is_empty(series[uid], _SERIES_COUNT_TAG) and not self._need_sop_classes:
                return int(series[uid][_SERIES_COUNT_TAG].value), []
            return await self._instances_of(study_uid, uid)

        totals = [r async for r in map_ordered(_aiter(series), count, self._concurrency)]
        modalities = sorted({str(ds.get("Modality", "")).strip() for ds in series.values()} - {""})
        sop_classes = sorted({c for _, classes in totals for c in classes})
        aggregates = _StudyAggregates(modalities, len(series), sum(n for n, _ in totals), sop_classes)
        self._study_aggregates[study_uid] = aggregates
        return aggregates

    async def _count_instances(self, study_uid: str, series_uid: str) -> int:
        cached = self._series_counts.get((study_uid, series_uid))
        if cached is None:
            cached = (await self._instances_of(study_uid, series_uid))[0]
        return cached

    async def _instances_of(self, study_uid: str, series_uid: str) -> tuple[int, list[str]]:
        keys = [
            MatchKey((_UNIQUE_TAGS[QueryLevel.STUDY],), "StudyInstanceUID", "UI", MatchType.SINGLE, (study_uid,)),
            MatchKey((_UNIQUE_TAGS[QueryLevel.SERIES],), "SeriesInstanceUID", "UI", MatchType.SINGLE, (series_uid,)),
        ]
        identifier = build_identifier(QueryLevel.IMAGE, keys, [tag("SOPInstanceUID"), tag("SOPClassUID")])
        instances: set[str] = set()
        classes: set[str] = set()
        async with aclosing(self._client.find(identifier)) as found:  # type: ignore[type-var]
            async for dataset in found:
                uid = _uid(dataset, QueryLevel.IMAGE)
                if uid:
                    instances.add(uid)
                    sop_class = str(dataset.get("SOPClassUID", "")).rstrip("\x00 ")
                    if sop_class:
                        classes.add(sop_class)
        self._series_counts[(study_uid, series_uid)] = len(instances)
        return len(instances), sorted(classes)


async def _aiter(items: Iterable[str]) -> AsyncIterator[str]:
    for item in items:
        yield item


def _is_empty(dataset: Dataset, tag_value: int) -> bool:
    element = dataset.get(tag_value)
    return element is None or element.value in (None, "", [])

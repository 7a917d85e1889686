"""Answer a :class:`QidoQuery` with C-FINDs, whatever the upstream can do.

The same query gives the same answer in front of a capable PACS and a strict legacy one
(requirement G1). What the PACS cannot do is emulated:

- relational queries (PS3.4 C.4.1.2.1.4): a PACS that is hierarchical only is queried level by
  level, studies first, then the series of each study, then the instances of each series;
- computed attributes (PS3.4 C.3.4): ModalitiesInStudy, NumberOfStudyRelatedSeries/Instances and
  NumberOfSeriesRelatedInstances are derived from what the PACS holds now, by lower-level C-FINDs
  (:mod:`gateway.search.aggregates`), unless the upstream is configured as trusted
  (``trusted_aggregates``): a PACS's own values may be stale (requirement G5);
- ModalitiesInStudy as a match key, on a relational PACS: a SERIES C-FIND on Modality finds the
  studies, a STUDY C-FIND of their UIDs (in batches) answers them;
- matching the PACS gets wrong (ModalitiesInStudy, value lists, person names in any case) is
  taken out of the upstream identifier and done by the gateway (:mod:`gateway.query.matching`);
- duplicates (one STUDY answer per instance) are dropped on the level's unique key.

Every sub-query is a separate C-FIND on its own pooled association (associations are reused,
never opened per C-FIND). A hierarchical fan-out runs the child C-FINDs of up to
``fanout_concurrency`` parents at once (they may find up to as many more children than a page
needs), and the aggregate C-FINDs of a batch up to ``fanout_concurrency`` at once; the pool's
``max_associations`` bounds what reaches the PACS. The aggregates an answer returns are derived for its page
only (after ``offset`` and ``limit``), a batch of results at a time, so the number of C-FINDs of a
study search does not grow with the number of studies on a relational PACS.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Callable, Coroutine
from contextlib import aclosing
from dataclasses import dataclass, field
from functools import partial
from typing import Any

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
from gateway.search.aggregates import UID_LIST_SIZE, AggregateDeriver, StaleAggregates, uid_key
from gateway.search.batches import chunked, gather
from gateway.settings import Capabilities

__all__ = ["SearchPlan", "Searcher", "plan_search"]

_LEVELS = (QueryLevel.STUDY, QueryLevel.SERIES, QueryLevel.IMAGE)
_SERIES_COUNT_TAG = tag(COMPUTED_SERIES_ATTRIBUTES[0])
_MODALITIES_TAG = tag("ModalitiesInStudy")
_MODALITY_TAG = tag("Modality")
_STUDY_SERIES_TAG = tag("NumberOfStudyRelatedSeries")
_STUDY_INSTANCES_TAG = tag("NumberOfStudyRelatedInstances")
_SOP_CLASSES_TAG = tag("SOPClassesInStudy")
# The aggregates the gateway derives: of a study from its series (and instances), of a series.
_STUDY_DERIVED_TAGS = frozenset({tag(k) for k in COMPUTED_STUDY_ATTRIBUTES} | {_SOP_CLASSES_TAG})
_INSTANCE_DERIVED_TAGS = frozenset({_STUDY_INSTANCES_TAG, _SOP_CLASSES_TAG})
_DERIVED_TAGS = _STUDY_DERIVED_TAGS | {_SERIES_COUNT_TAG}
_Derived = tuple[str, list[str] | int | None]
"""A derived value and its VR; ``None`` when it was not derived."""
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
    modality_series_key: MatchKey | None = None
    """A ModalitiesInStudy key matched through a relational SERIES C-FIND on Modality, when the
    PACS's own ModalitiesInStudy is not trusted and the PACS takes relational queries."""


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
    if key.keyword in ("ModalitiesInStudy", "SOPClassesInStudy"):
        return bool(caps.trusted_aggregates)  # an untrusted PACS may match on a stale value
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
    modalities = query.key("ModalitiesInStudy")
    by_series = (
        levels == (QueryLevel.STUDY,)
        and bool(caps.relational)
        and not caps.trusted_aggregates
        and modalities is not None
        and modalities.match_type is not MatchType.UNIVERSAL
    )
    return SearchPlan(
        level=query.level,
        levels=levels,
        upstream_keys=upstream_keys,
        local_keys=local_keys,
        return_tags=return_tags,
        output_tags=None if query.include_all else frozenset(output),
        warnings=warnings,
        modality_series_key=modalities if by_series else None,
    )


def _keyword(tag_value: int) -> str:
    return keyword_for_tag(tag_value) or ""


def _values(dataset: Dataset, key: MatchKey) -> list[str]:
    element = dataset.get(key.tag)
    return normalise_values(element.value) if element is not None else []


def _uid(dataset: Dataset, level: QueryLevel) -> str:
    return str(dataset.get(UNIQUE_KEY[level], "")).rstrip("\x00 ")


class Searcher:
    """Runs one planned search on one upstream; one instance per request (it memoises aggregates).

    Results flow in batches of up to :data:`UID_LIST_SIZE`: the gateway's matching is applied to a
    batch (after deriving the aggregates a match key needs), ``offset`` and ``limit`` to the
    matches, and only then are the aggregates the answer returns derived, for the page alone.
    """

    def __init__(
        self,
        client: UpstreamClient,
        caps: Capabilities,
        plan: SearchPlan,
        concurrency: int,
        stale: StaleAggregates | None = None,
    ) -> None:
        self._client = client
        self._caps = caps
        self._plan = plan
        self._trusted = bool(caps.trusted_aggregates)
        self._stale = stale
        self._stale_studies: set[str] = set()
        self._concurrency = concurrency
        self._aggregates = AggregateDeriver(
            client,
            relational=bool(caps.relational),
            concurrency=concurrency,
            instances_by_study=bool(caps.instances_by_study),
        )
        output = plan.output_tags
        self._output_derived = (
            _DERIVED_TAGS - {_SOP_CLASSES_TAG} if output is None else frozenset(output & _DERIVED_TAGS)
        )
        # A hierarchical PACS that answers IMAGE C-FINDs by study gives a study's modalities and
        # counts in one C-FIND, as many as matching ModalitiesInStudy takes SERIES C-FINDs: so the
        # candidates are counted while they are matched, and the page needs no C-FIND of its own.
        self._count_while_matching = (
            bool(caps.instances_by_study)
            and not caps.relational
            and not self._trusted
            and _STUDY_INSTANCES_TAG in self._output_derived
        )
        self._batch_is_page = False
        self._keys_at: dict[QueryLevel, list[MatchKey]] = {}
        for level in plan.levels:
            keys = {
                k.tag: k
                for lvl in plan.levels
                for k in plan.local_keys[lvl]
                if level_of(k.keyword, plan.level).depth <= level.depth
            }
            if plan.modality_series_key is not None:
                keys.pop(_MODALITIES_TAG, None)  # every study the SERIES C-FIND found has such a series
            self._keys_at[level] = list(keys.values())

    async def search(self, query: QidoQuery) -> AsyncGenerator[Dataset, None]:
        """Yield the matching results, de-duplicated, completed and filtered, in PACS order."""
        # A batch of studies found through their series is the page itself when nothing is skipped
        # and the limit takes a whole batch: its aggregates are then derived alongside its STUDY C-FIND.
        self._batch_is_page = query.offset == 0 and (query.limit is None or query.limit >= UID_LIST_SIZE)
        page = _page(self._descend(0, None), query.offset, query.limit)
        async with aclosing(chunked(page, UID_LIST_SIZE)) as batches:  # type: ignore[type-var]
            async for batch in batches:
                await self._complete(batch, self._output_derived)
                for dataset in batch:
                    yield dataset

    async def _descend(self, index: int, parent: Dataset | None) -> AsyncIterator[Dataset]:
        level = self._plan.levels[index]
        if self._plan.modality_series_key is not None:
            found = self._studies_with_series(self._plan.modality_series_key)
        else:
            keys = list(self._plan.upstream_keys[level])
            if parent is not None:
                # Hierarchical query: the parents' unique keys, one value each (PS3.4 C.4.1.2.1.3).
                for upper in _LEVELS[: level.depth]:
                    keys = [k for k in keys if k.keyword != UNIQUE_KEY[upper]]
                    keys.append(uid_key(upper, [_uid(parent, upper)]))
            identifier = build_identifier(level, keys, self._plan.return_tags[level])
            found = self._unique(self._client.find(identifier), level, parent)
        last = index == len(self._plan.levels) - 1
        # The children of the parents one level above the last are one C-FIND each: those of
        # `fanout_concurrency` parents run together (higher up, one parent at a time, so that the
        # C-FINDs of nested levels do not multiply).
        window = self._concurrency if index == len(self._plan.levels) - 2 else 1
        async with aclosing(chunked(found, UID_LIST_SIZE)) as batches:  # type: ignore[type-var]
            async for batch in batches:
                parents = await self._matching(batch, level)
                if last:
                    for dataset in parents:
                        yield dataset
                    continue
                for start in range(0, len(parents), window):
                    group = parents[start : start + window]
                    if len(group) > 1:
                        for children in await self._children(index + 1, group):
                            for child in children:
                                yield child
                        continue
                    # One parent: stream its children, so that a page filled early stops its C-FIND.
                    streamed = self._descend(index + 1, group[0])
                    async with aclosing(streamed):  # type: ignore[type-var]
                        async for child in streamed:
                            yield child

    async def _children(self, index: int, parents: list[Dataset]) -> list[list[Dataset]]:
        """The results at level `index` under each of `parents`, their C-FINDs run together."""
        found: list[list[Dataset]] = [[] for _ in parents]

        def fill(slot: int) -> Callable[[], Coroutine[Any, Any, None]]:
            async def call() -> None:
                found[slot] = await _collect(self._descend(index, parents[slot]))

            return call

        await gather([fill(slot) for slot in range(len(parents))])
        return found

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

    async def _studies_with_series(self, key: MatchKey) -> AsyncIterator[Dataset]:
        """The studies holding a series whose Modality matches `key` (ModalitiesInStudy), in the
        order the SERIES C-FIND finds them; each batch of them then by one STUDY C-FIND of its UIDs.

        The SERIES C-FIND (a relational query) carries the study-level keys the PACS is trusted
        with, so that it finds few studies the STUDY C-FIND then drops.
        """
        study_keys = [k for k in self._plan.upstream_keys[QueryLevel.STUDY] if k.keyword != "ModalitiesInStudy"]
        modality = MatchKey((_MODALITY_TAG,), "Modality", "CS", key.match_type, key.values)
        series_keys = study_keys + ([modality] if _send_upstream(modality, self._caps) else [])
        returns = [_UNIQUE_TAGS[QueryLevel.STUDY], _UNIQUE_TAGS[QueryLevel.SERIES], _MODALITY_TAG]
        series = self._client.find(build_identifier(QueryLevel.SERIES, series_keys, returns))
        others = [k for k in study_keys if k.keyword != "StudyInstanceUID"]
        async with aclosing(chunked(_studies_of(series, key), UID_LIST_SIZE)) as batches:  # type: ignore[type-var]
            async for uids in batches:
                keys = [*others, uid_key(QueryLevel.STUDY, uids)]
                identifier = build_identifier(QueryLevel.STUDY, keys, self._plan.return_tags[QueryLevel.STUDY])
                found: dict[str, Dataset] = {}
                calls = [partial(self._find_studies, identifier, found)]
                if self._batch_is_page:
                    calls.append(partial(self._load, [(uid, "", self._output_derived) for uid in uids]))
                await gather(calls)
                for uid in uids:
                    if uid in found:
                        yield found[uid]

    async def _find_studies(self, identifier: Dataset, found: dict[str, Dataset]) -> None:
        """Run a STUDY C-FIND, keeping the first answer for each StudyInstanceUID in `found`."""
        async with aclosing(self._client.find(identifier)) as studies:  # type: ignore[type-var]
            async for dataset in studies:
                found.setdefault(_uid(dataset, QueryLevel.STUDY), dataset)

    async def _matching(self, batch: list[Dataset], level: QueryLevel) -> list[Dataset]:
        """The datasets of `batch` that satisfy the keys the gateway checks at `level`."""
        keys = self._keys_at[level]
        tags = frozenset(k.tag for k in keys) & _DERIVED_TAGS
        if self._count_while_matching and tags & _STUDY_DERIVED_TAGS:
            tags |= self._output_derived & _STUDY_DERIVED_TAGS
        await self._complete(batch, tags)
        return [ds for ds in batch if all(self._satisfies(ds, key) for key in keys)]

    def _satisfies(self, dataset: Dataset, key: MatchKey) -> bool:
        values = _values(dataset, key)
        if key.tag in _DERIVED_TAGS and not self._trusted and key.match_type is not MatchType.UNIVERSAL:
            return bool(values) and matches(key, values)  # derived: an empty value is the truth
        return matches(key, values)

    async def _complete(self, batch: list[Dataset], tags: frozenset[int]) -> None:
        """Set the aggregates `tags` of each dataset of `batch`: derived unless the PACS is trusted
        (then only where it left them empty)."""
        if not tags:
            return
        todo = [(ds, frozenset(t for t in tags if not self._trusted or _is_empty(ds, t))) for ds in batch]
        await self._load([(_uid(ds, QueryLevel.STUDY), _uid(ds, QueryLevel.SERIES), t) for ds, t in todo])
        for dataset, missing in todo:
            self._write(dataset, missing)

    async def _load(self, wanted: list[tuple[str, str, frozenset[int]]]) -> None:
        """Derive the aggregates `tags` of each ``(study UID, series UID, tags)`` of `wanted`."""
        series_of: list[str] = []
        instances_of: list[str] = []
        series: list[tuple[str, str]] = []
        sop_classes = False
        for study_uid, series_uid, tags in wanted:
            if study_uid and _STUDY_DERIVED_TAGS & tags:
                series_of.append(study_uid)
                if _INSTANCE_DERIVED_TAGS & tags:
                    instances_of.append(study_uid)
                sop_classes = sop_classes or _SOP_CLASSES_TAG in tags
            if series_uid and _SERIES_COUNT_TAG in tags:
                series.append((study_uid, series_uid))
        await self._aggregates.load(
            series_of=series_of, instances_of=instances_of, sop_classes=sop_classes, series=series
        )

    def _write(self, dataset: Dataset, tags: frozenset[int]) -> None:
        study_uid = _uid(dataset, QueryLevel.STUDY)
        derived: dict[int, _Derived] = {}
        if study_uid and _STUDY_DERIVED_TAGS.intersection(tags):
            study = self._aggregates.study(study_uid)
            table: dict[int, _Derived] = {
                _MODALITIES_TAG: ("CS", study.modalities),
                _STUDY_SERIES_TAG: ("IS", study.series),
                _STUDY_INSTANCES_TAG: ("IS", study.instances),
                _SOP_CLASSES_TAG: ("UI", study.sop_classes),
            }
            derived = {t: table[t] for t in tags if t in table}
            if not self._trusted:
                self._compare(dataset, study_uid, derived)
        series_uid = _uid(dataset, QueryLevel.SERIES)
        if series_uid and _SERIES_COUNT_TAG in tags:
            derived[_SERIES_COUNT_TAG] = ("IS", self._aggregates.series_count(series_uid))
        for tag_value, (vr, value) in derived.items():
            if value is not None:
                dataset.add_new(tag_value, vr, value)

    def _compare(self, dataset: Dataset, study_uid: str, derived: dict[int, _Derived]) -> None:
        """Count a study whose PACS-held aggregates disagree with the derived ones (once a request)."""
        if self._stale is None or study_uid in self._stale_studies:
            return
        disagreements = []
        for tag_value, (_, value) in sorted(derived.items()):
            element = dataset.get(tag_value)
            held = normalise_values(element.value) if element is not None else []
            if not held or value is None:
                continue
            fresh = sorted({str(v) for v in value}) if isinstance(value, list) else [str(value)]
            if sorted(set(held)) != fresh:
                disagreements.append(f"{_keyword(tag_value)} {'/'.join(held)} (derived: {'/'.join(fresh)})")
        if disagreements:
            self._stale_studies.add(study_uid)
            self._stale.record(study_uid, disagreements)


async def _page(source: AsyncIterator[Dataset], offset: int, limit: int | None) -> AsyncIterator[Dataset]:
    """`limit` items of `source` after the first `offset`; stops reading `source` once they are out."""
    if limit == 0:
        return
    skipped = 0
    produced = 0
    async with aclosing(source):  # type: ignore[type-var]
        async for dataset in source:
            if skipped < offset:
                skipped += 1
                continue
            yield dataset
            produced += 1
            if limit is not None and produced >= limit:
                return


async def _studies_of(series: AsyncIterator[Dataset], key: MatchKey) -> AsyncIterator[str]:
    """The distinct StudyInstanceUIDs of the series answers whose Modality matches `key`."""
    seen: set[str] = set()
    async with aclosing(series):  # type: ignore[type-var]
        async for dataset in series:
            uid = _uid(dataset, QueryLevel.STUDY)
            element = dataset.get(_MODALITY_TAG)
            modality = normalise_values(element.value) if element is not None else []
            if uid and uid not in seen and modality and matches(key, modality):
                seen.add(uid)
                yield uid


async def _collect(source: AsyncIterator[Dataset]) -> list[Dataset]:
    async with aclosing(source):  # type: ignore[type-var]
        return [dataset async for dataset in source]


def _is_empty(dataset: Dataset, tag_value: int) -> bool:
    element = dataset.get(tag_value)
    return element is None or element.value in (None, "", [])

"""An ImagingStudy search answered with C-FINDs: which studies match, and the page's series.

The plan:

1. Series-level conditions (``modality``, ``series``), on a relational PACS: one SERIES C-FIND
   per parameter (``Modality=CT\\PT`` as a list, or one per code when the PACS cannot match
   lists), giving the StudyInstanceUIDs that have such a series. ``modality`` is defined on
   ``series.modality`` (F6), so the PACS's study-level ModalitiesInStudy is never used.
2. One STUDY C-FIND with what the PACS can match: the StudyInstanceUID list (from ``_id``,
   ``identifier`` and step 1, in sorted chunks), AccessionNumber, PatientID, a StudyDate range
   a little wider than ``started``. Its answers stream, and stop (C-CANCEL) once the page and
   one more study are found.
3. Every answer is checked again by the gateway (exact ``started`` periods, identifier systems,
   the PatientID a request is bound to, and on a hierarchical PACS the series conditions, from
   one SERIES C-FIND per candidate study, whose answers also serve the page).
4. The page's studies get their series and instance counts (:func:`gateway.fhir.study.load_series`).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import aclosing
from dataclasses import dataclass
from datetime import date, timedelta

from pydicom.dataset import Dataset

from gateway.auth.patient import same_patient
from gateway.fhir.finds import FindCounter, find_unique, gather_bounded, key, uid_key
from gateway.fhir.params import StudySearch
from gateway.fhir.records import SeriesRecord, StudyRecord
from gateway.fhir.study import SERIES_RETURN_KEYS, STUDY_RETURN_KEYS, load_series, series_record
from gateway.fhir.values import patient_system, started_interval, text
from gateway.query.attributes import QueryLevel
from gateway.query.params import MatchKey, MatchType
from gateway.settings import Capabilities
from gateway.upstreams import Upstream

__all__ = ["SearchPage", "search_studies"]

logger = logging.getLogger(__name__)

_UID_CHUNK = 200
"""StudyInstanceUIDs per STUDY C-FIND: a list this long is a few kB of identifier."""


@dataclass
class SearchPage:
    """One page of matches: the studies, whether more follow, or only the total (``_summary=count``)."""

    records: list[StudyRecord]
    more: bool
    total: int | None = None


class _Plan:
    def __init__(self, search: StudySearch, upstream: Upstream, caps: Capabilities, patient_id: str | None) -> None:
        self.search = search
        self.upstream = upstream
        self.caps = caps
        self.patient_id = patient_id
        self.zone = upstream.client.settings.timezone
        self.series_of: dict[str, list[SeriesRecord]] = {}

    def study_keys(self) -> list[MatchKey]:
        """What the STUDY C-FIND asks the PACS to match, besides the StudyInstanceUID list."""
        search = self.search
        keys: list[MatchKey] = []
        accessions = [m.accessions for m in search.identifiers if m.accessions and not m.study_uids and not m.other]
        if accessions:
            wanted = sorted(frozenset.intersection(*accessions))
            if len(wanted) == 1 or (wanted and self.caps.list_matching):
                keys.append(key("AccessionNumber", wanted))
        if self.patient_id is not None:
            keys.append(key("PatientID", [self.patient_id]))
        else:
            values = next((p for p in search.patients if len(p) == 1 or self.caps.list_matching), None)
            if values is not None:
                keys.append(key("PatientID", sorted({m.value for m in values})))
        dates = self.date_range()
        if dates is not None:
            low, high = dates
            value = f"{low.strftime('%Y%m%d') if low else ''}-{high.strftime('%Y%m%d') if high else ''}"
            keys.append(key("StudyDate", [value], MatchType.RANGE))
        return keys

    def date_range(self) -> tuple[date | None, date | None] | None:
        """A StudyDate range that holds every study ``started`` can match; None when unbounded.

        Two days wider on each side than the parameters: the PACS's dates are local, the
        parameters may be in any zone; the gateway checks the exact periods after.
        """
        low: date | None = None
        high: date | None = None
        slack = timedelta(days=2)
        for bound in self.search.started:
            try:
                if bound.prefix in ("eq", "ge", "gt"):
                    edge = (bound.low if bound.prefix != "gt" else bound.high) - slack
                    low = max(low, edge.date()) if low else edge.date()
                if bound.prefix in ("eq", "le", "lt"):
                    edge = (bound.high if bound.prefix != "lt" else bound.low) + slack
                    high = min(high, edge.date()) if high else edge.date()
            except OverflowError:
                continue  # a bound near year 1 or 9999: the PACS is not asked to narrow it
        if low is None and high is None:
            return None
        return low, high

    def impossible(self) -> bool:
        """Whether the conditions exclude every study before any C-FIND (contradictory ranges)."""
        dates = self.date_range()
        if dates is not None and dates[0] is not None and dates[1] is not None and dates[0] > dates[1]:
            return True
        accessions = [m.accessions for m in self.search.identifiers if not m.study_uids]
        return bool(accessions) and not frozenset.intersection(*accessions)

    def study_matches(self, study: Dataset) -> bool:
        """The gateway's own check of a STUDY answer against every study-level condition."""
        search = self.search
        uid = text(study, "StudyInstanceUID")
        patient = text(study, "PatientID")
        if self.patient_id is not None and not same_patient(patient, self.patient_id):
            return False
        if any(uid not in ids for ids in search.ids):
            return False
        accession = text(study, "AccessionNumber")
        for match in search.identifiers:
            if uid not in match.study_uids and (not accession or accession not in match.accessions):
                return False
        system = patient_system(text(study, "IssuerOfPatientID")) or ""
        for values in search.patients:
            if not any(m.value == patient and m.system in (None, system) for m in values):
                return False
        if search.started:
            period = started_interval(study, self.zone)
            if period is None or not all(bound.matches(*period) for bound in search.started):
                return False
        return all("available" in codes for codes in search.statuses)


async def _series_study_uids(plan: _Plan, counter: FindCounter) -> set[str] | None:
    """Step 1 on a relational PACS: the studies with a series for every series-level condition."""
    search = plan.search
    if not (search.modalities or search.series):
        return None
    client = plan.upstream.client
    patient = [key("PatientID", [plan.patient_id])] if plan.patient_id is not None else []
    queries: list[tuple[list[MatchKey], frozenset[str] | None, int]] = []
    for index, codes in enumerate(search.modalities):
        if plan.caps.list_matching or len(codes) == 1:
            queries += [([key("Modality", sorted(codes)), *patient], codes, index)] if codes else []
        else:
            queries += [([key("Modality", [code]), *patient], codes, index) for code in sorted(codes)]
    offset = len(search.modalities)
    for index, uids in enumerate(search.series):
        queries.append(([uid_key("SeriesInstanceUID", uids), *patient], None, offset + index))
    found: list[set[str]] = [set() for _ in range(offset + len(search.series))]

    async def run(query: tuple[list[MatchKey], frozenset[str] | None, int]) -> None:
        keys, codes, index = query
        returns = ("StudyInstanceUID", "SeriesInstanceUID", "Modality")
        async with aclosing(find_unique(client, QueryLevel.SERIES, keys, returns, counter)) as answers:  # type: ignore[type-var]
            async for dataset in answers:
                if codes is None:
                    if text(dataset, "SeriesInstanceUID") not in search.series[index - offset]:
                        continue
                elif text(dataset, "Modality").upper() not in codes:
                    continue  # the PACS's matching is checked, as everywhere
                found[index].add(text(dataset, "StudyInstanceUID"))

    await gather_bounded(queries, run, client.settings.max_associations)
    return set.intersection(*found) if found else set()


async def _study_answers(plan: _Plan, uids: set[str] | None, counter: FindCounter) -> AsyncIterator[Dataset]:
    """Step 2: stream the STUDY answers, over sorted UID chunks when the UIDs are known."""
    keys = plan.study_keys()
    client = plan.upstream.client
    if uids is None:
        async with aclosing(find_unique(client, QueryLevel.STUDY, keys, STUDY_RETURN_KEYS, counter)) as answers:  # type: ignore[type-var]
            async for dataset in answers:
                yield dataset
        return
    ordered = sorted(uids)
    for start in range(0, len(ordered), _UID_CHUNK):
        chunk = [uid_key("StudyInstanceUID", ordered[start : start + _UID_CHUNK]), *keys]
        async with aclosing(find_unique(client, QueryLevel.STUDY, chunk, STUDY_RETURN_KEYS, counter)) as answers:  # type: ignore[type-var]
            async for dataset in answers:
                yield dataset


def _uid_conditions(search: StudySearch) -> list[frozenset[str]]:
    return [*search.ids, *(m.study_uids for m in search.identifiers if m.study_uids and not m.accessions)]


async def _has_series(plan: _Plan, studies: Sequence[Dataset], counter: FindCounter) -> list[bool]:
    """Step 3 on a hierarchical PACS: whether each study has a series for every series condition.

    The series of a matching study are kept in ``plan.series_of``: its page needs them again.
    """
    search = plan.search
    client = plan.upstream.client

    async def check(study: Dataset) -> bool:
        uid = text(study, "StudyInstanceUID")
        keys = [uid_key("StudyInstanceUID", [uid])]
        async with aclosing(find_unique(client, QueryLevel.SERIES, keys, SERIES_RETURN_KEYS, counter)) as answers:  # type: ignore[type-var]
            series = [series_record(dataset) async for dataset in answers]
        ok = all(any(s.modality in codes for s in series) for codes in search.modalities) and all(
            any(s.uid in uids for s in series) for uids in search.series
        )
        if ok:
            plan.series_of[uid] = series
        return ok

    return await gather_bounded(list(studies), check, client.settings.max_associations)


async def _matching_studies(plan: _Plan, counter: FindCounter) -> AsyncIterator[Dataset]:
    """Every matching study, in a stable order (the PACS's, or by UID chunk)."""
    search = plan.search
    if plan.impossible():
        return
    conditions = _uid_conditions(search)
    uids: set[str] | None = set(frozenset.intersection(*conditions)) if conditions else None
    series_level = bool(search.modalities or search.series)
    if series_level and plan.caps.relational:
        from_series = await _series_study_uids(plan, counter)
        assert from_series is not None
        uids = from_series if uids is None else uids & from_series
        series_level = False
    if uids is not None and not uids:
        return
    candidates: list[Dataset] = []
    async with aclosing(_study_answers(plan, uids, counter)) as answers:  # type: ignore[type-var]
        async for study in answers:
            if not plan.study_matches(study):
                continue
            if not series_level:
                yield study
            else:
                # Held until the STUDY C-FIND is over: its association must not stay busy while
                # the series are asked for (with max_associations = 1 that would never end).
                candidates.append(study)
    batch_size = plan.upstream.client.settings.max_associations
    for start in range(0, len(candidates), batch_size):
        batch = candidates[start : start + batch_size]
        for candidate, ok in zip(batch, await _has_series(plan, batch, counter), strict=True):
            if ok:
                yield candidate


async def search_studies(
    upstream: Upstream, search: StudySearch, *, patient_id: str | None = None, counter: FindCounter | None = None
) -> SearchPage:
    """Run `search` against `upstream`: one page of studies with their series (no instance lists).

    `patient_id`, when set, is the PatientID the request is bound to: the C-FINDs carry it and
    every answer is checked against it.
    """
    counter = counter or FindCounter()
    caps = await upstream.capabilities.get(upstream.client)
    plan = _Plan(search, upstream, caps, patient_id)
    studies: list[Dataset] = []
    seen = 0
    wanted = search.offset + search.count + 1
    async with aclosing(_matching_studies(plan, counter)) as matching:  # type: ignore[type-var]
        async for study in matching:
            seen += 1
            if search.summary_count:
                continue
            if seen > search.offset:
                studies.append(study)
            if seen >= wanted:
                break
    if search.summary_count:
        return SearchPage([], False, total=seen)
    more = len(studies) > search.count
    studies = studies[: search.count]
    uids = [text(s, "StudyInstanceUID") for s in studies]
    relational = bool(caps.relational)
    known = plan.series_of
    loaded = await load_series(
        upstream, uids, list_instances=False, relational=relational, counter=counter, known=known
    )
    records = [StudyRecord(s, *loaded[uid]) for s, uid in zip(studies, uids, strict=True)]
    logger.debug("FHIR search on %s: %d studies, %d C-FINDs", upstream.name, len(records), counter.count)
    return SearchPage(records, more)

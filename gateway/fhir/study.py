"""One study, or a page of studies, read from the PACS with C-FINDs at SERIES and IMAGE level.

How many C-FINDs (``n`` studies, ``s`` series):

- relational PACS (PS3.4 C.4.1.2.1.4, e.g. Orthanc): one SERIES C-FIND and one IMAGE C-FIND
  over the StudyInstanceUID list, run at once (and the STUDY C-FIND of a read beside them);
- hierarchical PACS (dcmqrscp): one SERIES C-FIND per study, then one IMAGE C-FIND per series,
  up to the upstream's ``max_associations`` at a time.

The counts, numberOfSeries and modality come from these answers, never from the PACS's stored
study-level aggregates, which may be stale (G5, ``reference/attribute-modalities-in-study.txt``).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Mapping, Sequence
from contextlib import aclosing
from typing import Any

from pydicom.dataset import Dataset

from gateway.fhir.finds import FindCounter, find_unique, gather_bounded, run_concurrently, uid_key
from gateway.fhir.records import InstanceRecord, SeriesRecord, StudyRecord
from gateway.fhir.resource import imaging_study
from gateway.fhir.values import integer, text
from gateway.fhir.versions import FhirVersion
from gateway.query.attributes import QueryLevel
from gateway.upstreams import Upstream

__all__ = [
    "COUNT_RETURN_KEYS",
    "IMAGE_RETURN_KEYS",
    "SERIES_RETURN_KEYS",
    "STUDY_RETURN_KEYS",
    "build_imaging_study",
    "load_series",
    "series_record",
    "load_study",
]

logger = logging.getLogger(__name__)

STUDY_RETURN_KEYS = (
    "StudyInstanceUID",
    "PatientID",
    "IssuerOfPatientID",
    "PatientName",
    "StudyDate",
    "StudyTime",
    "TimezoneOffsetFromUTC",
    "AccessionNumber",
    "StudyDescription",
    "ReferringPhysicianName",
)
SERIES_RETURN_KEYS = (
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "Modality",
    "SeriesNumber",
    "SeriesDescription",
    "BodyPartExamined",
)
IMAGE_RETURN_KEYS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID", "InstanceNumber")
COUNT_RETURN_KEYS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")


class _Collector:
    """Instances of a set of studies as the IMAGE C-FINDs stream them: counted per series, and
    listed per study up to the cap (memory stays bounded by it, whatever the study's size)."""

    def __init__(self, list_instances: bool, max_instances: int) -> None:
        self._list = list_instances
        self._max = max_instances
        self._counts: dict[tuple[str, str], int] = defaultdict(int)
        self._instances: dict[str, list[tuple[str, InstanceRecord]]] = defaultdict(list)
        self._unlisted: set[str] = set()

    def add(self, dataset: Dataset, study_uid: str = "", series_uid: str = "") -> None:
        study = study_uid or text(dataset, "StudyInstanceUID")
        series = series_uid or text(dataset, "SeriesInstanceUID")
        self._counts[(study, series)] += 1
        if not self._list or study in self._unlisted:
            return
        sop_class = text(dataset, "SOPClassUID")
        listed = self._instances[study]
        if len(listed) >= self._max or not sop_class:
            if not sop_class:
                logger.debug("study %s: the PACS gives no SOPClassUID; instances are not listed", study)
            self._unlisted.add(study)
            listed.clear()
            return
        listed.append(
            (series, InstanceRecord(text(dataset, "SOPInstanceUID"), sop_class, integer(dataset, "InstanceNumber")))
        )

    def fill(self, study_uid: str, series: list[SeriesRecord]) -> bool:
        """Put the counts (and lists) into `series`; True when the instances are listed.

        Instances of a series the SERIES C-FIND did not return (stored in between) are left out.
        """
        for record in series:
            record.count = self._counts.get((study_uid, record.uid), 0)
        listed = self._list and study_uid not in self._unlisted
        if listed:
            by_uid = {record.uid: record for record in series}
            for series_uid, instance in self._instances.pop(study_uid, []):
                if series_uid in by_uid:
                    by_uid[series_uid].instances.append(instance)
        return listed


def series_record(dataset: Dataset) -> SeriesRecord:
    """A SERIES answer (asked with :data:`SERIES_RETURN_KEYS`) as a record, not yet counted."""
    return SeriesRecord(
        uid=text(dataset, "SeriesInstanceUID"),
        modality=text(dataset, "Modality").upper(),
        number=integer(dataset, "SeriesNumber"),
        description=text(dataset, "SeriesDescription"),
        body_part=text(dataset, "BodyPartExamined"),
    )


def _by_number(records: list[SeriesRecord]) -> list[SeriesRecord]:
    return sorted(records, key=lambda s: (s.number is None, s.number or 0, s.uid))


async def load_series(
    upstream: Upstream,
    study_uids: Sequence[str],
    *,
    list_instances: bool,
    relational: bool,
    counter: FindCounter | None = None,
    known: Mapping[str, list[SeriesRecord]] | None = None,
) -> dict[str, tuple[list[SeriesRecord], bool]]:
    """The series of each study with their instance counts (and lists): ``{uid: (series, listed)}``.

    `relational` says whether the PACS takes SERIES and IMAGE queries over a StudyInstanceUID list
    without the series UIDs; otherwise it is asked level by level. `known` holds series records
    this request already has from SERIES C-FINDs of its own (a hierarchical search's checks): those
    studies are not asked again.
    """
    client = upstream.client
    concurrency = client.settings.max_associations
    max_instances = client.settings.fhir_max_instances
    series: dict[str, list[SeriesRecord]] = {uid: [] for uid in study_uids}
    if not study_uids:
        return {}
    image_keys = IMAGE_RETURN_KEYS if list_instances else COUNT_RETURN_KEYS

    collector = _Collector(list_instances, max_instances)
    if relational:

        async def series_level() -> None:
            keys = [uid_key("StudyInstanceUID", study_uids)]
            async with aclosing(find_unique(client, QueryLevel.SERIES, keys, SERIES_RETURN_KEYS, counter)) as found:  # type: ignore[type-var]
                async for dataset in found:
                    study = text(dataset, "StudyInstanceUID")
                    if study in series:
                        series[study].append(series_record(dataset))

        async def image_level() -> None:
            keys = [uid_key("StudyInstanceUID", study_uids)]
            async with aclosing(find_unique(client, QueryLevel.IMAGE, keys, image_keys, counter)) as found:  # type: ignore[type-var]
                async for dataset in found:
                    collector.add(dataset)

        await run_concurrently(series_level, image_level)
    else:

        async def series_of(study: str) -> None:
            keys = [uid_key("StudyInstanceUID", [study])]
            async with aclosing(find_unique(client, QueryLevel.SERIES, keys, SERIES_RETURN_KEYS, counter)) as found:  # type: ignore[type-var]
                series[study] = [series_record(dataset) async for dataset in found]

        for uid in study_uids:
            if known is not None and uid in known:
                series[uid] = known[uid]
        await gather_bounded([uid for uid in study_uids if not series[uid]], series_of, concurrency)

        async def instances_of(pair: tuple[str, SeriesRecord]) -> None:
            study, record = pair
            keys = [uid_key("StudyInstanceUID", [study]), uid_key("SeriesInstanceUID", [record.uid])]
            async with aclosing(find_unique(client, QueryLevel.IMAGE, keys, image_keys, counter)) as found:  # type: ignore[type-var]
                async for dataset in found:
                    collector.add(dataset, study, record.uid)

        pairs = [(study, record) for study, records in series.items() for record in records]
        await gather_bounded(pairs, instances_of, concurrency)
    result: dict[str, tuple[list[SeriesRecord], bool]] = {}
    for uid in study_uids:
        records = _by_number(series[uid])
        result[uid] = (records, collector.fill(uid, records))
    return result


async def load_study(upstream: Upstream, study_uid: str, *, counter: FindCounter | None = None) -> StudyRecord | None:
    """The whole study, instances listed up to the cap; ``None`` when the PACS has no such study."""
    client = upstream.client
    caps = await upstream.capabilities.get(client)
    found: list[Dataset] = []
    loaded: dict[str, tuple[list[SeriesRecord], bool]] = {}

    async def study_level() -> None:
        keys = [uid_key("StudyInstanceUID", [study_uid])]
        async with aclosing(find_unique(client, QueryLevel.STUDY, keys, STUDY_RETURN_KEYS, counter)) as answers:  # type: ignore[type-var]
            found.extend([dataset async for dataset in answers])

    async def lower_levels() -> None:
        loaded.update(
            await load_series(
                upstream, [study_uid], list_instances=True, relational=bool(caps.relational), counter=counter
            )
        )

    await run_concurrently(study_level, lower_levels)
    study = next((ds for ds in found if text(ds, "StudyInstanceUID") == study_uid), None)
    if study is None:
        return None
    series, listed = loaded[study_uid]
    return StudyRecord(study, series, listed)


async def build_imaging_study(
    upstream: Upstream, study_uid: str, *, dicomweb_root: str, version: str
) -> dict[str, Any] | None:
    """The whole, fresh ImagingStudy of one study; ``None`` when the PACS has no such study.

    `dicomweb_root` is the DICOMweb service root the Endpoints point at; `version` is ``"R4"``
    or ``"R5"``. Raises :class:`~gateway.errors.UpstreamError` when the PACS fails.
    """
    if version not in ("R4", "R5"):
        raise ValueError(f"version must be 'R4' or 'R5', not {version!r}")
    record = await load_study(upstream, study_uid)
    if record is None:
        return None
    fhir_version: FhirVersion = "R4" if version == "R4" else "R5"
    return imaging_study(
        record, dicomweb_root=dicomweb_root, version=fhir_version, zone=upstream.client.settings.timezone
    )

"""What the C-FINDs told about a study, before it becomes a FHIR resource."""

from __future__ import annotations

from dataclasses import dataclass, field

from pydicom.dataset import Dataset

__all__ = ["InstanceRecord", "SeriesRecord", "StudyRecord"]


@dataclass(frozen=True)
class InstanceRecord:
    """One instance from an IMAGE-level C-FIND."""

    uid: str
    sop_class: str
    number: int | None


@dataclass
class SeriesRecord:
    """One series from a SERIES-level C-FIND, with what the IMAGE-level C-FINDs counted in it."""

    uid: str
    modality: str
    number: int | None
    description: str
    body_part: str
    count: int = 0
    instances: list[InstanceRecord] = field(default_factory=list)


@dataclass
class StudyRecord:
    """A study: its STUDY-level answer and its series as the PACS holds them now.

    `instances_listed` is False when the instance lists are left out: the study has more
    instances than the configured cap, or the PACS did not give every instance's SOP class
    (ImagingStudy.series.instance.sopClass is required).
    """

    study: Dataset
    series: list[SeriesRecord]
    instances_listed: bool

"""Which attributes belong to which query level, and what each level returns by default.

Sources: PS3.18 Tables 10.6.3-3/-4/-5 (default return attributes), PS3.4 C.6.2.1 (Study Root
keys per level) and C.3.4 (attributes the SCP computes).
"""

from __future__ import annotations

from enum import Enum

from pydicom.datadict import tag_for_keyword

__all__ = [
    "COMPUTED_SERIES_ATTRIBUTES",
    "COMPUTED_STUDY_ATTRIBUTES",
    "DEFAULT_RETURN_KEYWORDS",
    "GATEWAY_ATTRIBUTES",
    "LEVEL_KEYWORDS",
    "QueryLevel",
    "UNIQUE_KEY",
    "level_of",
    "tag",
]


class QueryLevel(Enum):
    """A Query/Retrieve level (QueryRetrieveLevel, 0008,0052), in hierarchy order."""

    STUDY = "STUDY"
    SERIES = "SERIES"
    IMAGE = "IMAGE"

    @property
    def depth(self) -> int:
        """0 for STUDY, 1 for SERIES, 2 for IMAGE."""
        return _DEPTH[self]


_DEPTH = {QueryLevel.STUDY: 0, QueryLevel.SERIES: 1, QueryLevel.IMAGE: 2}


def tag(keyword: str) -> int:
    """The tag of a dictionary keyword, as an int; KeyError for an unknown keyword."""
    value = tag_for_keyword(keyword)
    if value is None:
        raise KeyError(keyword)
    return int(value)


UNIQUE_KEY = {
    QueryLevel.STUDY: "StudyInstanceUID",
    QueryLevel.SERIES: "SeriesInstanceUID",
    QueryLevel.IMAGE: "SOPInstanceUID",
}

# Attributes the gateway makes itself and never asks the PACS for.
GATEWAY_ATTRIBUTES = frozenset({"RetrieveURL"})

# PS3.4 C.3.4: computed by the SCP from what it holds; emulated when the PACS does not.
COMPUTED_STUDY_ATTRIBUTES = ("ModalitiesInStudy", "NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances")
COMPUTED_SERIES_ATTRIBUTES = ("NumberOfSeriesRelatedInstances",)

DEFAULT_RETURN_KEYWORDS: dict[QueryLevel, tuple[str, ...]] = {
    QueryLevel.STUDY: (
        "StudyDate",
        "StudyTime",
        "AccessionNumber",
        "InstanceAvailability",
        "ModalitiesInStudy",
        "ReferringPhysicianName",
        "TimezoneOffsetFromUTC",
        "RetrieveURL",
        "PatientName",
        "PatientID",
        "PatientBirthDate",
        "PatientSex",
        "StudyInstanceUID",
        "StudyID",
        "NumberOfStudyRelatedSeries",
        "NumberOfStudyRelatedInstances",
    ),
    QueryLevel.SERIES: (
        "Modality",
        "TimezoneOffsetFromUTC",
        "SeriesDescription",
        "RetrieveURL",
        "SeriesInstanceUID",
        "SeriesNumber",
        "NumberOfSeriesRelatedInstances",
        "PerformedProcedureStepStartDate",
        "PerformedProcedureStepStartTime",
        "RequestAttributesSequence",
    ),
    QueryLevel.IMAGE: (
        "SOPClassUID",
        "SOPInstanceUID",
        "InstanceAvailability",
        "TimezoneOffsetFromUTC",
        "RetrieveURL",
        "InstanceNumber",
        "Rows",
        "Columns",
        "BitsAllocated",
        "NumberOfFrames",
    ),
}

# The keys of each level of the Study Root model (PS3.4 C.6.2.1, patient keys folded into the
# study level). An attribute listed at none of them is taken to belong to the level queried.
LEVEL_KEYWORDS: dict[QueryLevel, frozenset[str]] = {
    QueryLevel.STUDY: frozenset(
        {
            "PatientName",
            "PatientID",
            "IssuerOfPatientID",
            "OtherPatientIDsSequence",
            "PatientBirthDate",
            "PatientBirthTime",
            "PatientSex",
            "PatientAge",
            "PatientSize",
            "PatientWeight",
            "EthnicGroup",
            "PatientComments",
            "StudyDate",
            "StudyTime",
            "AccessionNumber",
            "StudyID",
            "StudyInstanceUID",
            "StudyDescription",
            "ReferringPhysicianName",
            "NameOfPhysiciansReadingStudy",
            "AdmittingDiagnosesDescription",
            "ModalitiesInStudy",
            "SOPClassesInStudy",
            "NumberOfStudyRelatedSeries",
            "NumberOfStudyRelatedInstances",
            "InstanceAvailability",
            "TimezoneOffsetFromUTC",
        }
    ),
    QueryLevel.SERIES: frozenset(
        {
            "Modality",
            "SeriesInstanceUID",
            "SeriesNumber",
            "SeriesDescription",
            "SeriesDate",
            "SeriesTime",
            "BodyPartExamined",
            "Laterality",
            "ProtocolName",
            "OperatorsName",
            "PerformingPhysicianName",
            "PerformedProcedureStepStartDate",
            "PerformedProcedureStepStartTime",
            "RequestAttributesSequence",
            "NumberOfSeriesRelatedInstances",
            "Manufacturer",
            "InstitutionName",
            "StationName",
        }
    ),
    QueryLevel.IMAGE: frozenset(
        {
            "SOPInstanceUID",
            "SOPClassUID",
            "InstanceNumber",
            "Rows",
            "Columns",
            "BitsAllocated",
            "NumberOfFrames",
            "ContentDate",
            "ContentTime",
            "AcquisitionDate",
            "AcquisitionTime",
            "ImageType",
            "ContentLabel",
            "ObservationDateTime",
            "ConceptNameCodeSequence",
        }
    ),
}

# Shared attributes (TimezoneOffsetFromUTC, InstanceAvailability) are answered at each level.
_SHARED = frozenset({"TimezoneOffsetFromUTC", "InstanceAvailability"})


def level_of(keyword: str, queried: QueryLevel) -> QueryLevel:
    """The level an attribute is matched at in a query at level `queried`.

    Attributes of a higher level than the one queried belong to that higher level (they select
    the parents, PS3.4 C.4.1.2.1.4); unknown ones belong to the level queried.
    """
    if keyword in _SHARED:
        return queried
    for level in QueryLevel:
        if keyword in LEVEL_KEYWORDS[level]:
            return level
    return queried

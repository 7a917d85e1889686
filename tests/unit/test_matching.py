"""The gateway's own attribute matching (PS3.4 C.2.2.2), used where a PACS cannot be trusted."""

from __future__ import annotations

import pytest
from pydicom.multival import MultiValue
from pydicom.valuerep import PersonName

from gateway.query.attributes import QueryLevel
from gateway.query.matching import matches, normalise_values
from gateway.query.params import MatchKey, parse_qido_query


def key(name: str, value: str, level: QueryLevel = QueryLevel.STUDY) -> MatchKey:
    return parse_qido_query(level, [(name, value)]).match_keys[0]


@pytest.mark.parametrize(
    ("name", "value", "stored", "expected"),
    [
        ("ModalitiesInStudy", "CT,PT", ["MR", "PT"], True),
        ("ModalitiesInStudy", "CT,PT", ["MR", "SR"], False),
        ("PatientName", "doe*", ["Doe^John"], True),
        ("PatientName", "DOE^JOHN", ["Doe^John"], True),
        ("PatientName", "doe", ["Doe^John"], False),
        ("PatientName", "d?e*", ["Doe^John"], True),
        ("PatientID", "ab*", ["AB1"], False),  # only person names ignore case
        ("StudyDate", "20200101-20201231", ["20200615"], True),
        ("StudyDate", "20200101-20201231", ["20210615"], False),
        ("StudyDate", "-20200101", ["20200101"], True),
        ("StudyDate", "20200102-", ["20200101"], False),
        ("StudyTime", "0800-1000", ["093000.5"], True),
        ("StudyTime", "0800-1000", ["100001"], False),
        ("StudyInstanceUID", "1.2.3,1.2.4", ["1.2.4"], True),
        ("NumberOfStudyRelatedSeries", "3", ["3"], True),
        ("PatientID", "X", [], True),  # nothing to contradict the key: the PACS's word stands
    ],
)
def test_matches(name: str, value: str, stored: list[str], expected: bool) -> None:
    assert matches(key(name, value), stored) is expected


def test_normalise_values_reads_pydicom_values() -> None:
    assert normalise_values(MultiValue(str, ["CT", "PT"])) == ["CT", "PT"]
    assert normalise_values(PersonName("Doe^John=ドウ^ジョン")) == ["Doe^John"]
    assert normalise_values("1.2.3\x00") == ["1.2.3"]
    assert normalise_values(None) == [] and normalise_values("") == []

"""QIDO-RS query strings -> QidoQuery: what is accepted, and what is a 400."""

from __future__ import annotations

import pytest

from gateway.errors import BadRequest
from gateway.query.attributes import QueryLevel
from gateway.query.params import MatchType, parse_qido_query


def parse(*params: tuple[str, str], level: QueryLevel = QueryLevel.STUDY, **uids: str):
    return parse_qido_query(level, list(params), **uids)


def test_keyword_and_tag_name_the_same_attribute() -> None:
    by_keyword = parse(("PatientID", "X1")).key("PatientID")
    by_tag = parse(("00100020", "X1")).key("PatientID")
    assert by_keyword == by_tag
    assert by_keyword is not None and by_keyword.match_type is MatchType.SINGLE


@pytest.mark.parametrize(
    ("value", "match_type", "values"),
    [
        ("CT,PT", MatchType.LIST, ("CT", "PT")),
        ("CT", MatchType.SINGLE, ("CT",)),
        ("C*", MatchType.WILDCARD, ("C*",)),
        ("", MatchType.UNIVERSAL, ()),
        ("*", MatchType.UNIVERSAL, ()),
    ],
)
def test_matching_types(value: str, match_type: MatchType, values: tuple[str, ...]) -> None:
    key = parse(("ModalitiesInStudy", value)).key("ModalitiesInStudy")
    assert key is not None
    assert (key.match_type, key.values) == (match_type, values)


@pytest.mark.parametrize("value", ["20200101-20211231", "20200101-", "-20211231"])
def test_date_ranges_open_both_ways(value: str) -> None:
    key = parse(("StudyDate", value)).key("StudyDate")
    assert key is not None and key.match_type is MatchType.RANGE and key.dicom_value == value


def test_datetime_with_negative_offset_is_a_single_value() -> None:
    key = parse(("AcquisitionDateTime", "20200101120000-0500"), level=QueryLevel.IMAGE).key("AcquisitionDateTime")
    assert key is not None and key.match_type is MatchType.SINGLE


def test_uid_list_matching() -> None:
    key = parse(("StudyInstanceUID", "1.2.3,1.2.4")).key("StudyInstanceUID")
    assert key is not None and key.match_type is MatchType.LIST and key.dicom_value == "1.2.3\\1.2.4"


def test_uid_list_joined_with_backslashes_as_ohif_sends_it() -> None:
    key = parse(("StudyInstanceUID", "1.2.3\\1.2.4,1.2.5")).key("StudyInstanceUID")
    assert key is not None and key.match_type is MatchType.LIST and key.values == ("1.2.3", "1.2.4", "1.2.5")
    with pytest.raises(BadRequest, match="empty item"):
        parse(("StudyInstanceUID", "1.2.3\\"))


def test_sequence_path() -> None:
    key = parse(("00400275.00401001", "RP1"), level=QueryLevel.SERIES).match_keys[0]
    assert key.path == (0x00400275, 0x00401001) and key.keyword == "RequestAttributesSequence.RequestedProcedureID"


def test_control_parameters() -> None:
    query = parse(
        ("limit", "10"),
        ("offset", "5"),
        ("fuzzymatching", "true"),
        ("includefield", "StudyDescription,00081030"),
        ("includefield", "all"),
    )
    assert (query.limit, query.offset, query.fuzzy, query.include_all) == (10, 5, True, True)
    assert query.include_tags == (0x00081030,)


def test_path_uids_become_match_keys() -> None:
    query = parse(level=QueryLevel.IMAGE, study_uid="1.2.3", series_uid="1.2.3.4")
    assert {k.keyword: k.values for k in query.match_keys} == {
        "StudyInstanceUID": ("1.2.3",),
        "SeriesInstanceUID": ("1.2.3.4",),
    }
    assert query.scope is QueryLevel.SERIES


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ([("NoSuchAttribute", "1")], "not a DICOM attribute"),
        ([("99990010", "1")], "not a known DICOM attribute tag"),
        ([("StudyDate", "2020-01-01")], "StudyDate"),
        ([("StudyDate", "20201301")], "not a valid DA"),
        ([("StudyDate", "20211231-20200101")], "ends before it starts"),
        ([("StudyDate", "-")], "not a range"),
        ([("StudyTime", "250000")], "not a valid TM"),
        ([("StudyInstanceUID", "1.02.3")], "not a valid UID"),
        ([("StudyInstanceUID", "1.2.*")], "not a valid UID"),
        ([("StudyInstanceUID", "1." + "2" * 70)], "not a valid UID"),
        ([("limit", "-1")], "limit"),
        ([("limit", "ten")], "limit"),
        ([("offset", "1.5")], "offset"),
        ([("limit", "1"), ("limit", "2")], "more than once"),
        ([("fuzzymatching", "yes")], "fuzzymatching"),
        ([("PatientName", "Doe\\John")], "backslash"),
        ([("ModalitiesInStudy", "CT\\PT")], "backslash"),
        ([("PatientID", "a\x00")], "control"),
        ([("NumberOfStudyRelatedSeries", "three")], "not a valid IS"),
        ([("NumberOfStudyRelatedSeries", "1*")], "not a valid IS"),
        ([("ModalitiesInStudy", "CT,,PT")], "empty item"),
        ([("ModalitiesInStudy", "C*,PT")], "wildcards"),
        ([("PatientID", "1"), ("00100020", "2")], "more than once"),
        ([("Modality", "CT")], "SERIES-level attribute"),
        ([("SeriesDescription", "x")], "SERIES-level"),
        ([("RequestAttributesSequence", "x")], "cannot be matched"),
        ([("includefield", "Bogus")], "includefield"),
        ([("PatientAge", "45")], "not a valid age"),
        ([("PatientID.PatientName", "x")], "not a sequence"),
    ],
)
def test_malformed_queries_are_rejected(params: list[tuple[str, str]], message: str) -> None:
    with pytest.raises(BadRequest, match=message):
        parse(*params)


def test_query_uid_contradicting_the_path_is_rejected() -> None:
    with pytest.raises(BadRequest, match="contradicts"):
        parse(("StudyInstanceUID", "1.2.9"), level=QueryLevel.SERIES, study_uid="1.2.3")


def test_malformed_path_uid_is_rejected() -> None:
    with pytest.raises(BadRequest, match="StudyInstanceUID"):
        parse(level=QueryLevel.SERIES, study_uid="not-a-uid")

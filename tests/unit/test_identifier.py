"""QIDO keys -> C-FIND identifiers."""

from __future__ import annotations

from gateway.query.attributes import QueryLevel, tag
from gateway.query.identifier import build_identifier
from gateway.query.params import parse_qido_query


def test_identifier_carries_level_keys_and_empty_return_keys() -> None:
    query = parse_qido_query(QueryLevel.STUDY, [("ModalitiesInStudy", "CT,PT"), ("StudyDate", "20200101-")])
    identifier = build_identifier(QueryLevel.STUDY, query.match_keys, [tag("PatientName"), tag("StudyDate")])
    assert identifier.QueryRetrieveLevel == "STUDY"
    assert list(identifier.ModalitiesInStudy) == ["CT", "PT"]
    assert identifier.StudyDate == "20200101-"
    assert identifier.PatientName == "" or identifier.PatientName is None
    assert "SpecificCharacterSet" in identifier and not identifier.SpecificCharacterSet


def test_non_ascii_values_declare_utf8() -> None:
    query = parse_qido_query(QueryLevel.STUDY, [("PatientName", "Müller*")])
    identifier = build_identifier(QueryLevel.STUDY, query.match_keys, [])
    assert identifier.SpecificCharacterSet == "ISO_IR 192"


def test_sequence_keys_nest_in_one_item() -> None:
    query = parse_qido_query(QueryLevel.SERIES, [("00400275.00401001", "RP1"), ("00400275.0020000D", "1.2")])
    identifier = build_identifier(QueryLevel.SERIES, query.match_keys, [tag("RequestAttributesSequence")])
    (item,) = identifier.RequestAttributesSequence
    assert item.RequestedProcedureID == "RP1" and item.StudyInstanceUID == "1.2"


def test_binary_numbers_are_typed() -> None:
    query = parse_qido_query(QueryLevel.IMAGE, [("Rows", "512")])
    identifier = build_identifier(QueryLevel.IMAGE, query.match_keys, [])
    assert identifier.Rows == 512


def test_return_keys_of_ambiguous_vr_are_encodable() -> None:
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset

    identifier = build_identifier(QueryLevel.IMAGE, [], [0x7FE00010, 0x00280106])  # PixelData, SmallestImagePixelValue
    assert (identifier[0x7FE00010].VR, identifier[0x00280106].VR) == ("OB", "US")
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, False
    write_dataset(buffer, identifier)

"""Datasets -> DICOM JSON model (PS3.18 Annex F)."""

from __future__ import annotations

import orjson
import pytest
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.filewriter import write_dataset
from pydicom.tag import BaseTag

from gateway.demo.samples import generate_sample_studies, iter_sample_datasets
from gateway.query.dicomjson import dataset_to_json, encode_json


def test_json_model() -> None:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.QueryRetrieveLevel = "STUDY"
    ds.PatientName = "Müller^Anna"
    ds.NumberOfStudyRelatedSeries = "3"
    ds.add_new(0x00201208, "IS", "12")
    ds.ModalitiesInStudy = ["CT", "PT"]
    ds.StudyDate = ""
    ds.add_new(0x00080062, "UI", "1.2.840.10008.5.1.4.1.1.2\x00")
    result = dataset_to_json(ds)
    assert list(result) == sorted(result)
    assert "00080005" not in result and "00080052" not in result
    assert result["00100010"] == {"vr": "PN", "Value": [{"Alphabetic": "Müller^Anna"}]}
    assert result["00201206"] == {"vr": "IS", "Value": [3]}
    assert result["00080061"] == {"vr": "CS", "Value": ["CT", "PT"]}
    assert result["00080020"] == {"vr": "DA"}
    assert result["00080062"] == {"vr": "UI", "Value": ["1.2.840.10008.5.1.4.1.1.2"]}
    assert orjson.loads(encode_json([result])) == [result]


def test_keep_selects_tags_and_sequences_convert() -> None:
    ds = Dataset()
    ds.PatientID = "X"
    item = Dataset()
    item.RequestedProcedureID = "RP1"
    ds.RequestAttributesSequence = [item]
    result = dataset_to_json(ds, keep=frozenset({0x00400275}))
    assert result == {"00400275": {"vr": "SQ", "Value": [{"00401001": {"vr": "SH", "Value": ["RP1"]}}]}}


def test_malformed_number_from_a_pacs_is_kept_as_text() -> None:
    ds = Dataset()
    ds[0x00201206] = RawDataElement(BaseTag(0x00201206), "IS", 2, b"3a", 0, True, True)
    ds.PatientID = "X"
    result = dataset_to_json(ds)
    assert result["00201206"]["Value"] == ["3a"]
    assert result["00100020"] == {"vr": "LO", "Value": ["X"]}


def _raw_roundtrip(ds: Dataset) -> Dataset:
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, False
    write_dataset(buffer, ds)
    return read_dataset(DicomBytesIO(buffer.getvalue()), False, True)


@pytest.mark.parametrize("charset", ["ISO_IR 100", "ISO_IR 192"])
def test_fast_path_agrees_with_pydicom(charset: str) -> None:
    """C-FIND answers take a fast path; it must give what pydicom's own conversion gives."""
    for source in iter_sample_datasets(generate_sample_studies(24)):
        source.pop(0x7FE00010, None)  # PixelData: bulk data is not a QIDO matter
        source.SpecificCharacterSet = charset
        source.NumberOfStudyRelatedInstances = "12"
        source.add_new(0x00181050, "DS", ["0.5", "2", "1e3"])  # SpatialResolution: DS of every shape
        source.add_new(0x00100021, "LO", "")  # IssuerOfPatientID: empty
        raw = dataset_to_json(_raw_roundtrip(source))
        decoded = _raw_roundtrip(source)
        decoded.decode()  # every element through pydicom, then the decoded fast path
        assert dataset_to_json(decoded) == raw
        # sequences aside: an empty one has no "Value" here (PS3.18 F.2.5), an empty list in pydicom
        reference = {f"{int(e.tag):08X}": e.to_json_dict(None, 1 << 20) for e in decoded if e.VR != "SQ"}
        assert {tag: value for tag, value in raw.items() if value["vr"] != "SQ"} == {
            tag: value for tag, value in reference.items() if tag in raw
        }


def test_fast_path_reads_multi_valued_and_multi_group_values() -> None:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.PatientName = "Yamada^Tarou=山田^太郎=やまだ^たろう"
    ds.ModalitiesInStudy = ["CT", "PT"]
    ds.add_new(0x00080062, "UI", "1.2.840.10008.5.1.4.1.1.2\x00")
    result = dataset_to_json(_raw_roundtrip(ds))
    assert result["00100010"]["Value"] == [
        {"Alphabetic": "Yamada^Tarou", "Ideographic": "山田^太郎", "Phonetic": "やまだ^たろう"}
    ]
    assert result["00080061"]["Value"] == ["CT", "PT"]
    assert result["00080062"]["Value"] == ["1.2.840.10008.5.1.4.1.1.2"]


def test_sequence_items_are_read_in_the_character_set_of_the_dataset_around_them() -> None:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    item = Dataset()
    item.RequestedProcedureDescription = "Schädel – 頭部"
    ds.RequestAttributesSequence = [item]
    result = dataset_to_json(_raw_roundtrip(ds))
    assert result["00400275"]["Value"] == [{"00321060": {"vr": "LO", "Value": ["Schädel – 頭部"]}}]

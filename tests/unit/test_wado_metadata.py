"""Instance metadata as DICOM JSON, and the bulk data its BulkDataURIs name (PS3.18 §10.4, Annex F)."""

from __future__ import annotations

import base64
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames
from pydicom.uid import DeflatedExplicitVRLittleEndian, ImplicitVRLittleEndian, RLELossless

from gateway.errors import BadRequest, NotFound
from gateway.wado.bulkdata import iter_bulkdata
from gateway.wado.metadata import INLINE_BINARY_LIMIT, instance_metadata
from gateway.wado.pixels import HEADER_DEFER_SIZE
from tests.images import compressed, image, ramp, write

BULK = "http://gw/dicom-web/studies/1/series/2/instances/3/bulkdata"
BINARY_VRS = {"OB", "OD", "OF", "OL", "OV", "OW", "UN"}


def _rich_instance() -> Dataset:
    ds = image(ramp(32, 32, frames=3))
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.PatientName = "Müller^Anna=ミュラー^アンナ"
    ds.OtherPatientNames = ["A^B", "C^D"]
    ds.PatientID = "PAT1"
    ds.StudyDate = "20240102"
    ds.AccessionNumber = ""
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.InstanceNumber = 7
    ds.ImagePositionPatient = [1.5, -2, 3.25]
    ds.SliceThickness = "2.50"
    ds.FrameIncrementPointer = [0x00181063, 0x00181065]
    ds.ImageComments = "line one\\still one"
    ds.add_new(0x00181063, "DS", "33.3")
    ds.add_new(0x00189089, "FD", [0.0, 1.0, 0.5])
    ds.add_new(0x00280106, "US", 0)
    ds.add_new(0x00091010, "LO", "PRIVATE CREATOR")  # a private creator and its block
    ds.add_new(0x00091001, "OB", b"\x01\x02\x03\x04")
    ds.add_new(0x00091002, "OB", bytes(range(256)) * 20)
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = "T-D1100", "SRT", "Head"
    icon = Dataset()
    icon.Rows = icon.Columns = 48
    icon.add_new(0x7FE00010, "OB", bytes(range(48)) * 48)
    ds.AnatomicRegionSequence = [code]
    ds.IconImageSequence = [icon]
    ds.ReferencedImageSequence = []
    return ds


@pytest.fixture
def rich(tmp_path: Path) -> tuple[Dataset, Path]:
    ds = _rich_instance()
    return ds, write(ds, tmp_path)


def test_every_element_that_is_not_bulk_data_is_what_pydicom_makes_of_it(rich: tuple[Dataset, Path]) -> None:
    _, path = rich
    expected = dcmread(path).to_json_dict(bulk_data_threshold=1 << 30)
    result = instance_metadata(path, BULK)
    assert list(result) == sorted(result)
    del expected["00080005"]  # the answer is UTF-8 JSON: no Specific Character Set, as for QIDO-RS
    assert result.pop("00083002") == {"vr": "UI", "Value": ["1.2.840.10008.1.2.1"]}
    assert result.keys() == expected.keys()
    for key, element in expected.items():
        if element["vr"] not in BINARY_VRS and key != "00880200" and element != {"vr": "SQ", "Value": []}:
            assert result[key] == element, key
    assert result["00100010"] == {
        "vr": "PN",
        "Value": [{"Alphabetic": "Müller^Anna", "Ideographic": "ミュラー^アンナ"}],
    }
    assert result["00280009"] == {"vr": "AT", "Value": ["00181063", "00181065"]}
    assert result["00080050"] == {"vr": "SH"}
    assert result["00200032"] == {"vr": "DS", "Value": [1.5, -2, 3.25]}
    assert result["00081140"] == {"vr": "SQ"}  # no Value for an empty element (F.2.5), where pydicom has []


def test_bulk_data_goes_by_uri_small_binary_inline(rich: tuple[Dataset, Path]) -> None:
    _, path = rich
    result = instance_metadata(path, BULK + "/")
    assert result["7FE00010"] == {"vr": "OW", "BulkDataURI": f"{BULK}/7FE00010"}
    assert result["00091001"] == {"vr": "OB", "InlineBinary": base64.b64encode(b"\x01\x02\x03\x04").decode()}
    assert result["00091002"] == {"vr": "OB", "BulkDataURI": f"{BULK}/00091002"}
    icon = result["00880200"]["Value"][0]
    assert icon["7FE00010"] == {"vr": "OB", "BulkDataURI": f"{BULK}/00880200/0/7FE00010"}
    assert icon["00280010"] == {"vr": "US", "Value": [48]}


@pytest.mark.parametrize("tag_path", ["7FE00010", "00091002", "00091001", "00880200/0/7FE00010", "00100010"])
def test_bulk_data_read_back_is_the_exact_value(rich: tuple[Dataset, Path], tag_path: str) -> None:
    ds, path = rich
    element = ds
    *steps, last = tag_path.split("/")[::2]
    for tag, index in zip(steps, tag_path.split("/")[1::2], strict=True):
        element = element[int(tag, 16)].value[int(index)]
    value = element[int(last, 16)].value
    expected = value if isinstance(value, bytes) else value.encode() if isinstance(value, str) else str(value).encode()
    assert b"".join(iter_bulkdata(path, tag_path)).rstrip(b" ") == expected


def test_big_values_stay_on_disk_and_stream_in_bounded_chunks(tmp_path: Path) -> None:
    ds = image(ramp(600, 600, frames=4))  # 2.9 MB of pixel data
    ds.add_new(0x0040A160, "UT", "x" * (HEADER_DEFER_SIZE + 1))
    path = write(ds, tmp_path)
    result = instance_metadata(path, BULK)
    assert result["0040A160"] == {"vr": "UT", "BulkDataURI": f"{BULK}/0040A160"}
    chunks = list(iter_bulkdata(path, "7FE00010"))
    assert len(chunks) == 3 and max(len(c) for c in chunks) == 1 << 20
    assert b"".join(chunks) == ds.PixelData
    assert b"".join(iter_bulkdata(path, "0040A160")) == b"x" * (HEADER_DEFER_SIZE + 1) + b" "


def test_text_values_longer_than_the_inline_limit_stay_inline(tmp_path: Path) -> None:
    ds = image(ramp(8, 8))
    ds.ImageComments = "y" * (INLINE_BINARY_LIMIT * 4)
    assert instance_metadata(write(ds, tmp_path), BULK)["00204000"] == {"vr": "LT", "Value": ["y" * 4096]}


def test_encapsulated_pixel_data_is_bulk_data_one_chunk_per_frame(tmp_path: Path) -> None:
    ds = compressed(image(ramp(32, 32, frames=3)), RLELossless)
    path = write(ds, tmp_path)
    assert instance_metadata(path, BULK)["7FE00010"] == {"vr": "OB", "BulkDataURI": f"{BULK}/7FE00010"}
    assert list(iter_bulkdata(path, "7FE00010")) == list(generate_frames(ds.PixelData, number_of_frames=3))
    assert instance_metadata(path, BULK)["00083002"] == {"vr": "UI", "Value": [RLELossless]}


def test_implicit_vr_file_gives_dictionary_vrs_and_un_for_private_tags(tmp_path: Path) -> None:
    ds = image(ramp(8, 8).astype(np.uint8), bits_stored=8)
    ds.add_new(0x00091010, "LO", "PRIVATE CREATOR")
    ds.add_new(0x00091001, "OB", b"\x00" * (INLINE_BINARY_LIMIT + 2))
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    path = write(ds, tmp_path)
    result = instance_metadata(path, BULK)
    assert result["7FE00010"] == {"vr": "OW", "BulkDataURI": f"{BULK}/7FE00010"}
    assert result["00091001"] == {"vr": "UN", "BulkDataURI": f"{BULK}/00091001"}
    assert result["00280010"] == {"vr": "US", "Value": [8]}
    assert b"".join(iter_bulkdata(path, "00091001")) == b"\x00" * (INLINE_BINARY_LIMIT + 2)


def test_deflated_file(tmp_path: Path) -> None:
    ds = image(ramp(32, 32))
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    path = write(ds, tmp_path)
    assert instance_metadata(path, BULK)["00100010"] == {"vr": "PN", "Value": [{"Alphabetic": "Pixels^Test"}]}
    assert b"".join(iter_bulkdata(path, "7FE00010")) == ds.PixelData


@pytest.mark.parametrize("tag_path", ["7FE0001", "7fe00010/", "00880200/x/7FE00010", "00880200/0", "", "../etc"])
def test_malformed_bulk_data_path_is_bad_request(rich: tuple[Dataset, Path], tag_path: str) -> None:
    with pytest.raises(BadRequest, match="bulk data path"):
        iter_bulkdata(rich[1], tag_path)


@pytest.mark.parametrize(
    ("tag_path", "problem"),
    [
        ("00091003", "no element 00091003"),
        ("00880200/1/7FE00010", "no item 1 in sequence 00880200"),
        ("00100010/0/00100020", "no item 0 in sequence 00100010"),
        ("00880200/0/00280100", "no element 00280100"),
        ("00880200", "00880200 is not a value"),
    ],
)
def test_bulk_data_path_to_nothing_is_not_found(rich: tuple[Dataset, Path], tag_path: str, problem: str) -> None:
    with pytest.raises(NotFound, match=problem):
        iter_bulkdata(rich[1], tag_path)


def test_lowercase_tag_path_reads_the_same_value(rich: tuple[Dataset, Path]) -> None:
    assert b"".join(iter_bulkdata(rich[1], "7fe00010")) == rich[0].PixelData

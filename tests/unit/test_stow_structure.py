"""check_structure: a whole data set passes, whatever its encoding; one cut short or with stray bytes does not."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmwrite
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import UID, ExplicitVRBigEndian, ImplicitVRLittleEndian, RLELossless

from gateway.stow.structure import MalformedDataset, check_structure
from tests.images import compressed, image, jpeg_baseline, ramp


def with_sequence(ds: Dataset) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator = "T-1", "SCT"
    nested = Dataset()
    nested.CodeMeaning = "nested"
    item.ConceptNameCodeSequence = Sequence([nested])
    ds.AnatomicRegionSequence = Sequence([item, Dataset()])
    return ds


def write(ds: Dataset, path: Path, *, undefined_lengths: bool = False) -> Path:
    if undefined_lengths:
        for element in ds.iterall():
            if element.VR == "SQ":
                element.is_undefined_length = True
                for item in element.value:
                    item.is_undefined_length_sequence_item = True
    dcmwrite(path, ds, enforce_file_format=True)
    return path


def syntax(path: Path) -> UID:
    from pydicom.filereader import read_file_meta_info

    return UID(read_file_meta_info(path).TransferSyntaxUID)


CASES = {
    "native multi-frame": lambda: image(ramp(16, 8, frames=3)),
    "native with sequences": lambda: with_sequence(image(ramp(8, 8))),
    "RLE": lambda: compressed(image(ramp(8, 8, frames=2)), RLELossless),
    "JPEG baseline": lambda: jpeg_baseline(np.zeros((2, 8, 8), np.uint8)),
}


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("undefined_lengths", [False, True])
def test_whole_data_sets_pass(tmp_path: Path, case: str, undefined_lengths: bool) -> None:
    path = write(CASES[case](), tmp_path / "x.dcm", undefined_lengths=undefined_lengths)
    check_structure(path, syntax(path))


@pytest.mark.parametrize("transfer_syntax", [ImplicitVRLittleEndian, ExplicitVRBigEndian])
def test_other_uncompressed_syntaxes_pass_and_break(tmp_path: Path, transfer_syntax: UID) -> None:
    ds = with_sequence(image(ramp(8, 8)))
    ds.file_meta.TransferSyntaxUID = transfer_syntax
    path = write(ds, tmp_path / "x.dcm", undefined_lengths=True)
    check_structure(path, transfer_syntax)
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(MalformedDataset):
        check_structure(path, transfer_syntax)


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("cut", [1, 7, 60])
def test_a_data_set_cut_short_is_malformed(tmp_path: Path, case: str, cut: int) -> None:
    path = write(CASES[case](), tmp_path / "x.dcm", undefined_lengths=True)
    path.write_bytes(path.read_bytes()[:-cut])
    with pytest.raises(MalformedDataset):
        check_structure(path, syntax(path))


@pytest.mark.parametrize("tail", [b"\x01\x02\x03garbage", b"\x00", b"\xe0\x7f\x10\x00OB\x00\x00\xff\xff\xff\xff"])
def test_stray_bytes_after_the_data_set_are_malformed(tmp_path: Path, tail: bytes) -> None:
    path = write(image(ramp(8, 8)), tmp_path / "x.dcm")
    path.write_bytes(path.read_bytes() + tail)
    with pytest.raises(MalformedDataset):
        check_structure(path, syntax(path))


def test_an_item_longer_than_its_sequence_is_malformed(tmp_path: Path) -> None:
    path = write(with_sequence(image(ramp(8, 8))), tmp_path / "x.dcm")
    data = bytearray(path.read_bytes())
    item = data.index(b"\xfe\xff\x00\xe0")  # the first item of a defined-length sequence
    data[item + 4 : item + 8] = (int.from_bytes(data[item + 4 : item + 8], "little") + 2).to_bytes(4, "little")
    path.write_bytes(bytes(data))
    with pytest.raises(MalformedDataset):
        check_structure(path, syntax(path))


def test_a_sequence_item_without_its_delimiter_is_malformed(tmp_path: Path) -> None:
    path = write(with_sequence(image(ramp(8, 8))), tmp_path / "x.dcm", undefined_lengths=True)
    data = path.read_bytes()
    delimiter = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"  # the sequence delimitation item
    position = data.index(delimiter)
    path.write_bytes(data[:position] + b"\xfe\xff\x00\xe0" + data[position + 4 :])
    with pytest.raises(MalformedDataset):
        check_structure(path, syntax(path))

"""Instances re-encoded into Explicit VR Little Endian, the WADO-RS default: lossless only."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, RLELossless

from gateway.retrieve.transcode import TranscodeError, to_explicit_little_endian
from tests.images import compressed, image, ramp, write


def test_compressed_pixel_data_is_decoded(tmp_path: Path) -> None:
    original = image(ramp(32, 24, frames=2))
    expected = original.pixel_array.copy()
    path = write(compressed(original, RLELossless), tmp_path)
    result = dcmread(io.BytesIO(to_explicit_little_endian(path)))
    assert result.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert np.array_equal(result.pixel_array, expected)
    assert result.preamble is not None and result.SOPInstanceUID == original.SOPInstanceUID


def test_implicit_vr_becomes_explicit_with_the_same_values(tmp_path: Path) -> None:
    original = image(ramp(8, 8))
    original.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    path = write(original, tmp_path)
    result = dcmread(io.BytesIO(to_explicit_little_endian(path)))
    assert result.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert not result.is_implicit_VR
    assert result.PixelData == original.PixelData and result.PatientName == original.PatientName


def test_undecodable_pixel_data_is_an_error_not_garbage(tmp_path: Path) -> None:
    original = compressed(image(ramp(16, 16)), RLELossless)
    original.PixelData = original.PixelData[:-40]  # a truncated codestream
    path = write(original, tmp_path)
    with pytest.raises(TranscodeError):
        to_explicit_little_endian(path)

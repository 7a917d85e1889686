"""Frames of single- and multi-frame images, native and encapsulated, and their media types (PS3.18 §8.7.3)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pydicom.encaps import generate_frames
from pydicom.pixels import pack_bits, pixel_array
from pydicom.uid import (
    JPEG2000,
    MPEG2MPML,
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLSLossless,
    RLELossless,
)

from gateway.errors import BadRequest, NotAcceptable
from gateway.wado.frames import (
    FrameEncoding,
    frame_geometry,
    negotiate_frame_encoding,
    parse_frame_numbers,
    read_frames,
    stored_transfer_syntax,
)
from tests.images import compressed, image, jpeg_baseline, ramp, write

OHIF = "multipart/related; type=application/octet-stream; transfer-syntax=*"
OCTET = "application/octet-stream"
UNCOMPRESSED = FrameEncoding(OCTET, ExplicitVRLittleEndian)


@pytest.mark.parametrize(
    ("accept", "stored", "expected"),
    [
        (None, ExplicitVRLittleEndian, UNCOMPRESSED),
        ("*/*", JPEGBaseline8Bit, UNCOMPRESSED),
        ('multipart/related; type="application/octet-stream"', JPEG2000Lossless, UNCOMPRESSED),
        ("multipart/related", RLELossless, UNCOMPRESSED),
        (OHIF, ImplicitVRLittleEndian, UNCOMPRESSED),
        (OHIF, JPEGLSLossless, FrameEncoding(OCTET, JPEGLSLossless)),
        (OHIF, JPEGBaseline8Bit, FrameEncoding(OCTET, JPEGBaseline8Bit)),
        ('multipart/related; type="image/jpeg"', JPEGBaseline8Bit, FrameEncoding("image/jpeg", JPEGBaseline8Bit)),
        (
            'multipart/related; type="image/jls"; transfer-syntax=1.2.840.10008.1.2.4.80',
            JPEGLSLossless,
            FrameEncoding("image/jls", JPEGLSLossless),
        ),
        ('Multipart/Related; Type="IMAGE/JP2"; transfer-syntax="*"', JPEG2000, FrameEncoding("image/jp2", JPEG2000)),
        ("multipart/related; type=image/dicom-rle", RLELossless, FrameEncoding("image/dicom-rle", RLELossless)),
        ("multipart/related; type=*/*; transfer-syntax=*", RLELossless, FrameEncoding("image/dicom-rle", RLELossless)),
        (
            'multipart/related; type="image/jp2"; q=0.5, multipart/related; type="application/octet-stream"; q=0.9',
            JPEG2000Lossless,
            UNCOMPRESSED,
        ),
        (
            'multipart/related; type="image/jpeg", multipart/related; type="application/octet-stream"; q=0.1',
            JPEG2000Lossless,
            UNCOMPRESSED,
        ),
        (
            'multipart/related; type="application/octet-stream"; q=0, multipart/related; type="image/jp2"',
            JPEG2000Lossless,
            FrameEncoding("image/jp2", JPEG2000Lossless),
        ),
        (
            "multipart/related; type=application/octet-stream; transfer-syntax=1.2.840.10008.1.2.1",
            DeflatedExplicitVRLittleEndian,
            UNCOMPRESSED,
        ),
    ],
)
def test_negotiation(accept: str | None, stored: UID, expected: FrameEncoding) -> None:
    assert negotiate_frame_encoding(accept, stored) == expected


@pytest.mark.parametrize(
    ("accept", "stored"),
    [
        ('multipart/related; type="image/jpeg"', ExplicitVRLittleEndian),  # no lossy (nor any) encoding
        ('multipart/related; type="image/jp2"; transfer-syntax=1.2.840.10008.1.2.4.91', JPEG2000Lossless),  # not .91,
        ('multipart/related; type="image/jls"', JPEG2000Lossless),  # ... no transcoding between codecs
        ("multipart/related; type=application/octet-stream; transfer-syntax=1.2.840.10008.1.2.4.50", RLELossless),
        (OHIF, MPEG2MPML),  # video has no frames to send
        ("*/*", MPEG2MPML),
    ],
)
def test_negotiation_refuses_what_cannot_be_sent(accept: str, stored: UID) -> None:
    with pytest.raises(NotAcceptable, match="cannot be sent as"):
        negotiate_frame_encoding(accept, stored)


@pytest.mark.parametrize(
    ("accept", "stored", "reason"),
    [
        (
            "application/octet-stream",
            ExplicitVRLittleEndian,
            "frames are sent as multipart/related",
        ),  # PS3.18 §10.4.1.1.7
        ("image/jpeg", JPEGBaseline8Bit, "frames are sent as multipart/related"),
        (
            'multipart/related; type="application/dicom"',
            ExplicitVRLittleEndian,
            "not sent as parts of type application/dicom",
        ),
    ],
)
def test_not_acceptable_blames_the_media_type_when_it_is_the_cause(accept: str, stored: UID, reason: str) -> None:
    with pytest.raises(NotAcceptable, match=reason) as raised:
        negotiate_frame_encoding(accept, stored)
    assert "frames stored as" not in raised.value.detail
    assert "available: multipart/related; type=" in raised.value.detail


def test_not_acceptable_says_what_is_available() -> None:
    with pytest.raises(NotAcceptable) as raised:
        negotiate_frame_encoding('multipart/related; type="image/jp2"', JPEGLSLossless)
    assert 'type="application/octet-stream"; transfer-syntax=1.2.840.10008.1.2.1' in raised.value.detail
    assert 'type="image/jls"; transfer-syntax=1.2.840.10008.1.2.4.80' in raised.value.detail


@pytest.mark.parametrize("accept", ["multipart/related; q=2", "multipart/related; type", "jpeg", "image/jpeg; q=x"])
def test_malformed_accept_is_bad_request(accept: str) -> None:
    with pytest.raises(BadRequest, match="Accept"):
        negotiate_frame_encoding(accept, ExplicitVRLittleEndian)


def test_frame_numbers() -> None:
    assert parse_frame_numbers("3,1,3") == [3, 1, 3]
    for text in ("", "0", "1,,2", "-1", "a", "1.5", "²"):
        with pytest.raises(BadRequest, match="frame number"):
            parse_frame_numbers(text)


def test_native_multiframe_frames_in_the_order_asked(tmp_path: Path) -> None:
    pixels = ramp(30, 20, frames=5)
    path = write(image(pixels), tmp_path)
    assert frame_geometry(path)[0] == 5
    assert list(read_frames(path, [5, 1, 5], UNCOMPRESSED)) == [
        pixels[4].tobytes(),
        pixels[0].tobytes(),
        pixels[4].tobytes(),
    ]


def test_single_frame_8_bit_odd_length(tmp_path: Path) -> None:
    pixels = (ramp(5, 7) % 256).astype(np.uint8)
    path = write(image(pixels, bits_stored=8), tmp_path)
    assert frame_geometry(path)[0] == 1
    assert list(read_frames(path, [1], UNCOMPRESSED)) == [pixels.tobytes()]  # 35 bytes: no padding byte


def test_one_bit_frames_are_not_byte_aligned_in_the_file_but_are_sent_packed(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 2, (3, 5, 3), dtype=np.uint8)  # 15 pixels a frame: frames 2 and 3 start mid-byte
    ds = image(pixels, bits_stored=1)
    ds.BitsAllocated = 1
    ds.PixelData = pack_bits(pixels)
    path = write(ds, tmp_path)
    frames = list(read_frames(path, [1, 2, 3], UNCOMPRESSED))
    assert frames == [np.packbits(frame.ravel(), bitorder="little").tobytes() for frame in pixels]
    assert [len(f) for f in frames] == [2, 2, 2]


def test_rgb_planar_configuration_1_is_sent_as_stored(tmp_path: Path) -> None:
    pixels = np.stack([ramp(4, 6) % 256] * 3, axis=-1).astype(np.uint8)
    pixels[..., 1] = 7
    ds = image(pixels, "RGB", 8)
    ds.PlanarConfiguration = 1
    ds.PixelData = pixels.transpose(2, 0, 1).tobytes()
    path = write(ds, tmp_path)
    assert list(read_frames(path, [1], UNCOMPRESSED)) == [pixels.transpose(2, 0, 1).tobytes()]


@pytest.mark.parametrize("transfer_syntax", [RLELossless, JPEGLSLossless, JPEG2000Lossless])
def test_encapsulated_frames_as_stored_and_decoded(tmp_path: Path, transfer_syntax: UID) -> None:
    pixels = ramp(64, 64, frames=3)
    ds = compressed(image(pixels, bits_stored=12), transfer_syntax)
    path = write(ds, tmp_path)
    assert stored_transfer_syntax(path) == transfer_syntax
    as_stored = negotiate_frame_encoding(OHIF, transfer_syntax)
    assert list(read_frames(path, [1, 2, 3], as_stored)) == list(generate_frames(ds.PixelData, number_of_frames=3))
    decoded = list(read_frames(path, [3, 1], UNCOMPRESSED))
    assert decoded == [pixels[2].tobytes(), pixels[0].tobytes()]


def test_lossy_jpeg_decodes_to_what_pydicom_decodes(tmp_path: Path) -> None:
    pixels = (ramp(32, 48, frames=2) // 16).astype(np.uint8)
    path = write(jpeg_baseline(pixels), tmp_path)
    expected = pixel_array(path)
    assert list(read_frames(path, [2], UNCOMPRESSED)) == [expected[1].tobytes()]
    assert np.abs(expected.astype(int) - pixels).mean() < 1  # it is lossy, and it is this picture


def test_colour_jpeg_decodes_to_rgb(tmp_path: Path) -> None:
    pixels = np.zeros((16, 16, 3), np.uint8)
    pixels[..., 0] = 200
    path = write(jpeg_baseline(pixels, "RGB"), tmp_path)
    (frame,) = read_frames(path, [1], UNCOMPRESSED)
    rgb = np.frombuffer(frame, np.uint8).reshape(16, 16, 3)
    assert np.abs(rgb.astype(int) - pixels).max() < 4


def test_deflated_file(tmp_path: Path) -> None:
    pixels = ramp(16, 16, frames=2)
    ds = image(pixels)
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    path = write(ds, tmp_path)
    encoding = negotiate_frame_encoding(OHIF, stored_transfer_syntax(path))
    assert list(read_frames(path, [2], encoding)) == [pixels[1].tobytes()]


def test_out_of_range_frame_is_bad_request_before_anything_is_read(tmp_path: Path) -> None:
    path = write(image(ramp(8, 8, frames=2)), tmp_path)
    with pytest.raises(BadRequest, match="frame 3 is out of range: the instance has 2 frame"):
        read_frames(path, [1, 3], UNCOMPRESSED)


def test_instance_without_pixel_data_is_bad_request(tmp_path: Path) -> None:
    ds = image(ramp(8, 8))
    del ds.PixelData
    path = write(ds, tmp_path)
    with pytest.raises(BadRequest, match="has no pixel data"):
        read_frames(path, [1], UNCOMPRESSED)
    with pytest.raises(BadRequest, match="has no pixel data"):
        frame_geometry(path)


def test_encoding_for_another_syntax_is_refused(tmp_path: Path) -> None:
    path = write(compressed(image(ramp(64, 64)), RLELossless), tmp_path)
    with pytest.raises(NotAcceptable, match="RLE Lossless cannot be sent as image/jls"):
        read_frames(path, [1], FrameEncoding("image/jls", JPEGLSLossless))

"""The streaming multipart/related reader: grammar, chunk boundaries anywhere, bounded memory, errors."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.stow.multipart import MediaType, MultipartError, Part, parse_media_type, read_parts, spill_body


async def _chunks(body: bytes, size: int) -> AsyncIterator[bytes]:
    for start in range(0, len(body), size):
        yield body[start : start + size]


def _read(body: bytes, boundary: str, directory: Path, chunk: int = 7) -> list[tuple[Part, bytes]]:
    async def collect() -> list[tuple[Part, bytes]]:
        return [(part, part.path.read_bytes()) async for part in read_parts(_chunks(body, chunk), boundary, directory)]

    return asyncio.run(collect())


def _message(boundary: str, contents: list[bytes], *, preamble: bytes = b"", epilogue: bytes = b"") -> bytes:
    body = preamble
    for index, content in enumerate(contents):
        body += (b"\r\n" if index or preamble else b"") + f"--{boundary}\r\n".encode()
        body += b"Content-Type: application/dicom\r\n\r\n" + content
    return body + f"\r\n--{boundary}--".encode() + epilogue


def test_media_type_with_quoted_and_unquoted_parameters() -> None:
    parsed = parse_media_type('Multipart/Related; type="application/dicom"; boundary="a b;c\\"d"; start=x')
    assert parsed == MediaType("multipart/related", {"type": "application/dicom", "boundary": 'a b;c"d', "start": "x"})
    assert parse_media_type("application/dicom").parameters == {}
    with pytest.raises(MultipartError):
        parse_media_type('multipart/related; boundary="unterminated')


CONTENTS = [b"first \r\n-- not a delimiter --", b"", b"\r\n--boundar", bytes(range(256)) * 40]


@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 64, 100_000])
def test_parts_whatever_the_chunking(tmp_path: Path, chunk: int) -> None:
    body = _message("boundary", CONTENTS, preamble=b"preamble to ignore", epilogue=b"\r\nepilogue --boundary")
    parts = _read(body, "boundary", tmp_path, chunk)
    assert [content for _, content in parts] == CONTENTS
    assert [part.index for part, _ in parts] == [0, 1, 2, 3]
    assert all(part.content_type.type == "application/dicom" and part.size == len(c) for part, c in parts)


def test_headers_padding_folding_and_a_part_without_headers(tmp_path: Path) -> None:
    body = (
        b"--b  \t\r\nContent-Type: application/dicom;\r\n transfer-syntax=1.2.840.10008.1.2.1\r\n"
        b"X-Other:  v \r\n\r\nA\r\n--b\r\n\r\nB\r\n--b--"
    )
    (first, a), (second, b) = _read(body, "b", tmp_path)
    assert a == b"A" and b == b"B"
    assert first.headers == {"content-type": "application/dicom; transfer-syntax=1.2.840.10008.1.2.1", "x-other": "v"}
    assert first.content_type.parameters == {"transfer-syntax": "1.2.840.10008.1.2.1"}
    assert second.headers == {} and second.content_type.type == "text/plain"


def test_large_part_goes_to_disk_in_pieces(tmp_path: Path) -> None:
    content = bytes(range(256)) * 40_000  # 10 MB
    ((part, stored),) = _read(_message("x" * 70, [content]), "x" * 70, tmp_path, 65536)
    assert stored == content and part.path.parent == tmp_path


def test_boundary_longer_than_rfc_2046_allows(tmp_path: Path) -> None:
    # Orthanc's DICOMweb plugin joins two UUIDs: 73 characters, over RFC 2046's 70.
    boundary = "5d3a9ea0-7bd5-4c3a-9d5f-0b5e8d1f3a21-0c8a2f6e-1d4b-4f7e-a9c3-6b2d8e5f1a07"
    assert len(boundary) == 73
    (first, second) = _read(_message(boundary, [b"A", b"B"]), boundary, tmp_path)
    assert (first[1], second[1]) == (b"A", b"B")


@pytest.mark.parametrize(
    ("body", "boundary"),
    [
        (b"no delimiter at all", "b"),
        (b"--" + b"b" * 201 + b"\r\n\r\nx\r\n--" + b"b" * 201 + b"--", "b" * 201),
        (b"--b\r\nContent-Type: application/dicom\r\n\r\ntruncated", "b"),
        (b"--b\r\nContent-Type: application/dicom", "b"),
        (b"--b junk\r\n\r\nx\r\n--b--", "b"),
        (b"--b\r\nno colon here\r\n\r\nx\r\n--b--", "b"),
        (b"--b\r\n\r\nx\r\n--b--", "bad boundary "),
        (b"--b\r\n\r\nx\r\n--b--", ""),
    ],
)
def test_malformed_bodies(tmp_path: Path, body: bytes, boundary: str) -> None:
    with pytest.raises(MultipartError):
        _read(body, boundary, tmp_path)


def test_single_part_body(tmp_path: Path) -> None:
    async def collect() -> list[Part]:
        return [part async for part in spill_body(_chunks(b"DICM" * 1000, 333), "application/dicom", tmp_path)]

    (part,) = asyncio.run(collect())
    assert part.path.read_bytes() == b"DICM" * 1000 and part.size == 4000

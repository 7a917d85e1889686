"""A streaming ``multipart/related`` reader that spills every part to a temporary file.

The body is read chunk by chunk and never held whole: each part's content goes straight to a file
in a directory the caller owns, so memory stays bounded (a few chunks plus one part's headers)
whatever the size and number of parts. The grammar is RFC 2046 §5.1.1: an optional preamble,
``--boundary`` delimiters each preceded by CRLF (except at the very start), transport padding
after a delimiter, per-part headers ending in an empty line, and a close delimiter
``--boundary--`` followed by an ignored epilogue.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["MediaType", "MultipartError", "Part", "parse_media_type", "read_parts", "spill_body"]

_MAX_HEADER_BYTES = 16384
"""Largest header block one part may have; anything longer is not a STOW-RS part."""
_MAX_BOUNDARY = 200
"""Longest boundary accepted. RFC 2046 §5.1.1 allows 70 characters, but real clients exceed it (Orthanc's
DICOMweb plugin sends two UUIDs, 73); the bound only keeps a delimiter search from being fed a megabyte."""
_BOUNDARY_CHARS = frozenset(b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ'()+_,-./:=? ")


class MultipartError(ValueError):
    """The body is not the multipart message its Content-Type announces."""


@dataclass(frozen=True)
class MediaType:
    """A parsed Content-Type: ``type/subtype`` in lower case and its parameters (names in lower case)."""

    type: str
    parameters: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Part:
    """One body part, its content spilled to `path`."""

    index: int
    """Position in the body, from 0."""
    headers: dict[str, str]
    """Header fields, names in lower case."""
    path: Path
    size: int

    @property
    def content_type(self) -> MediaType:
        """The part's Content-Type (RFC 2046 default: ``text/plain``)."""
        return parse_media_type(self.headers.get("content-type", "text/plain"))


def parse_media_type(header: str) -> MediaType:
    """Parse a Content-Type header value, unquoting quoted parameter values (RFC 9110 §5.6.6).

    Raises
    ------
    MultipartError
        A parameter is malformed (an unterminated quoted string, a missing ``=``).
    """
    text = header.strip()
    media_type, _, rest = text.partition(";")
    parameters: dict[str, str] = {}
    position = 0
    while position < len(rest):
        while position < len(rest) and rest[position] in " \t;":
            position += 1
        if position >= len(rest):
            break
        equals = rest.find("=", position)
        if equals < 0:
            raise MultipartError(f"Content-Type parameter without a value: {rest[position:]!r}")
        name = rest[position:equals].strip().lower()
        position = equals + 1
        if position < len(rest) and rest[position] == '"':
            value_chars: list[str] = []
            position += 1
            while position < len(rest) and rest[position] != '"':
                if rest[position] == "\\" and position + 1 < len(rest):
                    position += 1
                value_chars.append(rest[position])
                position += 1
            if position >= len(rest):
                raise MultipartError(f"unterminated quoted string in Content-Type parameter {name!r}")
            position += 1
            value = "".join(value_chars)
        else:
            end = rest.find(";", position)
            end = len(rest) if end < 0 else end
            value = rest[position:end].strip()
            position = end
        parameters[name] = value
    return MediaType(media_type.strip().lower(), parameters)


def _check_boundary(boundary: str) -> bytes:
    encoded = boundary.encode("latin-1", errors="replace")
    # RFC 2046 §5.1.1: characters from a restricted set, not ending with a space (its 70 is _MAX_BOUNDARY).
    if not 0 < len(encoded) <= _MAX_BOUNDARY or encoded.endswith(b" ") or not set(encoded) <= _BOUNDARY_CHARS:
        raise MultipartError(f"invalid multipart boundary {boundary!r}")
    return encoded


def _parse_headers(block: bytes) -> dict[str, str]:
    headers: dict[str, str] = {}
    for line in block.decode("latin-1").split("\r\n"):
        if not line:
            continue
        if line[0] in " \t" and headers:  # obsolete line folding: a continuation of the previous field
            last = next(reversed(headers))
            headers[last] += " " + line.strip()
            continue
        name, colon, value = line.partition(":")
        if not colon or not name.strip():
            raise MultipartError(f"malformed part header line {line[:80]!r}")
        headers[name.strip().lower()] = value.strip()
    return headers


async def read_parts(chunks: AsyncIterator[bytes], boundary: str, directory: Path) -> AsyncIterator[Part]:
    """Yield each part of a multipart body as soon as it is complete, its content in `directory`.

    Parameters
    ----------
    chunks : async iterator of bytes
        The body, in chunks of any size (an empty chunk is ignored).
    boundary : str
        The ``boundary`` parameter of the body's Content-Type, unquoted.
    directory : pathlib.Path
        Where the part files go (``part-N``); the caller removes them.

    Raises
    ------
    MultipartError
        No delimiter, a malformed header block, or a body that ends before the close delimiter.
    """
    delimiter = b"\r\n--" + _check_boundary(boundary)
    # The first delimiter may open the body without a CRLF before it: pretend there was one.
    buffer = bytearray(b"\r\n")
    stream = aiter(chunks)
    finished = False

    async def fill() -> bool:
        nonlocal finished
        while not finished:
            try:
                chunk = await anext(stream)
            except StopAsyncIteration:
                finished = True
                return False
            if chunk:
                buffer.extend(chunk)
                return True
        return False

    # Preamble: everything up to the first delimiter is ignored.
    while (found := buffer.find(delimiter)) < 0:
        del buffer[: max(0, len(buffer) - len(delimiter))]
        if not await fill():
            raise MultipartError("the body has no multipart delimiter for its boundary")
    del buffer[: found + len(delimiter)]

    for index in itertools.count():
        # After a delimiter: "--" closes the body; otherwise transport padding, then CRLF.
        while len(buffer) < 2 and await fill():
            pass
        if buffer[:2] == b"--":
            return  # the epilogue, if any, is ignored
        while (line_end := buffer.find(b"\r\n")) < 0:
            if len(buffer) > 1024 or not await fill():
                raise MultipartError("a multipart delimiter is not followed by CRLF")
        if buffer[:line_end].strip(b" \t"):
            raise MultipartError("unexpected characters after a multipart delimiter")
        del buffer[: line_end + 2]

        # Header block, up to the empty line (none at all when the part starts with CRLF).
        while len(buffer) < 2 and await fill():
            pass
        if buffer[:2] == b"\r\n":
            headers: dict[str, str] = {}
            del buffer[:2]
        else:
            while (end := buffer.find(b"\r\n\r\n")) < 0:
                if len(buffer) > _MAX_HEADER_BYTES:
                    raise MultipartError(f"the headers of part {index + 1} exceed {_MAX_HEADER_BYTES} bytes")
                if not await fill():
                    raise MultipartError(f"the body ends inside the headers of part {index + 1}")
            headers = _parse_headers(bytes(buffer[:end]))
            del buffer[: end + 4]

        # Content, up to the next delimiter. Writes go to the page cache: they don't stall the loop.
        path = directory / f"part-{index}"
        size = 0
        with path.open("wb") as out:
            while (found := buffer.find(delimiter)) < 0:
                safe = len(buffer) - len(delimiter) + 1  # a delimiter may straddle two chunks
                if safe > 0:
                    out.write(buffer[:safe])
                    size += safe
                    del buffer[:safe]
                if not await fill():
                    raise MultipartError(f"the body ends inside part {index + 1}, before the close delimiter")
            out.write(buffer[:found])
            size += found
        del buffer[: found + len(delimiter)]
        yield Part(index, headers, path, size)


async def spill_body(chunks: AsyncIterator[bytes], content_type: str, directory: Path) -> AsyncIterator[Part]:
    """Yield a single-part body (``Content-Type: application/dicom``) as one :class:`Part`."""
    path = directory / "part-0"
    size = 0
    with path.open("wb") as out:
        async for chunk in chunks:
            out.write(chunk)
            size += len(chunk)
    yield Part(0, {"content-type": content_type}, path, size)

"""Writing ``multipart/related`` bodies (RFC 2387) part by part, for streaming."""

from __future__ import annotations

import secrets

__all__ = ["MultipartWriter"]


class MultipartWriter:
    """The framing of one multipart/related body whose parts are of `part_type`."""

    def __init__(self, part_type: str) -> None:
        self.part_type = part_type
        self.boundary = f"dicomweb-gateway-{secrets.token_hex(16)}"

    @property
    def content_type(self) -> str:
        """The body's Content-Type header value."""
        return f'multipart/related; type="{self.part_type}"; boundary={self.boundary}'

    def part_header(self, length: int | None, *, content_type: str | None = None, location: str | None = None) -> bytes:
        """The delimiter and headers that open a part of `length` bytes (None: not known yet)."""
        lines = [f"--{self.boundary}", f"Content-Type: {content_type or self.part_type}"]
        if length is not None:
            lines.append(f"Content-Length: {length}")
        if location:
            lines.append(f"Content-Location: {location}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")

    def part_end(self) -> bytes:
        """What follows a part's content."""
        return b"\r\n"

    def close(self) -> bytes:
        """The closing delimiter."""
        return f"--{self.boundary}--\r\n".encode("ascii")

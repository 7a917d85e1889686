"""Which form of DICOM a WADO-RS client accepts for instances (PS3.18 §8.7.3, Table 8.7.3-2).

Instances are answered as ``multipart/related; type="application/dicom"``. The ``transfer-syntax``
parameter picks the encoding: ``*`` takes the instances as the PACS sent them, and when it is
absent the default is Explicit VR Little Endian (PS3.18 §8.7.3.5.2), into which the gateway
converts uncompressed data and decodes compressed data. Any other transfer syntax is not offered:
the gateway does not re-encode, so it cannot promise it, and answers 406.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydicom.uid import ExplicitVRLittleEndian

from gateway.routes.common import NotAcceptable

__all__ = ["AS_STORED", "AcceptedType", "DicomRendition", "negotiate_instances", "parse_accept"]

AS_STORED = "*"


@dataclass(frozen=True)
class AcceptedType:
    """One entry of an Accept header: a media type, its parameters (lower-case names), its q."""

    media_type: str
    params: dict[str, str]
    quality: float


@dataclass(frozen=True)
class DicomRendition:
    """How instances are sent: as stored (``*``) or in one transfer syntax."""

    transfer_syntax: str


def parse_accept(header: str) -> list[AcceptedType]:
    """The entries of an Accept header, best first (stable for equal q); q=0 entries dropped."""
    entries: list[AcceptedType] = []
    for item in _split_outside_quotes(header, ","):
        fields = _split_outside_quotes(item, ";")
        media_type = fields[0].strip().lower()
        if not media_type:
            continue
        params: dict[str, str] = {}
        for field in fields[1:]:
            name, _, value = field.partition("=")
            params[name.strip().lower()] = value.strip().strip('"')
        try:
            quality = float(params.pop("q", "1"))
        except ValueError:
            quality = 1.0
        if quality > 0:
            entries.append(AcceptedType(media_type, params, quality))
    return sorted(entries, key=lambda e: -e.quality)


def negotiate_instances(header: str) -> DicomRendition:
    """The rendition of instances for an Accept header; raises :class:`NotAcceptable` if none."""
    if not header.strip():
        return DicomRendition(ExplicitVRLittleEndian)
    offered: list[str] = []
    for entry in parse_accept(header):
        if entry.media_type in ("*/*", "multipart/*"):
            return DicomRendition(ExplicitVRLittleEndian)
        if entry.media_type != "multipart/related":
            offered.append(entry.media_type)
            continue
        part_type = entry.params.get("type", "application/dicom").lower()
        if part_type not in ("application/dicom", "application/*", "*/*"):
            offered.append(f"multipart/related; type={part_type}")
            continue
        syntax = entry.params.get("transfer-syntax", ExplicitVRLittleEndian)
        if syntax in (AS_STORED, ExplicitVRLittleEndian):
            return DicomRendition(syntax)
        offered.append(f"transfer-syntax={syntax}")
    raise NotAcceptable(
        f"cannot send instances as {', '.join(offered) or header!r}; this resource is served as "
        'multipart/related; type="application/dicom" with transfer-syntax=* (as stored) '
        f"or {ExplicitVRLittleEndian} (Explicit VR Little Endian, the default)"
    )


def _split_outside_quotes(text: str, separator: str) -> list[str]:
    parts: list[str] = []
    current: list[str] = []
    quoted = False
    for char in text:
        if char == '"':
            quoted = not quoted
        if char == separator and not quoted:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return parts

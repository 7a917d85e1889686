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

from gateway.errors import NotAcceptable
from gateway.wado.accept import parse_accept

__all__ = ["AS_STORED", "DicomRendition", "negotiate_instances"]

AS_STORED = "*"


@dataclass(frozen=True)
class DicomRendition:
    """How instances are sent: as stored (``*``) or in one transfer syntax."""

    transfer_syntax: str


def negotiate_instances(header: str) -> DicomRendition:
    """The rendition of instances for an Accept header.

    Raises
    ------
    NotAcceptable
        The header admits no rendition the gateway can send.
    BadRequest
        The header is malformed.
    """
    offered: list[str] = []
    for entry in parse_accept(header):
        if entry.media_type in ("*/*", "multipart/*"):
            return DicomRendition(ExplicitVRLittleEndian)
        if entry.media_type != "multipart/related":
            offered.append(entry.media_type)
            continue
        part_type = entry.parameters.get("type", "application/dicom").lower()
        if part_type not in ("application/dicom", "application/*", "*/*"):
            offered.append(f"multipart/related; type={part_type}")
            continue
        syntax = entry.parameters.get("transfer-syntax", ExplicitVRLittleEndian)
        if syntax in (AS_STORED, ExplicitVRLittleEndian):
            return DicomRendition(syntax)
        offered.append(f"transfer-syntax={syntax}")
    raise NotAcceptable(
        f"cannot send instances as {', '.join(offered) or header!r}; this resource is served as "
        'multipart/related; type="application/dicom" with transfer-syntax=* (as stored) '
        f"or {ExplicitVRLittleEndian} (Explicit VR Little Endian, the default)"
    )

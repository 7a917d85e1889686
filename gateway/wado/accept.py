"""The Accept header as a list of media ranges, most preferred first (RFC 9110 §12.5.1).

WADO-RS puts what matters in parameters (PS3.18 §8.7.3): ``multipart/related;
type="application/octet-stream"; transfer-syntax=*``. Parameter names are case-insensitive and
their values may be quoted or not (OHIF sends ``type=application/octet-stream`` unquoted); both
are normalized here so that the negotiators in :mod:`gateway.wado.frames` and
:mod:`gateway.wado.render` only compare strings.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from gateway.errors import BadRequest

__all__ = ["MediaRange", "parse_accept"]

# A comma or semicolon inside a quoted string does not separate anything.
_ITEMS = re.compile(r'(?:[^,"]|"[^"]*")+')
_PARAMETERS = re.compile(r'(?:[^;"]|"[^"]*")+')
_QUALITY = re.compile(r"0(\.\d{0,3})?|1(\.0{0,3})?")


@dataclass(frozen=True)
class MediaRange:
    """One media range of an Accept header.

    Attributes
    ----------
    media_type : str
        Lower case, e.g. ``"multipart/related"``, ``"image/*"``, ``"*/*"``.
    parameters : dict of str to str
        Names lower case, values unquoted, ``q`` left out.
    quality : float
        The ``q`` weight, 1 when absent.
    """

    media_type: str
    parameters: dict[str, str] = field(default_factory=dict)
    quality: float = 1.0


def parse_accept(header: str | None) -> list[MediaRange]:
    """The media ranges of `header`, highest quality first, in header order among equals.

    Ranges with ``q=0`` ("not acceptable") are left out. A missing or blank header accepts
    anything: ``[MediaRange("*/*")]``.

    Raises
    ------
    BadRequest
        A range has no ``type/subtype``, a parameter has no ``=``, or ``q`` is not a qvalue.
    """
    if header is None or not header.strip():
        return [MediaRange("*/*")]
    ranges = []
    for item in _ITEMS.findall(header):
        if not item.strip():
            continue
        media_type, *parameter_texts = [part.strip() for part in _PARAMETERS.findall(item)] or [""]
        if item.lstrip().startswith(";"):  # "; q=1": parameters without a media range
            media_type, parameter_texts = "", []
        media_type = media_type.lower()
        if media_type.count("/") != 1 or " " in media_type or media_type.startswith("/") or media_type.endswith("/"):
            raise BadRequest(f"Accept: {media_type!r} is not a media range (type/subtype)")
        parameters = {}
        for text in parameter_texts:
            name, equals, value = text.partition("=")
            if not equals:
                raise BadRequest(f"Accept: parameter {text!r} of {media_type} has no value")
            parameters[name.strip().lower()] = value.strip().strip('"')
        quality_text = parameters.pop("q", "1")
        if not _QUALITY.fullmatch(quality_text):
            raise BadRequest(f"Accept: q={quality_text} of {media_type} is not a number from 0 to 1")
        if float(quality_text) > 0:
            ranges.append(MediaRange(media_type, parameters, float(quality_text)))
    return sorted(ranges, key=lambda r: -r.quality)

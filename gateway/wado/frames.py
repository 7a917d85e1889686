"""The frames resource of WADO-RS: ``.../instances/{uid}/frames/{numbers}`` (PS3.18 §10.4.1.1.7).

Three steps, each one function a route calls: :func:`parse_frame_numbers` reads the path,
:func:`negotiate_frame_encoding` picks what each frame is sent as from the Accept header and the
stored transfer syntax, :func:`read_frames` gives the frames' bytes in that encoding.

What can be sent (PS3.18 §8.7.3.3):

- ``application/octet-stream`` with Explicit VR Little Endian (Table 8.7.3-4), the default: native
  frames as stored, compressed frames decoded. Decoding lossy data loses nothing more, and the
  standard lets a server decompress; colour frames decoded from JPEG, JPEG-LS, JPEG 2000 or RLE
  are RGB with interleaved samples (what a decompressed YBR_FULL_422 image becomes, PS3.5
  §8.2.1), which is not always the photometric interpretation the metadata gives.
- the stored compressed syntax, as its image media type of Table 8.7.3-5 (``image/jpeg``,
  ``image/jls``, ``image/jp2``, ``image/jpx``, ``image/jphc``, ``image/dicom-rle``) or as
  ``application/octet-stream; transfer-syntax={stored}`` when the client asked for
  ``transfer-syntax=*`` (OHIF v3: ``multipart/related; type=application/octet-stream;
  transfer-syntax=*``); the part's media type then matches the ``type`` the client named.

Nothing is re-encoded: a compressed syntax other than the stored one is not offered, so lossless
data never becomes lossy. Only ``multipart/related`` answers are negotiated (and ``*/*``); frames
of video (MPEG, HEVC) are not frames of a codestream and are refused.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from pydicom.filereader import read_file_meta_info
from pydicom.pixels.decoders.base import get_decoder
from pydicom.uid import (
    HTJ2K,
    JPEG2000,
    JPEG2000MC,
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    HTJ2KLossless,
    HTJ2KLosslessRPCL,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEG2000MCLossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)

from gateway.errors import BadRequest, NotAcceptable
from gateway.numbers import parse_integer
from gateway.wado.accept import parse_accept
from gateway.wado.pixels import StoredPixels

__all__ = [
    "OCTET_STREAM",
    "FrameEncoding",
    "decodes",
    "frame_geometry",
    "negotiate_frame_encoding",
    "parse_frame_numbers",
    "read_frames",
    "stored_transfer_syntax",
]

OCTET_STREAM = "application/octet-stream"

# PS3.18 Table 8.7.3-5, and HTJ2K's image/jphc (added with PS3.5's HTJ2K syntaxes).
_IMAGE_MEDIA_TYPES: dict[str, tuple[UID, ...]] = {
    "image/jpeg": (JPEGLosslessSV1, JPEGBaseline8Bit, JPEGExtended12Bit, JPEGLossless),
    "image/dicom-rle": (RLELossless,),
    "image/jls": (JPEGLSLossless, JPEGLSNearLossless),
    "image/jp2": (JPEG2000Lossless, JPEG2000),
    "image/jpx": (JPEG2000MCLossless, JPEG2000MC),
    "image/jphc": (HTJ2KLossless, HTJ2KLosslessRPCL, HTJ2K),
}
_MEDIA_TYPE_OF = {syntax: media_type for media_type, syntaxes in _IMAGE_MEDIA_TYPES.items() for syntax in syntaxes}
_NATIVE = frozenset(
    {ExplicitVRLittleEndian, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian}
)


@dataclass(frozen=True)
class FrameEncoding:
    """What every frame of a response is sent as.

    Attributes
    ----------
    media_type : str
        The media type of each part, and the ``type`` of the ``multipart/related`` answer.
    transfer_syntax : pydicom.uid.UID
        Explicit VR Little Endian (uncompressed), or the stored compressed syntax.
    """

    media_type: str
    transfer_syntax: UID

    @property
    def content_type(self) -> str:
        """The Content-Type of each part: ``image/jls; transfer-syntax=1.2.840.10008.1.2.4.80``."""
        return f"{self.media_type}; transfer-syntax={self.transfer_syntax}"


_UNCOMPRESSED = FrameEncoding(OCTET_STREAM, ExplicitVRLittleEndian)


def stored_transfer_syntax(path: Path) -> UID:
    """The transfer syntax of the Part 10 file at `path`, from its File Meta Information only."""
    return UID(read_file_meta_info(path).TransferSyntaxUID)


def frame_geometry(path: Path) -> tuple[int, int]:
    """(number of frames, samples per frame) of the image at `path`; 1 frame for a single-frame image.

    Raises
    ------
    BadRequest
        The instance has no pixel data.
    """
    with StoredPixels(path) as pixels:
        return pixels.number_of_frames, pixels.samples_per_frame


def decodes(encoding: FrameEncoding, stored: UID) -> bool:
    """True when sending frames stored in `stored` as `encoding` decodes them (costs decoding work)."""
    native_little_endian = not stored.is_encapsulated and stored.is_little_endian
    return encoding.transfer_syntax == ExplicitVRLittleEndian and not native_little_endian


def parse_frame_numbers(text: str) -> list[int]:
    """The frame numbers of a frame list (``"1,3,5"``), 1-based, in the order given.

    Raises
    ------
    BadRequest
        The list is empty or an item is not a positive integer.
    """
    numbers = []
    for item in text.split(","):
        number = parse_integer(item, "frame number")
        if number < 1:
            raise BadRequest(f"frame number {item!r} is not a positive integer (frames are numbered from 1)")
        numbers.append(number)
    return numbers


def _decodable(transfer_syntax: UID) -> bool:
    try:
        return get_decoder(transfer_syntax).is_available
    except NotImplementedError:
        return False


def _candidates(stored: UID) -> tuple[FrameEncoding | None, FrameEncoding | None]:
    """(uncompressed, as stored): what frames stored in `stored` can be sent as; None when they cannot."""
    if stored in _NATIVE:
        return _UNCOMPRESSED, _UNCOMPRESSED
    if stored not in _MEDIA_TYPE_OF:
        return None, None
    return (_UNCOMPRESSED if _decodable(stored) else None), FrameEncoding(_MEDIA_TYPE_OF[stored], stored)


def _choose(
    part_type: str, syntax: str | None, stored: UID, uncompressed: FrameEncoding | None, as_stored: FrameEncoding | None
) -> FrameEncoding | None:
    if part_type in (OCTET_STREAM, "*/*", "application/*"):
        if syntax in (None, ExplicitVRLittleEndian):
            return uncompressed
        if (syntax == "*" or syntax == stored) and as_stored is not None:
            # As stored, labelled with the type the client named (RFC 2387: type is the parts' type).
            return as_stored if part_type == "*/*" else FrameEncoding(OCTET_STREAM, as_stored.transfer_syntax)
        return None
    if part_type in _IMAGE_MEDIA_TYPES and stored in _IMAGE_MEDIA_TYPES[part_type] and syntax in (None, "*", stored):
        return as_stored
    return None


def negotiate_frame_encoding(accept: str | None, stored: UID) -> FrameEncoding:
    """The encoding to send frames stored in `stored` in, for the Accept header `accept`.

    Parameters
    ----------
    accept : str or None
        The request's Accept header; missing or ``*/*`` selects the default,
        ``application/octet-stream`` in Explicit VR Little Endian (PS3.18 §8.7.3.3.1).
    stored : pydicom.uid.UID
        The instance's transfer syntax (:func:`stored_transfer_syntax`).

    Raises
    ------
    NotAcceptable
        No media range of `accept` can be met.
    BadRequest
        `accept` is malformed.
    """
    uncompressed, as_stored = _candidates(stored)
    ranges = parse_accept(accept)
    for media_range in ranges:
        if media_range.media_type == "multipart/related":
            part_type = media_range.parameters.get("type", OCTET_STREAM).lower()
        elif media_range.media_type in ("*/*", "multipart/*"):
            part_type = "*/*"
        else:
            continue
        syntax = media_range.parameters.get("transfer-syntax")
        chosen = _choose(part_type, syntax, stored, uncompressed, as_stored)
        if chosen is not None:
            return chosen
    offers = dict.fromkeys(
        f'multipart/related; type="{offer.media_type}"; transfer-syntax={offer.transfer_syntax}'
        for offer in (uncompressed, as_stored)
        if offer is not None
    )
    available = "available: " + ", ".join(offers) if offers else "frames of this transfer syntax cannot be sent"
    if offers and not any(r.media_type in ("multipart/related", "multipart/*", "*/*") for r in ranges):
        # The media type is the problem, not the transfer syntax: say so (PS3.18 §8.7.3.3.2).
        raise NotAcceptable(
            f"frames are sent as multipart/related (one part per frame), which Accept {accept!r} does not admit; "
            f"{available}"
        )
    part_types = {r.parameters.get("type", OCTET_STREAM).lower() for r in ranges if r.media_type == "multipart/related"}
    known = {OCTET_STREAM, "*/*", "application/*", *_IMAGE_MEDIA_TYPES}
    if offers and part_types and not part_types & known:
        raise NotAcceptable(
            f"frames are not sent as parts of type {', '.join(sorted(part_types))} (Accept {accept!r}); {available}"
        )
    raise NotAcceptable(f"frames stored as {stored.name} ({stored}) cannot be sent as {accept!r}; {available}")


def read_frames(path: Path, numbers: Sequence[int], encoding: FrameEncoding) -> Iterator[bytes]:
    """The bytes of frames `numbers` (1-based) of the image at `path`, one item per frame, in `encoding`.

    Checks happen when this is called, so that a route can answer an error before it starts the
    response; the file is read as the iterator is consumed, one frame in memory at a time.

    Raises
    ------
    BadRequest
        The instance has no pixel data, or a frame number is out of range (PS3.18 §9.5.2 answers
        400 for a frame number past Number of Frames).
    NotAcceptable
        `encoding` is neither uncompressed nor the instance's stored syntax.
    """
    pixels = StoredPixels(path)
    try:
        indices = [pixels.frame_index(number) for number in numbers]
        if encoding.transfer_syntax not in (ExplicitVRLittleEndian, pixels.transfer_syntax):
            stored = pixels.transfer_syntax.name
            raise NotAcceptable(f"frames stored as {stored} cannot be sent as {encoding.content_type}")
    except BaseException:
        pixels.close()
        raise
    return _iter_frames(pixels, indices, encoding.transfer_syntax == ExplicitVRLittleEndian)


def _iter_frames(pixels: StoredPixels, indices: list[int], uncompressed: bool) -> Iterator[bytes]:
    with pixels:
        read = pixels.uncompressed_frame if uncompressed else pixels.stored_frame
        for index in indices:
            yield read(index)

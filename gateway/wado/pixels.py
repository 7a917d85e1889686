"""The pixel data of a Part 10 file, read one frame at a time.

Only the header and the frames asked for are read: a native frame is one ``seek`` and one
``read``, an encapsulated frame is found through the Basic or Extended Offset Table (or by walking
the fragments) with :func:`pydicom.encaps.get_frame`, and decoding goes through pydicom's decoders
(with the pylibjpeg plugins for JPEG, JPEG-LS and JPEG 2000). A deflated file (PS3.5 A.5) is the
exception: it has no random access, so it is inflated whole.
"""

from __future__ import annotations

import io
from pathlib import Path
from types import TracebackType
from typing import IO, Any, BinaryIO, cast

import numpy as np
from pydicom import dcmread
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.encaps import get_frame
from pydicom.pixels.decoders.base import get_decoder
from pydicom.pixels.utils import as_pixel_options
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian

from gateway.errors import BadRequest

__all__ = ["HEADER_DEFER_SIZE", "PIXEL_DATA_TAGS", "StoredPixels", "read_header"]

PIXEL_DATA_TAGS = {0x7FE00010: "PixelData", 0x7FE00008: "FloatPixelData", 0x7FE00009: "DoubleFloatPixelData"}
"""The three pixel data elements (PS3.3 C.7.6.3, C.7.6.24), by tag, with their keywords."""

HEADER_DEFER_SIZE = 64 * 1024
"""Values longer than this stay on disk when a header is read (pixel data, overlays, documents...)."""


def read_header(file: IO[bytes]) -> Dataset:
    """The dataset of the Part 10 file open as `file`, its values over :data:`HEADER_DEFER_SIZE` left unread.

    A deflated file (PS3.5 A.5) has no random access: it is inflated and read whole.
    """
    dataset = dcmread(file, defer_size=HEADER_DEFER_SIZE)
    if dataset.file_meta.TransferSyntaxUID == DeflatedExplicitVRLittleEndian:
        file.seek(0)
        dataset = dcmread(file)
    return dataset


class StoredPixels:
    """The pixel data of one Part 10 file, open for reading frames one at a time.

    Use as a context manager. Frames are read by 0-based index; :meth:`frame_index` turns a
    1-based frame number from a request into one.

    Parameters
    ----------
    path : pathlib.Path
        A Part 10 file.

    Raises
    ------
    BadRequest
        The instance has no pixel data (it is not an image: PS3.18 §9.5.2 answers 400 for
        frames of a resource that has none).

    Notes
    -----
    A pixel data value short enough to have been read with the header is used from memory.
    """

    def __init__(self, path: Path) -> None:
        self._file: BinaryIO = path.open("rb")
        try:
            self.dataset = read_header(self._file)
            self.transfer_syntax = UID(self.dataset.file_meta.TransferSyntaxUID)
            element = self._pixel_element(path)
            self._options: dict[str, Any] = as_pixel_options(self.dataset)
            self._options["pixel_keyword"] = PIXEL_DATA_TAGS[int(element.tag)]
            if element.VR:
                self._options["pixel_vr"] = element.VR
            self.number_of_frames = int(self._options["number_of_frames"])
            if isinstance(element, RawDataElement) and element.value is None:  # left on disk by read_header
                self._value_offset = element.value_tell
            else:
                self._file.close()
                self._file = io.BytesIO(cast(bytes, element.value))
                self._value_offset = 0
        except BaseException:
            self._file.close()
            raise

    def _pixel_element(self, path: Path) -> DataElement | RawDataElement:
        for tag in PIXEL_DATA_TAGS:
            if tag in self.dataset:
                return self.dataset.get_item(tag, keep_deferred=True)
        raise BadRequest(f"instance {self.dataset.get('SOPInstanceUID', path.name)} has no pixel data")

    def __enter__(self) -> StoredPixels:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the file."""
        self._file.close()

    @property
    def bits_allocated(self) -> int:
        """(0028,0100) Bits Allocated."""
        return int(self._options["bits_allocated"])

    def frame_index(self, number: int) -> int:
        """The 0-based index of frame `number` (1-based).

        Raises
        ------
        BadRequest
            `number` is out of range (PS3.18 §9.5.2 answers 400 for a frame number past Number of
            Frames).
        """
        if not 1 <= number <= self.number_of_frames:
            raise BadRequest(f"frame {number} is out of range: the instance has {self.number_of_frames} frame(s)")
        return number - 1

    @property
    def samples_per_frame(self) -> int:
        """Rows x columns x samples per pixel: the samples decoding one frame yields."""
        return int(self._options["rows"]) * int(self._options["columns"]) * int(self._options["samples_per_pixel"])

    def stored_frame(self, index: int) -> bytes:
        """The frame at `index` as stored: its compressed octet stream, or its native bytes.

        Encapsulated frames come without their item delimiters, fragments joined (PS3.18
        §8.7.3.3.2). Native frames with Bits Allocated 1 are not byte-aligned inside the pixel
        data (PS3.5 §8.1.1); each is returned re-packed from its first pixel, in
        ``ceil(pixels / 8)`` bytes.
        """
        if self.transfer_syntax.is_encapsulated:
            self._file.seek(self._value_offset)
            return get_frame(
                self._file,
                index,
                number_of_frames=self.number_of_frames,
                extended_offsets=self._options.get("extended_offsets"),
            )
        pixels = self.samples_per_frame
        if self.bits_allocated == 1:
            first_bit = index * pixels
            self._file.seek(self._value_offset + first_bit // 8)
            packed = self._file.read((first_bit % 8 + pixels + 7) // 8)
            bits = np.unpackbits(np.frombuffer(packed, np.uint8), bitorder="little")
            return np.packbits(bits[first_bit % 8 : first_bit % 8 + pixels], bitorder="little").tobytes()
        length = pixels * self.bits_allocated // 8
        if self._options["photometric_interpretation"] == "YBR_FULL_422":
            length = length // 3 * 2  # two chroma samples for every two pixels (PS3.3 C.7.6.3.1.2)
        self._file.seek(self._value_offset + index * length)
        return self._file.read(length)

    def decoded_frame(self, index: int) -> np.ndarray[Any, Any]:
        """The frame at `index` decoded: shape (rows, columns) or (rows, columns, samples).

        Colour comes back as RGB with the samples interleaved, whatever the stored photometric
        interpretation (YBR_FULL, YBR_FULL_422) and planar configuration; Bits Allocated 1 comes
        back unpacked, one pixel a byte.
        """
        self._file.seek(self._value_offset)
        array, _ = get_decoder(self.transfer_syntax).as_array(self._file, index=index, **self._options)
        return array

    def uncompressed_frame(self, index: int) -> bytes:
        """The frame at `index` as Explicit VR Little Endian bytes (PS3.18 Table 8.7.3-4).

        Stored little endian frames are returned as they are; anything else is decoded (see
        :meth:`decoded_frame` for the colour of decoded frames).
        """
        if not self.transfer_syntax.is_encapsulated and self.transfer_syntax.is_little_endian:
            return self.stored_frame(index)
        array = self.decoded_frame(index)
        if self.bits_allocated == 1:
            return np.packbits(array.ravel(), bitorder="little").tobytes()
        return array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()

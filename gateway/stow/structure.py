"""Is an uploaded Part 10 file's data set whole? Its element structure walked, no value read.

A PACS that cannot parse what it receives may just not answer the C-STORE: Orthanc, given an
instance cut short or followed by stray bytes, waits until the gateway's ``dimse_timeout`` (30 s
by default) for each one. So before an instance is sent, every element header is read and its
value skipped: each value must lie inside the file, undefined lengths must be sequences or
encapsulated pixel data whose items and delimiters are all there, and the last element must end
where the file does. Costs a seek per element, whatever the size of the values.

Deflated files (PS3.5 A.5) are not walked: they have no random access, and pydicom reads them whole.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import BinaryIO

from pydicom.filereader import read_preamble
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian, ImplicitVRLittleEndian

__all__ = ["MalformedDataset", "check_structure"]

# PS3.5 Table 7.1-1: explicit VRs with a reserved field and a 32-bit length.
_LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"})
_UNDEFINED = 0xFFFFFFFF
_ITEM, _ITEM_END, _SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_MAX_DEPTH = 32
_PIXEL_DATA_TAGS = frozenset({0x7FE00010, 0x7FE00008, 0x7FE00009})


class MalformedDataset(ValueError):
    """The data set is not whole: the message says where it breaks."""


class _Walker:
    def __init__(self, file: BinaryIO, size: int, *, explicit: bool, little: bool) -> None:
        self.file = file
        self.size = size
        self.explicit = explicit
        self.endian = "<" if little else ">"

    def read(self, count: int) -> bytes:
        data = self.file.read(count)
        if len(data) != count:
            raise MalformedDataset(f"the file ends inside an element header at byte {self.file.tell()}")
        return data

    def tag(self) -> int:
        group, element = struct.unpack(self.endian + "HH", self.read(4))
        return int(group << 16 | element)

    def skip(self, length: int, what: str) -> None:
        end = self.file.tell() + length
        if end > self.size:
            raise MalformedDataset(f"{what} runs {end - self.size} bytes past the end of the file")
        self.file.seek(end)

    def dataset(self, depth: int, *, until: int | None = None, end: int | None = None) -> None:
        """Elements up to `until` (an item delimiter), to `end` (a defined-length item), or to the end of the file."""
        if depth > _MAX_DEPTH:
            raise MalformedDataset(f"sequences nested more than {_MAX_DEPTH} deep")
        stop = self.size if end is None else end
        while self.file.tell() < stop:
            tag = self.tag()
            if tag == until:
                self.read(4)  # the delimiter's zero length
                return
            self.rest_of_element(tag, depth)
        if until is not None:
            raise MalformedDataset("the file ends inside a sequence item")
        if self.file.tell() != stop:
            raise MalformedDataset(f"an element runs {self.file.tell() - stop} bytes past the end of its item")

    def rest_of_element(self, tag: int, depth: int) -> None:
        """The VR, length and value of the element whose tag was just read."""
        what = f"element ({tag >> 16:04X},{tag & 0xFFFF:04X})"
        vr = b""
        if self.explicit and tag >> 16 != 0xFFFE:
            vr = self.read(2)
            if not vr.isalpha() or not vr.isupper():
                raise MalformedDataset(f"{what} has no valid VR ({vr!r})")
            if vr in _LONG_VRS:
                self.read(2)
                (length,) = struct.unpack(self.endian + "L", self.read(4))
            else:
                (length,) = struct.unpack(self.endian + "H", self.read(2))
        else:
            (length,) = struct.unpack(self.endian + "L", self.read(4))
        # Undefined length: a sequence, or encapsulated pixel data whose items are fragments, not data sets.
        fragments = vr in (b"OB", b"OW") or tag in _PIXEL_DATA_TAGS
        if length == _UNDEFINED:
            self.items(depth + 1, what, fragments=fragments)
        elif vr == b"SQ":
            end = self.file.tell() + length
            if end > self.size:
                raise MalformedDataset(f"{what} runs {end - self.size} bytes past the end of the file")
            self.items(depth + 1, what, fragments=False, end=end)
        else:
            self.skip(length, what)

    def items(self, depth: int, what: str, *, fragments: bool, end: int | None = None) -> None:
        """The items of a sequence or of encapsulated pixel data: to `end` when its length is defined, else
        to its delimiter."""
        while end is None or self.file.tell() < end:
            tag = self.tag()
            (length,) = struct.unpack(self.endian + "L", self.read(4))
            if tag == _SEQUENCE_END and end is None:
                return
            if tag != _ITEM:
                raise MalformedDataset(f"{what}: ({tag >> 16:04X},{tag & 0xFFFF:04X}) where an item should be")
            if length == _UNDEFINED and not fragments:
                self.dataset(depth, until=_ITEM_END)
            elif fragments:
                self.skip(length, f"a fragment of {what}")
            else:
                item_end = self.file.tell() + length
                if item_end > (end or self.size):
                    raise MalformedDataset(f"an item of {what} runs past its sequence or the file")
                self.dataset(depth, end=item_end)
        if self.file.tell() != end:
            raise MalformedDataset(f"the items of {what} run past its length")


def check_structure(path: Path, transfer_syntax: UID) -> None:
    """Raise :class:`MalformedDataset` unless the data set of the Part 10 file at `path` is whole.

    `transfer_syntax` is the file's, from its File Meta Information (already read by the caller).
    """
    if transfer_syntax == DeflatedExplicitVRLittleEndian or not transfer_syntax.is_transfer_syntax:
        return  # no random access, or an encoding this cannot know (a private transfer syntax)
    size = os.path.getsize(path)
    with path.open("rb") as file:
        read_preamble(file, force=False)
        # File Meta Information: group 0002, explicit VR little endian whatever the data set's syntax.
        meta = _Walker(file, size, explicit=True, little=True)
        while file.tell() < size:
            start = file.tell()
            tag = meta.tag()
            if tag >> 16 != 0x0002:
                file.seek(start)
                break
            meta.rest_of_element(tag, 0)
        explicit = transfer_syntax != ImplicitVRLittleEndian
        _Walker(file, size, explicit=explicit, little=transfer_syntax.is_little_endian).dataset(0, until=None)

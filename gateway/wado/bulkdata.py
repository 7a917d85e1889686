"""The bulk data resource: the value a ``BulkDataURI`` of :mod:`gateway.wado.metadata` names.

A BulkDataURI is ``{instance URL}/bulkdata/{tag path}``. The tag path names an element from the
top-level dataset down: 8 hex digits for each tag, and the 0-based item index after each
sequence, separated by ``/``: ``7FE00010``, ``00540016/0/00181079``. It is the path
:func:`gateway.query.dicomjson.dataset_to_json` hands its bulk data handler.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset

from gateway.errors import BadRequest, NotFound
from gateway.wado.pixels import PIXEL_DATA_TAGS, StoredPixels, read_header

__all__ = ["CHUNK_SIZE", "iter_bulkdata"]

CHUNK_SIZE = 1 << 20
"""The most bytes of a value held in memory at once while it is streamed from disk."""

_TAG_PATH = re.compile(r"[0-9A-Fa-f]{8}(?:/[0-9]{1,9}/[0-9A-Fa-f]{8})*")


def _locate(dataset: Dataset, tag_path: str) -> DataElement | RawDataElement:
    """The element `tag_path` names in `dataset`, its value unread if it was deferred."""
    *steps, last = tag_path.split("/")[::2]
    indices = [int(index) for index in tag_path.split("/")[1::2]]
    for tag_text, index in zip(steps, indices, strict=True):
        element = dataset.get(int(tag_text, 16))
        if element is None or element.VR != "SQ" or index >= len(element.value):
            raise NotFound(f"no bulk data at {tag_path}: no item {index} in sequence {tag_text.upper()}")
        dataset = element.value[index]
    tag = int(last, 16)
    if tag not in dataset:
        raise NotFound(f"no bulk data at {tag_path}: the instance has no element {last.upper()} there")
    element = dataset.get_item(tag, keep_deferred=True)
    if element.VR == "SQ" or isinstance(element, DataElement) and not isinstance(element.value, bytes):
        raise NotFound(f"no bulk data at {tag_path}: {last.upper()} is not a value")
    return element


def iter_bulkdata(path: Path, tag_path: str) -> Iterator[bytes]:
    """The value `tag_path` names in the Part 10 file at `path`, in chunks.

    The chunks joined are the value as encoded in the file (little endian in every transfer
    syntax but the retired Explicit VR Big Endian), without padding removed. Encapsulated pixel
    data is the exception: there is one chunk per frame, each frame's compressed octet stream
    without item delimiters (PS3.18 §8.7.3.3.2), so that a route can send one part per frame.

    The path is checked and the element found when this is called, so that a route can answer an
    error before it starts the response; values left on disk are then read as the iterator is
    consumed, :data:`CHUNK_SIZE` bytes at a time.

    Raises
    ------
    BadRequest
        `tag_path` is not a tag path.
    NotFound
        The instance has no such element, or the path names a sequence.
    """
    if not _TAG_PATH.fullmatch(tag_path):
        raise BadRequest(f"bulk data path {tag_path!r} is not TAG[/ITEM/TAG]... (8 hex digit tags, 0-based items)")
    file = path.open("rb")
    try:
        dataset = read_header(file)
        element = _locate(dataset, tag_path)
        encapsulated = dataset.file_meta.TransferSyntaxUID.is_encapsulated
        if int(element.tag) in PIXEL_DATA_TAGS and "/" not in tag_path and encapsulated:
            file.close()
            return _iter_encapsulated_frames(path)
        if isinstance(element, RawDataElement) and element.value is None:
            return _iter_file_range(file, element.value_tell, element.length)
        file.close()
        return iter([element.value or b""])
    except BaseException:
        file.close()
        raise


def _iter_file_range(file: IO[bytes], offset: int, length: int) -> Iterator[bytes]:
    with file:
        file.seek(offset)
        while length > 0:
            chunk = file.read(min(length, CHUNK_SIZE))
            if not chunk:
                return
            length -= len(chunk)
            yield chunk


def _iter_encapsulated_frames(path: Path) -> Iterator[bytes]:
    with StoredPixels(path) as pixels:
        for index in range(pixels.number_of_frames):
            yield pixels.stored_frame(index)

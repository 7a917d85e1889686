"""pydicom Datasets -> DICOM JSON model (PS3.18 Annex F), encoded with orjson.

pydicom's ``to_json_dict`` does the heavy lifting (PN as ``Alphabetic`` objects, IS/DS as
numbers, ``vr`` on every element). This module adds what a gateway needs on top: values that a
PACS sends slightly malformed (trailing NULs on UIDs, unparsable numbers) are repaired or kept as
strings instead of failing the whole answer, and elements private to the DIMSE exchange are left
out.

Instance metadata (WADO-RS) adds one thing: a :data:`BulkDataHandler` that moves binary and
large values out of line. It is given each element with its tag path (``"00540016/0/00181079"``:
the tags from the top-level dataset down, with the 0-based item index after each sequence), and
elements read with ``defer_size`` stay unread.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any, TypeAlias

import orjson
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

__all__ = ["BulkDataHandler", "dataset_to_json", "empty_elements", "encode_json"]

logger = logging.getLogger(__name__)

BulkDataHandler: TypeAlias = Callable[[str, DataElement | RawDataElement], dict[str, Any] | None]
"""Given an element's tag path and the element, its JSON when it goes out of line, else None."""

# Meaningful only inside the DIMSE exchange: the JSON model is always UTF-8, and the level and
# retrieve AE title describe the PACS, not the gateway that answers.
_DIMSE_ONLY = frozenset({0x00080005, 0x00080052, 0x00080054})

_NUMBER_VRS = frozenset({"IS", "DS"})


def _decoded_to_json(element: DataElement) -> dict[str, Any] | None:
    """DICOM JSON for a decoded string or number element, or None to let pydicom do it."""
    vr = element.VR
    if vr not in _STRING_VRS and vr not in _NUMBER_VRS and vr not in _TEXT_VRS:
        return None
    value = element.value
    items = list(value) if isinstance(value, MultiValue | list) else [value]
    values: list[Any] = []
    for item in items:
        text = "" if item is None else str(item).strip(" \x00")
        if vr == "PN":
            groups = text.split("=")
            values.append({name: part for name, part in zip(_PN_GROUPS, groups, strict=False) if part} or None)
        elif vr in _NUMBER_VRS:
            try:
                values.append(_number(vr, text))
            except ValueError:
                return None
        else:
            values.append(text or None)
    if all(v is None for v in values):
        return {"vr": vr}
    return {"vr": vr, "Value": values}


def _element_to_json(element: DataElement, bulk_data: BulkDataHandler | None, path: str) -> dict[str, Any]:
    fast = _decoded_to_json(element)
    if fast is not None:
        return fast
    if element.VR == "SQ":
        items = [_to_json(item, None, bulk_data, f"{path}/{index}/") for index, item in enumerate(element.value)]
        return {"vr": "SQ", "Value": items} if items else {"vr": "SQ"}
    if element.VR == "UI" and isinstance(element.value, str):
        element = DataElement(element.tag, "UI", element.value.rstrip("\x00 "))
    try:
        return element.to_json_dict(bulk_data_element_handler=None, bulk_data_threshold=1 << 20)
    except (ValueError, TypeError, OverflowError) as exc:
        # A PACS that sends "12a" as an IS should not break a whole QIDO answer: keep the text.
        logger.warning("attribute %s (%s) is malformed (%s); sent as text", element.tag, element.VR, exc)
        raw = element.value if isinstance(element.value, list | tuple) else [element.value]
        values = [str(v).strip() for v in raw if v is not None and str(v).strip()]
        return {"vr": "LO" if element.VR in _NUMBER_VRS else element.VR, **({"Value": values} if values else {})}


def _converted(dataset: Dataset, element: DataElement | RawDataElement) -> DataElement:
    """The element with its value decoded; a value that does not decode is kept as text."""
    if isinstance(element, DataElement):
        return element
    try:
        return dataset[element.tag]
    except (ValueError, TypeError, OverflowError) as exc:
        logger.warning("attribute %s (%s) is malformed (%s); sent as text", element.tag, element.VR, exc)
        raw = (element.value or b"").decode("latin-1").strip("\x00 ")
        return DataElement(element.tag, "LO" if element.VR in _NUMBER_VRS else "UN", raw)


# The fast path: C-FIND answers arrive as undecoded elements, and most are short strings. Decoding
# them here costs a tenth of pydicom's general conversion (0.29 ms for a 14-element study answer),
# which is most of what the gateway adds to a C-FIND. Anything unusual goes to pydicom.
_CODECS = {"": "latin_1", "ISO_IR 6": "latin_1", "ISO_IR 100": "latin_1", "ISO_IR 192": "utf_8"}
_STRING_VRS = frozenset({"AE", "AS", "CS", "DA", "DT", "LO", "SH", "TM", "UC", "UI", "PN"})
_TEXT_VRS = frozenset({"LT", "ST", "UT", "UR"})  # one value, backslash allowed, leading spaces kept
_PN_GROUPS = ("Alphabetic", "Ideographic", "Phonetic")


def _codec(dataset: Dataset) -> str | None:
    charset = dataset.get(0x00080005)
    if charset is None:
        return "latin_1"
    value = charset.value
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace").strip()
    return _CODECS.get(value) if isinstance(value, str) else None


def _raw_to_json(element: RawDataElement, codec: str) -> dict[str, Any] | None:
    """DICOM JSON for an undecoded string or number element, or None to let pydicom do it."""
    vr = element.VR
    raw = element.value
    if vr is None or element.length == 0xFFFFFFFF or (raw is None and element.length):  # last: a deferred value
        return None
    if not raw:
        return {"vr": vr}
    if vr in _TEXT_VRS:
        text = raw.decode(codec).rstrip(" \x00")
        return {"vr": vr, "Value": [text]} if text else {"vr": vr}
    if vr not in _STRING_VRS and vr not in _NUMBER_VRS:
        return None
    items = raw.decode(codec).split("\\")
    if vr == "PN":
        values: list[Any] = []
        for item in items:
            groups = item.rstrip(" \x00").split("=")
            values.append({name: text for name, text in zip(_PN_GROUPS, groups, strict=False) if text} or None)
    elif vr in _NUMBER_VRS:
        try:
            values = [_number(vr, item.strip(" \x00")) for item in items]
        except ValueError:
            return None
    else:
        values = [item.strip(" \x00") or None for item in items]
    if all(v is None for v in values):
        return {"vr": vr}
    return {"vr": vr, "Value": values}


def _number(vr: str, text: str) -> int | float | None:
    if not text:
        return None
    if vr == "IS":
        return int(text)
    number = float(text)
    return int(number) if number.is_integer() and "." not in text and "e" not in text.lower() else number


def dataset_to_json(
    dataset: Dataset, *, keep: frozenset[int] | None = None, bulk_data: BulkDataHandler | None = None
) -> dict[str, Any]:
    """Convert `dataset` to a DICOM JSON object with its tags in ascending order.

    Parameters
    ----------
    dataset : pydicom.dataset.Dataset
        A C-FIND response identifier or any other dataset.
    keep : frozenset of int, optional
        When given, only these top-level tags are converted.
    bulk_data : BulkDataHandler, optional
        Asked first about every element, in sequence items too; what it answers replaces the
        element's usual conversion (PS3.18 F.2.6 BulkDataURI, F.2.7 InlineBinary).
    """
    return _to_json(dataset, keep, bulk_data, "")


def _to_json(
    dataset: Dataset, keep: frozenset[int] | None, bulk_data: BulkDataHandler | None, prefix: str
) -> dict[str, Any]:
    result: dict[str, Any] = {}
    codec = _codec(dataset)
    for tag in sorted(dataset.keys()):
        tag_value = int(tag)
        if tag_value in _DIMSE_ONLY or tag.element == 0 or (keep is not None and tag_value not in keep):
            continue
        # keep_deferred: a value left on disk by dcmread(defer_size=...) is not read here.
        element = dataset.get_item(tag, keep_deferred=True)
        key = f"{tag_value:08X}"
        json = bulk_data(prefix + key, element) if bulk_data is not None else None
        if json is None and codec and isinstance(element, RawDataElement):
            json = _raw_to_json(element, codec)
        if json is None:
            json = _element_to_json(_converted(dataset, element), bulk_data, prefix + key)
        result[key] = json
    return result


def empty_elements(tags: Iterable[int]) -> dict[str, Any]:
    """Zero-length DICOM JSON elements for `tags`: ``{"0020000D": {"vr": "UI"}, ...}``."""
    return {f"{t:08X}": {"vr": str(dictionary_VR(t))} for t in tags}


def encode_json(value: Any) -> bytes:
    """orjson with the options the gateway uses everywhere."""
    return orjson.dumps(value)

"""pydicom Datasets -> DICOM JSON model (PS3.18 Annex F), encoded with orjson.

pydicom's ``to_json_dict`` does the heavy lifting (PN as ``Alphabetic`` objects, IS/DS as
numbers, ``vr`` on every element). This module adds what a gateway needs on top: values that a
PACS sends slightly malformed (trailing NULs on UIDs, unparsable numbers) are repaired or kept as
strings instead of failing the whole answer, and elements private to the DIMSE exchange are left
out.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import orjson
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset

__all__ = ["dataset_to_json", "empty_elements", "encode_json"]

logger = logging.getLogger(__name__)

# Meaningful only inside the DIMSE exchange: the JSON model is always UTF-8, and the level and
# retrieve AE title describe the PACS, not the gateway that answers.
_DIMSE_ONLY = frozenset({0x00080005, 0x00080052, 0x00080054, 0x00080056})

_NUMBER_VRS = frozenset({"IS", "DS"})


def _element_to_json(element: DataElement) -> dict[str, Any]:
    if element.VR == "SQ":
        items = [dataset_to_json(item) for item in element.value]
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


def dataset_to_json(dataset: Dataset, *, keep: frozenset[int] | None = None) -> dict[str, Any]:
    """Convert `dataset` to a DICOM JSON object with its tags in ascending order.

    Parameters
    ----------
    dataset : pydicom.dataset.Dataset
        A C-FIND response identifier or any other dataset.
    keep : frozenset of int, optional
        When given, only these top-level tags are converted.
    """
    result: dict[str, Any] = {}
    for element in sorted(dataset.elements(), key=lambda e: e.tag):
        tag_value = int(element.tag)
        if tag_value in _DIMSE_ONLY or element.tag.element == 0 or (keep is not None and tag_value not in keep):
            continue
        result[f"{tag_value:08X}"] = _element_to_json(_converted(dataset, element))
    return result


def empty_elements(tags: Iterable[int]) -> dict[str, Any]:
    """Zero-length DICOM JSON elements for `tags`: ``{"0020000D": {"vr": "UI"}, ...}``."""
    return {f"{t:08X}": {"vr": str(dictionary_VR(t))} for t in tags}


def encode_json(value: Any) -> bytes:
    """orjson with the options the gateway uses everywhere."""
    return orjson.dumps(value)

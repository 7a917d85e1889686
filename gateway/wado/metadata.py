"""The metadata resource: an instance as DICOM JSON without its bulk data (PS3.18 §10.4.1.1.2, Annex F).

What goes out of line (PS3.18 §10.4.3.3.2 lets a server replace the value of DS, FL, FD, IS, LT,
OB, OD, OF, OL, OV, OW, SL, SS, ST, SV, UC, UL, UN, US, UT and UV elements by a BulkDataURI):

- pixel data (Pixel Data, Float and Double Float Pixel Data) always, as
  ``{bulkdata_url}/7FE00010``: the value of the bulk data resource, like every other bulk data.
  Viewers (OHIF, Cornerstone) fetch frames from the frames resource and do not follow it;
  dicomweb-client's ``retrieve_bulkdata`` does;
- binary values (OB, OD, OF, OL, OV, OW, UN) longer than :data:`INLINE_BINARY_LIMIT` bytes,
  at any depth; shorter ones are ``InlineBinary`` (F.2.7);
- any value of those VRs longer than :data:`~gateway.wado.pixels.HEADER_DEFER_SIZE`, which is
  never read to answer metadata.

The tag path scheme of the URIs is :mod:`gateway.wado.bulkdata`'s. The rest is
:func:`gateway.query.dicomjson.dataset_to_json`, as for QIDO-RS answers; like them, the answer
has no Specific Character Set (JSON is UTF-8) and no File Meta Information, but it gives the
stored transfer syntax as Available Transfer Syntax UID (0008,3002).
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

from pydicom.datadict import dictionary_has_tag, dictionary_VR
from pydicom.dataelem import DataElement, RawDataElement

from gateway.query.dicomjson import dataset_to_json
from gateway.wado.pixels import PIXEL_DATA_TAGS, read_header

__all__ = ["INLINE_BINARY_LIMIT", "instance_metadata"]

INLINE_BINARY_LIMIT = 1024
"""Binary values up to this many bytes are sent inline (base64), longer ones by BulkDataURI."""

_BINARY_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})
_BULK_VRS = _BINARY_VRS | {"DS", "FL", "FD", "IS", "LT", "SL", "SS", "ST", "SV", "UC", "UL", "US", "UT", "UV"}


def _is_deferred(element: DataElement | RawDataElement) -> bool:
    return isinstance(element, RawDataElement) and element.value is None and element.length > 0


def _vr(element: DataElement | RawDataElement) -> str | None:
    """The element's VR, or None when only decoding its value can tell (US or SS...)."""
    if element.VR:
        return str(element.VR)
    # Implicit VR: the dictionary's, with OB or OW read as OW (PS3.5 A.1) and private tags as UN.
    if not dictionary_has_tag(element.tag):
        return "UN"
    vr = str(dictionary_VR(element.tag))
    if vr == "OB or OW" or " or " in vr and "OW" in vr and _is_deferred(element):
        return "OW"
    return None if " or " in vr else vr


class _BulkData:
    """The bulk data handler of one instance: BulkDataURI or InlineBinary for what goes out of line."""

    def __init__(self, bulkdata_url: str) -> None:
        self.bulkdata_url = bulkdata_url.rstrip("/")

    def __call__(self, tag_path: str, element: DataElement | RawDataElement) -> dict[str, Any] | None:
        vr = _vr(element)
        if vr is None or vr == "SQ":
            return None
        deferred = _is_deferred(element)
        pixel_data = int(element.tag) in PIXEL_DATA_TAGS and "/" not in tag_path
        if vr == "UN" and dictionary_has_tag(element.tag) and not deferred:
            return None  # pydicom decodes it with the VR the dictionary gives (PS3.5 §6.2.2)
        value = element.value
        if pixel_data or deferred and vr in _BULK_VRS or vr in _BINARY_VRS and len(value or b"") > INLINE_BINARY_LIMIT:
            return {"vr": vr, "BulkDataURI": f"{self.bulkdata_url}/{tag_path}"}
        if vr not in _BINARY_VRS:
            return None
        return {"vr": vr, "InlineBinary": base64.b64encode(value).decode("ascii")} if value else {"vr": vr}


def instance_metadata(path: Path, bulkdata_url: str) -> dict[str, Any]:
    """The DICOM JSON of the Part 10 file at `path`, bulk data replaced by BulkDataURIs.

    Pixel data is neither read nor decoded, nor is any value longer than
    :data:`~gateway.wado.pixels.HEADER_DEFER_SIZE`.

    Parameters
    ----------
    path : pathlib.Path
        A Part 10 file.
    bulkdata_url : str
        The URL of the instance's bulk data resource, e.g.
        ``https://host/dicom-web/studies/1.2/series/1.2.3/instances/1.2.3.4/bulkdata``;
        each BulkDataURI is this, ``/``, and a tag path.
    """
    with path.open("rb") as file:
        dataset = read_header(file)
        result = dataset_to_json(dataset, bulk_data=_BulkData(bulkdata_url))
    result["00083002"] = {"vr": "UI", "Value": [str(dataset.file_meta.TransferSyntaxUID)]}
    return dict(sorted(result.items()))

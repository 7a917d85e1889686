"""What the gateway must know about an uploaded instance before it sends it: read from its header only."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from pydicom import dcmread
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID

__all__ = ["InstanceHeader", "NotDicom", "read_instance_header"]

_KEYWORDS = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")
_PREAMBLE = bytes(128) + b"DICM"
_FILE_META_START = b"\x02\x00"  # the first tag of group 0002, little endian


class NotDicom(ValueError):
    """A part is not a DICOM Part 10 file the gateway can send (the message says why)."""


@dataclass(frozen=True)
class InstanceHeader:
    """The identifying attributes of one uploaded Part 10 instance."""

    path: Path
    sop_class_uid: UID
    sop_instance_uid: UID
    study_instance_uid: str
    series_instance_uid: str
    transfer_syntax: UID


def read_instance_header(path: Path) -> InstanceHeader:
    """Read the File Meta Information and identifying attributes of the Part 10 file at `path`.

    Only the start of the file is read: large values are skipped and reading stops before the
    pixel data, so this costs the same for a 1 GB instance as for a 1 kB one.

    A file that starts with its File Meta Information but lacks the 128-byte preamble and the
    ``DICM`` prefix (what pydicom's ``dcmwrite`` writes by default, and so what dicomweb-client
    uploads) is given them first, so that it can be sent from the file as it is.

    Raises
    ------
    NotDicom
        Not a Part 10 file (no preamble and ``DICM`` prefix, no Transfer Syntax UID), or one of
        SOPClassUID, SOPInstanceUID, StudyInstanceUID, SeriesInstanceUID is missing or empty.
    """
    _add_missing_preamble(path)
    try:
        dataset = dcmread(path, stop_before_pixels=True, defer_size=1024, specific_tags=list(_KEYWORDS))
    except InvalidDicomError as exc:
        raise NotDicom(f"not a DICOM Part 10 file: {exc}") from exc
    except Exception as exc:  # pydicom raises many kinds on corrupt input
        raise NotDicom(f"unreadable DICOM: {type(exc).__name__}: {exc}") from exc
    transfer_syntax = dataset.file_meta.get("TransferSyntaxUID")
    if not transfer_syntax:
        raise NotDicom("the File Meta Information has no Transfer Syntax UID")
    values = {keyword: str(dataset.get(keyword, "") or "").strip("\x00 ") for keyword in _KEYWORDS}
    missing = [keyword for keyword, value in values.items() if not value]
    if missing:
        raise NotDicom(f"missing {', '.join(missing)}")
    return InstanceHeader(
        path=path,
        sop_class_uid=UID(values["SOPClassUID"]),
        sop_instance_uid=UID(values["SOPInstanceUID"]),
        study_instance_uid=values["StudyInstanceUID"],
        series_instance_uid=values["SeriesInstanceUID"],
        transfer_syntax=UID(str(transfer_syntax)),
    )


def _add_missing_preamble(path: Path) -> None:
    with path.open("rb") as source:
        start = source.read(len(_PREAMBLE))
        if start[128:] == b"DICM" or not start.startswith(_FILE_META_START):
            return
        source.seek(0)
        complete = path.with_name(path.name + ".p10")
        with complete.open("wb") as target:
            target.write(_PREAMBLE)
            shutil.copyfileobj(source, target, 1 << 20)
    complete.replace(path)

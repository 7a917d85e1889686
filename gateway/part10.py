"""What identifies a DICOM Part 10 file's instance, read from the start of the file only."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pydicom.errors import InvalidDicomError
from pydicom.filereader import read_partial
from pydicom.tag import BaseTag
from pydicom.uid import UID

__all__ = ["InstanceHeader", "NotDicom", "read_instance_header"]

_KEYWORDS = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")
_TAGS: list[BaseTag | int] = [0x00080016, 0x00080018, 0x00100020, 0x0020000D, 0x0020000E]
_LAST_TAG = 0x0020000E


class NotDicom(ValueError):
    """A file is not a DICOM Part 10 instance the gateway can use (the message says why)."""


@dataclass(frozen=True)
class InstanceHeader:
    """The identifying attributes of one Part 10 instance."""

    path: Path
    sop_class_uid: UID
    sop_instance_uid: UID
    study_instance_uid: str
    series_instance_uid: str
    transfer_syntax: UID
    patient_id: str = ""
    """PatientID (0010,0020), empty when the instance has none."""


def _past_the_uids(tag: BaseTag, vr: str | None, length: int) -> bool:
    return bool(tag > _LAST_TAG)


def read_instance_header(path: Path) -> InstanceHeader:
    """Read the File Meta Information, the identifying UIDs and PatientID of the Part 10 file at `path`.

    Reading stops after Series Instance UID (0020,000E), the last of them, so this costs the
    same for a 1 GB instance as for a 1 kB one.

    Raises
    ------
    NotDicom
        Not a Part 10 file (no preamble and ``DICM`` prefix, no Transfer Syntax UID), or one of
        SOPClassUID, SOPInstanceUID, StudyInstanceUID, SeriesInstanceUID is missing or empty.
    """
    try:
        with path.open("rb") as file:
            dataset = read_partial(file, stop_when=_past_the_uids, defer_size=1024, specific_tags=_TAGS)
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
        patient_id=str(dataset.get("PatientID", "") or "").strip("\x00 "),
    )

"""The Store Instances Response Module (PS3.18 Annex I) in DICOM JSON, and the HTTP status it goes with."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = [
    "CANNOT_UNDERSTAND",
    "NOT_AUTHORIZED",
    "STUDY_INSTANCE_UID_MISMATCH",
    "Failed",
    "OtherFailure",
    "Stored",
    "store_response",
    "store_status",
]

CANNOT_UNDERSTAND = 0xC000
"""PS3.18 Table I.2-2 Cxxx, "Error: Cannot understand": a part that is not a DICOM Part 10 instance."""
STUDY_INSTANCE_UID_MISMATCH = 0xC409
"""An instance whose StudyInstanceUID is not the target study's (``POST /studies/{study}``).

PS3.18 (2024c, Table I.2-2) defines no code for this; it allows implementation-specific codes
declared in the conformance statement. This one is in the Cxxx "cannot understand" range and is
the code dcm4chee-arc answers for the same case, so clients that know one archive know this.
"""

NOT_AUTHORIZED = 0x0124
"""For a patient-bound token, an instance of another patient, or one naming another patient's existing
study: PS3.7 Annex C "Refused: Not Authorized".

PS3.18 Table I.2-2 lists no code for it; 0124H is the general DIMSE status for an operation the
requester is not authorized to invoke, so it is what the PACS itself would say. The instance is
never sent to the PACS.
"""


@dataclass(frozen=True)
class Stored:
    """An instance the PACS acknowledged with success or a warning."""

    sop_class_uid: str
    sop_instance_uid: str
    retrieve_url: str
    warning_reason: int | None = None
    """The C-STORE warning status (B000, B006, B007), None on plain success."""


@dataclass(frozen=True)
class Failed:
    """An instance that was not stored, and its Failure Reason (PS3.18 Table I.2-2 or the conformance statement)."""

    sop_class_uid: str
    sop_instance_uid: str
    failure_reason: int


@dataclass(frozen=True)
class OtherFailure:
    """A failure tied to no SOP instance (a part that is not DICOM, a body cut short): Other Failures Sequence."""

    failure_reason: int


def _ui(value: str) -> dict[str, Any]:
    return {"vr": "UI", "Value": [value]}


def _us(value: int) -> dict[str, Any]:
    return {"vr": "US", "Value": [value]}


def store_response(
    study_url: str | None, stored: list[Stored], failed: list[Failed], other: list[OtherFailure]
) -> dict[str, Any]:
    """The response dataset: Retrieve URL of the study (Type 2: empty when the instances span several),
    Failed SOP Sequence, Referenced SOP Sequence and Other Failures Sequence when they have items."""
    response: dict[str, Any] = {"00081190": {"vr": "UR", "Value": [study_url]} if study_url else {"vr": "UR"}}
    if failed:
        response["00081198"] = {
            "vr": "SQ",
            "Value": [
                {
                    "00081150": _ui(f.sop_class_uid),
                    "00081155": _ui(f.sop_instance_uid),
                    "00081197": _us(f.failure_reason),
                }
                for f in failed
            ],
        }
    if stored:
        items = []
        for s in stored:
            item = {
                "00081150": _ui(s.sop_class_uid),
                "00081155": _ui(s.sop_instance_uid),
                "00081190": {"vr": "UR", "Value": [s.retrieve_url]},
            }
            if s.warning_reason is not None:
                item["00081196"] = _us(s.warning_reason)
            items.append(item)
        response["00081199"] = {"vr": "SQ", "Value": items}
    if other:
        response["0008119A"] = {"vr": "SQ", "Value": [{"00081197": _us(o.failure_reason)} for o in other]}
    return response


def store_status(stored: list[Stored], failed: list[Failed], other: list[OtherFailure]) -> int:
    """PS3.18 Table 10.5.3-1: 200 all stored; 202 stored with warnings or some failed; 409 none stored."""
    if not stored:
        return 409
    if failed or other or any(s.warning_reason is not None for s in stored):
        return 202
    return 200

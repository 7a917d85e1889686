"""A patient-bound token's restriction applied to QIDO-RS and STOW-RS (pure).

The token's patient is taken as the DICOM PatientID (0010,0020). A search is narrowed to it by a
single-value PatientID key, which goes to the PACS, and every answer is checked again: one that
does not carry that PatientID is dropped, whatever the PACS thought it matched.
"""

from __future__ import annotations

import re
from dataclasses import replace

from pydicom.dataset import Dataset

from gateway.query.attributes import tag
from gateway.query.matching import matches
from gateway.query.params import MatchKey, MatchType, QidoQuery

__all__ = ["PATIENT_SCOPE_KEY", "answer_is_patients", "is_valid_patient_id", "narrow_to_patient", "same_patient"]

PATIENT_SCOPE_KEY = "gateway.patient_id"
"""The ASGI scope key the auth middleware sets for a patient-bound token (absent or None: unrestricted)."""

_PATIENT_PATH = (tag("PatientID"),)
# LO (PS3.5 Table 6.2-1): at most 64 characters, no backslash, no control characters. Wildcards
# are refused too: a patient claim of "*" must not become universal matching.
_VALID = re.compile(r"^[^\\\x00-\x1f\x7f*?]{1,64}$")


def is_valid_patient_id(value: str) -> bool:
    """Whether a token's patient can be used as a PatientID matching key exactly."""
    return bool(_VALID.match(value)) and bool(value.strip())


def _normalised(value: object) -> str:
    return str(value if value is not None else "").strip(" \x00")


def same_patient(patient_id: object, bound: str) -> bool:
    """Whether a PatientID value (an answer's, an instance's) is the bound patient's."""
    return _normalised(patient_id) == bound.strip()


def narrow_to_patient(query: QidoQuery, patient_id: str) -> QidoQuery | None:
    """`query` restricted to `patient_id`; None when it asks for other patients only.

    A PatientID the query names (a single value, a list, a wildcard) is intersected with the
    token's: either the token's patient matches it, and the key becomes that patient, or the
    answer is empty.
    """
    given = query.key("PatientID")
    if given is not None and not matches(given, [patient_id.strip()]):
        return None
    narrowed = MatchKey(_PATIENT_PATH, "PatientID", "LO", MatchType.SINGLE, (patient_id.strip(),))
    keys = tuple(k for k in query.match_keys if k.path != _PATIENT_PATH) + (narrowed,)
    return replace(query, match_keys=keys)


def answer_is_patients(dataset: Dataset, patient_id: str) -> bool:
    """Whether a C-FIND answer carries the bound patient's PatientID."""
    return same_patient(dataset.get("PatientID"), patient_id)

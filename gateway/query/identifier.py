"""Match keys and return keys -> a C-FIND Identifier (PS3.4 C.4.1.1.3), pure."""

from __future__ import annotations

from collections.abc import Iterable

from pydicom.datadict import dictionary_VR
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from gateway.query.attributes import QueryLevel
from gateway.query.params import MatchKey, MatchType

__all__ = ["build_identifier"]

_BINARY_INTEGER_VRS = frozenset({"US", "UL", "SS", "SL", "SV", "UV"})
_BINARY_FLOAT_VRS = frozenset({"FL", "FD"})


def _typed(vr: str, key: MatchKey) -> object:
    """The Python value pydicom expects for `key` in an element of `vr`."""
    if key.match_type is MatchType.UNIVERSAL:
        return [] if vr == "SQ" else None
    if vr in _BINARY_INTEGER_VRS:
        numbers: list[int] | list[float] = [int(v) for v in key.values]
    elif vr in _BINARY_FLOAT_VRS:
        numbers = [float(v) for v in key.values]
    else:
        return key.dicom_value
    return numbers[0] if len(numbers) == 1 else numbers


def _add_path(dataset: Dataset, key: MatchKey) -> None:
    """Add `key`, creating the (single-item) sequences its path goes through."""
    target = dataset
    for sequence_tag in key.path[:-1]:
        if sequence_tag not in target or not target[sequence_tag].value:
            target.add_new(sequence_tag, "SQ", Sequence([Dataset()]))
        target = target[sequence_tag].value[0]
    target.add_new(key.path[-1], key.vr, _typed(key.vr, key))


def build_identifier(level: QueryLevel, match_keys: Iterable[MatchKey], return_tags: Iterable[int]) -> Dataset:
    """Build the Identifier of a Study Root C-FIND at `level`.

    Parameters
    ----------
    level : QueryLevel
        Sets QueryRetrieveLevel (0008,0052).
    match_keys : iterable of MatchKey
        Keys with values; universal keys are return keys too.
    return_tags : iterable of int
        Attributes to return, sent as zero-length elements (empty sequences for SQ).

    Notes
    -----
    SpecificCharacterSet (0008,0005) is always present so the PACS declares the character set
    of its answers (PS3.4 C.4.1.1.3.1); it carries ISO_IR 192 (UTF-8) when a value needs it.
    """
    identifier = Dataset()
    identifier.QueryRetrieveLevel = level.value
    keys = list(match_keys)
    non_ascii = any(not value.isascii() for key in keys for value in key.values)
    identifier.SpecificCharacterSet = "ISO_IR 192" if non_ascii else ""
    for key in keys:
        _add_path(identifier, key)
    for tag_value in return_tags:
        if tag_value not in identifier:
            # An ambiguous VR ("OB or OW", "US or SS") cannot be encoded; any of them carries an
            # empty return key.
            vr = str(dictionary_VR(tag_value)).split(" or ")[0]
            identifier.add_new(tag_value, vr, [] if vr == "SQ" else None)
    return identifier

"""Attribute matching done by the gateway itself (PS3.4 C.2.2.2), for what a PACS cannot do.

The gateway matches locally the keys it could not trust the PACS with (ModalitiesInStudy on a
PACS that ignores it, list matching, case-insensitive person names) and re-checks keys the PACS
was given. Matching is *lenient* about missing data: an attribute the response does not carry
(or carries empty) is not evidence of a mismatch, because the PACS already applied the key or
does not hold the attribute; only a value that contradicts the key excludes a result.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import replace
from functools import lru_cache

from pydicom.multival import MultiValue

from gateway.query.params import MatchKey, MatchType

__all__ = ["matches", "normalise_values", "widened_for_upstream"]


@lru_cache(maxsize=512)
def _wildcard_pattern(value: str, ignore_case: bool) -> re.Pattern[str]:
    parts = (".*" if c == "*" else "." if c == "?" else re.escape(c) for c in value)
    return re.compile("".join(parts), re.IGNORECASE | re.DOTALL if ignore_case else re.DOTALL)


def _pad_time(value: str) -> str:
    """TM to a comparable string: HHMMSS.FFFFFF with missing parts as zeros (PS3.5 §6.2)."""
    whole, _, fraction = value.partition(".")
    return whole.ljust(6, "0") + "." + fraction.ljust(6, "0")


def _in_range(key: MatchKey, value: str) -> bool:
    low, _, high = key.values[0].partition("-")
    if key.vr == "TM":
        value, low, high = _pad_time(value), _pad_time(low) if low else "", _pad_time(high) if high else ""
    elif key.vr == "DT":
        value = value[:14]
        low, high = low[:14].ljust(14, "0") if low else "", high[:14].ljust(14, "9") if high else ""
    return (not low or value >= low) and (not high or value <= high)


def _one_matches(key: MatchKey, value: str) -> bool:
    ignore_case = key.vr == "PN"
    if key.match_type is MatchType.RANGE:
        return _in_range(key, value)
    if key.match_type is MatchType.WILDCARD:
        return _wildcard_pattern(key.values[0], ignore_case).fullmatch(value) is not None
    if ignore_case:
        return value.casefold() in {v.casefold() for v in key.values}
    if key.vr in ("IS", "DS", "US", "UL", "SS", "SL", "FL", "FD", "SV", "UV"):
        try:
            return float(value) in {float(v) for v in key.values}
        except ValueError:
            return False
    return value in key.values


def normalise_values(raw: object) -> list[str]:
    """The values of an element as strings (PN as its alphabetic form); empty for no value."""
    if raw is None or raw == "":
        return []
    items: Sequence[object] = raw if isinstance(raw, list | tuple | MultiValue) else [raw]
    values = []
    for item in items:
        text = str(item).rstrip("\x00 ")
        if text:
            values.append(text.split("=")[0] if hasattr(item, "family_name") else text)
    return values


def matches(key: MatchKey, values: list[str]) -> bool:
    """Does a response whose attribute holds `values` satisfy `key`?

    A multi-valued attribute (ModalitiesInStudy) matches when any of its values matches.
    """
    if key.match_type is MatchType.UNIVERSAL or not values:
        return True
    return any(_one_matches(key, value) for value in values)


def widened_for_upstream(key: MatchKey) -> MatchKey:
    """`key` as sent to a PACS whose answers the gateway re-checks: every ``?`` becomes ``*``.

    A ``?`` stands for one character (PS3.4 C.2.2.2.4), but a PACS that compares encoded bytes
    does not match it against a character of two or more bytes: Orthanc's C-FIND finds
    ``Müller`` (UTF-8) with ``*ller`` but not with ``M?ller``. The client cannot say which ``?``
    stands for such a character, so each one is widened; the local match keeps the exact answer.
    """
    if key.match_type is not MatchType.WILDCARD or "?" not in key.values[0]:
        return key
    return replace(key, values=(re.sub(r"\*+", "*", key.values[0].replace("?", "*")),))

"""QIDO-RS query parameters -> :class:`QidoQuery` (pure and strict).

PS3.18 §8.3.4 gives the syntax, PS3.4 C.2.2.2 the matching types. Anything malformed raises
:class:`~gateway.errors.BadRequest` naming the parameter; nothing is silently dropped.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date
from enum import Enum

from pydicom.datadict import dictionary_VR, keyword_for_tag

from gateway.errors import BadRequest
from gateway.numbers import parse_integer
from gateway.query.attributes import GATEWAY_ATTRIBUTES, QueryLevel, level_of, tag

__all__ = ["MatchKey", "MatchType", "QidoQuery", "parse_qido_query", "parse_uid"]


class MatchType(Enum):
    """PS3.4 C.2.2.2 matching types."""

    UNIVERSAL = "universal"
    SINGLE = "single"
    LIST = "list"
    WILDCARD = "wildcard"
    RANGE = "range"


@dataclass(frozen=True)
class MatchKey:
    """One attribute of a query, with its values as they go into a C-FIND identifier.

    `path` holds the tags from the outermost sequence down to the attribute itself, so that
    ``00400275.00401001`` becomes ``(0x00400275, 0x00401001)``.
    """

    path: tuple[int, ...]
    keyword: str
    vr: str
    match_type: MatchType
    values: tuple[str, ...] = ()

    @property
    def tag(self) -> int:
        """The tag of the top-level attribute (the sequence, for a nested key)."""
        return self.path[0]

    @property
    def is_nested(self) -> bool:
        """True for a key inside a sequence item."""
        return len(self.path) > 1

    @property
    def dicom_value(self) -> str:
        """The value as it goes into a C-FIND identifier (lists joined with a backslash)."""
        if self.match_type is MatchType.UNIVERSAL:
            return ""
        return "\\".join(self.values)


@dataclass(frozen=True)
class QidoQuery:
    """A parsed QIDO-RS request: what to match, what to return, and which slice of the answer."""

    level: QueryLevel
    match_keys: tuple[MatchKey, ...]
    include_tags: tuple[int, ...]
    include_all: bool
    limit: int | None
    offset: int
    fuzzy: bool
    scope: QueryLevel | None = None
    """The deepest level whose UID is fixed by the URL path (``/studies/{s}/series``: STUDY)."""

    def key(self, keyword: str) -> MatchKey | None:
        """The top-level match key for `keyword`, if the query has one."""
        return next((k for k in self.match_keys if k.keyword == keyword), None)


# re.ASCII: "\d" would otherwise match any Unicode digit (Arabic-Indic, fullwidth...), which
# the PACS then refuses; a number in a query is ASCII digits only.
_UID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")
_TAG = re.compile(r"^[0-9A-Fa-f]{8}$")
_DATE = re.compile(r"^\d{8}$", re.ASCII)
_TIME = re.compile(r"^([01]\d|2[0-3])([0-5]\d([0-5]\d(\.\d{1,6})?)?)?$", re.ASCII)
_DATETIME = re.compile(r"^\d{4}(\d{2}(\d{2}(\d{2}(\d{2}(\d{2}(\.\d{1,6})?)?)?)?)?)?([+-]\d{4})?$", re.ASCII)
_INTEGER = re.compile(r"^[+-]?\d{1,12}$", re.ASCII)
_DECIMAL = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$", re.ASCII)
_AGE = re.compile(r"^\d{3}[DWMY]$", re.ASCII)
_FORBIDDEN = re.compile(r"[\\\x00-\x1f\x7f-\x9f]")
_CODE_STRING = re.compile(r"^[A-Z0-9 _*?]*$")
_DEFAULT_REPERTOIRE = re.compile(r"^[\x20-\x7e]*$")

# PS3.5 Table 6.2-1: the longest value of each VR, in characters (PN: per component group).
# DA, TM and DT are bounded by their formats, UI by parse_uid; UC, UR and UT have no bound but
# the request line's.
_MAX_LENGTH = {
    "AE": 16,
    "AS": 4,
    "CS": 16,
    "DS": 16,
    "IS": 12,
    "LO": 64,
    "LT": 10240,
    "PN": 64,
    "SH": 16,
    "ST": 1024,
}
# VRs whose values are in the default character repertoire only (PS3.5 §6.1.2): a non-ASCII
# character in them is malformed; the others may carry UTF-8 (ISO_IR 192 in the identifier).
_ASCII_ONLY_VRS = frozenset({"AE", "AS", "CS", "DA", "DS", "DT", "IS", "TM", "UI", "UR"})

_INTEGER_VRS = frozenset({"IS", "US", "UL", "SS", "SL", "SV", "UV"})
# The values each integer VR can encode (PS3.5 Table 6.2-1); the identifier cannot carry others.
_INTEGER_RANGES = {
    "IS": (-(2**31), 2**31 - 1),
    "US": (0, 2**16 - 1),
    "SS": (-(2**15), 2**15 - 1),
    "UL": (0, 2**32 - 1),
    "SL": (-(2**31), 2**31 - 1),
    "UV": (0, 2**64 - 1),
    "SV": (-(2**63), 2**63 - 1),
}
_DECIMAL_VRS = frozenset({"DS", "FL", "FD"})
_RANGE_VRS = frozenset({"DA", "TM", "DT"})
_TEXT_VRS = frozenset({"AE", "CS", "LO", "LT", "PN", "SH", "ST", "UC", "UT", "UR"})
_CONTROL_PARAMS = frozenset({"limit", "offset", "includefield", "fuzzymatching"})
_BULK_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})


def parse_uid(value: str, what: str) -> str:
    """Return `value` if it is a valid UID (PS3.5 §9.1), else raise BadRequest naming `what`."""
    if len(value) > 64 or not _UID.match(value):
        raise BadRequest(f"{what}: {value!r} is not a valid UID (digits and dots, at most 64 characters)")
    return value


def _resolve_attribute(name: str, parameter: str) -> tuple[int, str, str]:
    """Keyword or 8-hex-digit tag -> (tag, keyword, VR)."""
    if _TAG.match(name):
        tag_value = int(name, 16)
        keyword = keyword_for_tag(tag_value)
        if not keyword:
            raise BadRequest(f"{parameter}: {name} is not a known DICOM attribute tag")
    else:
        keyword = name
        try:
            tag_value = tag(name)
        except KeyError:
            raise BadRequest(f"{parameter}: {name!r} is not a DICOM attribute keyword or tag") from None
    return tag_value, keyword, str(dictionary_VR(tag_value))


def _include_tag(name: str) -> int:
    """The tag an ``includefield`` item names; bulk data is refused.

    A search does not return bulk data (PS3.18 §10.6.3.3 lists none), and a PACS may not answer a
    C-FIND that asks for it at all: Orthanc, asked for PixelData, never answers.
    """
    tag_value, keyword, vr = _resolve_attribute(name, "includefield")
    if set(vr.split(" or ")) & _BULK_VRS:
        raise BadRequest(
            f"includefield: {keyword} is bulk data (VR {vr}); WADO-RS metadata returns it, a search does not"
        )
    return tag_value


def _valid_date(text: str) -> bool:
    if not _DATE.match(text):
        return False
    try:
        date(int(text[:4]), int(text[4:6]), int(text[6:]))
    except ValueError:
        return False
    return True


def _check_temporal(vr: str, text: str, parameter: str) -> None:
    valid = _valid_date(text) if vr == "DA" else bool((_TIME if vr == "TM" else _DATETIME).match(text))
    if not valid:
        formats = {"DA": "YYYYMMDD", "TM": "HHMMSS.FFFFFF", "DT": "YYYYMMDDHHMMSS.FFFFFF&ZZXX"}
        raise BadRequest(f"{parameter}: {text!r} is not a valid {vr} value ({formats[vr]})")


def _parse_temporal(vr: str, value: str, parameter: str) -> tuple[MatchType, tuple[str, ...]]:
    # A DT may carry a negative UTC offset ("20200101120000-0500"): a value that is a valid DT
    # as a whole is a single value, not a range.
    if "-" not in value or (vr == "DT" and _DATETIME.match(value)):
        _check_temporal(vr, value, parameter)
        return MatchType.SINGLE, (value,)
    low, _, high = value.partition("-")
    if "-" in high and not (vr == "DT" and _DATETIME.match(high)):
        raise BadRequest(f"{parameter}: {value!r} has more than one '-'; a range is A-B, A- or -B")
    if not low and not high:
        raise BadRequest(f"{parameter}: '-' alone is not a range")
    for bound in (low, high):
        if bound:
            _check_temporal(vr, bound, parameter)
    if low and high and vr == "DA" and low > high:
        raise BadRequest(f"{parameter}: range {value!r} ends before it starts")
    return MatchType.RANGE, (value,)


def _check_characters(vr: str, raw: str, parameter: str) -> None:
    """Characters no value of `vr` may hold are a 400, before anything reaches the PACS."""
    if "\ufffd" in raw:
        # What a percent-encoded byte sequence that is not UTF-8 decodes to.
        raise BadRequest(f"{parameter}: the value is not valid UTF-8 (U+FFFD, a replaced character)")
    if _FORBIDDEN.search(raw):
        raise BadRequest(f"{parameter}: backslashes and control characters are not allowed in a query value")
    if vr in _ASCII_ONLY_VRS and not _DEFAULT_REPERTOIRE.match(raw):
        raise BadRequest(f"{parameter}: a {vr} value holds ASCII characters only (PS3.5 §6.2)")
    if vr == "CS" and not _CODE_STRING.match(raw.replace(",", "")):
        raise BadRequest(f"{parameter}: a CS value is upper case letters, digits, space and '_' (PS3.5 §6.2)")


def _check_length(vr: str, value: str, parameter: str) -> None:
    longest = _MAX_LENGTH.get(vr)
    if longest is None:
        return
    pieces = value.split("=") if vr == "PN" else [value]  # PN: alphabetic=ideographic=phonetic
    if any(len(piece) > longest for piece in pieces):
        unit = "characters per component group" if vr == "PN" else "characters"
        raise BadRequest(f"{parameter}: a {vr} value is at most {longest} {unit} (PS3.5 Table 6.2-1)")


def _parse_match(path: tuple[int, ...], keyword: str, vr: str, raw: str, parameter: str) -> MatchKey:
    if vr == "UI":
        # OHIF joins UIDs with the DICOM value separator, a backslash, where QIDO-RS lists use a comma.
        raw = raw.replace("\\", ",")
    _check_characters(vr, raw, parameter)
    if vr in ("SQ", "OB", "OW", "OF", "OD", "OL", "OV", "UN"):
        hint = "; use includefield to return it" if vr == "SQ" else ""
        raise BadRequest(f"{parameter}: {keyword} has VR {vr} and cannot be matched{hint}")
    if keyword in GATEWAY_ATTRIBUTES:
        raise BadRequest(f"{parameter}: {keyword} is made by the gateway and cannot be matched")
    if raw == "":
        return MatchKey(path, keyword, vr, MatchType.UNIVERSAL)
    if raw == "*" and vr not in ("UI", *_RANGE_VRS, *_INTEGER_VRS, *_DECIMAL_VRS):
        return MatchKey(path, keyword, vr, MatchType.UNIVERSAL)

    if vr in _RANGE_VRS:
        if "," in raw:
            raise BadRequest(f"{parameter}: a list of {vr} values is not supported; use a range A-B")
        match_type, values = _parse_temporal(vr, raw, parameter)
        return MatchKey(path, keyword, vr, match_type, values)

    values = tuple(raw.split(","))
    if any(v == "" for v in values):
        raise BadRequest(f"{parameter}: empty item in the list {raw!r}")
    for value in values:
        _check_length(vr, value, parameter)
    if vr == "UI":
        for value in values:
            parse_uid(value, parameter)
    elif vr in _INTEGER_VRS or vr in _DECIMAL_VRS:
        pattern = _INTEGER if vr in _INTEGER_VRS else _DECIMAL
        for value in values:
            if not pattern.match(value):
                raise BadRequest(f"{parameter}: {value!r} is not a valid {vr} number")
            low, high = _INTEGER_RANGES.get(vr, (None, None))
            if low is not None and high is not None and not low <= int(value) <= high:
                raise BadRequest(f"{parameter}: {value} is outside the range of {vr} ({low} to {high})")
    elif vr == "AS":
        for value in values:
            if not _AGE.match(value):
                raise BadRequest(f"{parameter}: {value!r} is not a valid age (nnnD, nnnW, nnnM or nnnY)")
    elif vr not in _TEXT_VRS:
        raise BadRequest(f"{parameter}: matching on VR {vr} is not supported")

    wildcard = any("*" in v or "?" in v for v in values)
    if wildcard and vr not in _TEXT_VRS:
        raise BadRequest(f"{parameter}: wildcards are not allowed for VR {vr}")
    if wildcard and len(values) > 1:
        raise BadRequest(f"{parameter}: a list may not contain wildcards")
    if len(values) > 1:
        return MatchKey(path, keyword, vr, MatchType.LIST, values)
    return MatchKey(path, keyword, vr, MatchType.WILDCARD if wildcard else MatchType.SINGLE, values)


def _non_negative(name: str, raw: str) -> int:
    return parse_integer(raw, name)


def parse_qido_query(
    level: QueryLevel,
    params: Iterable[tuple[str, str]],
    *,
    study_uid: str | None = None,
    series_uid: str | None = None,
) -> QidoQuery:
    """Parse QIDO-RS query parameters for a search at `level`.

    Parameters
    ----------
    level : QueryLevel
        The level of the resource searched (``/studies``: STUDY, ``.../series``: SERIES ...).
    params : iterable of (str, str)
        The query parameters in order, repeated ones included.
    study_uid, series_uid : str, optional
        UIDs fixed by the URL path; they become single-value match keys.

    Raises
    ------
    BadRequest
        For any parameter that is unknown, repeated or malformed.
    """
    match_keys: dict[tuple[int, ...], MatchKey] = {}
    include_tags: list[int] = []
    include_all = False
    limit: int | None = None
    offset = 0
    fuzzy = False
    seen_control: set[str] = set()

    for name, raw in params:
        if name in _CONTROL_PARAMS:
            if name != "includefield":
                if name in seen_control:
                    raise BadRequest(f"{name}: given more than once")
                seen_control.add(name)
            if name == "limit":
                limit = _non_negative(name, raw)
            elif name == "offset":
                offset = _non_negative(name, raw)
            elif name == "fuzzymatching":
                if raw.lower() not in ("true", "false"):
                    raise BadRequest(f"fuzzymatching: {raw!r} is not 'true' or 'false'")
                fuzzy = raw.lower() == "true"
            else:
                for item in raw.split(","):
                    if item == "all":
                        include_all = True
                    elif item:
                        include_tags.append(_include_tag(item))
                    else:
                        raise BadRequest(f"includefield: empty item in {raw!r}")
            continue

        parts = name.split(".")
        resolved = [_resolve_attribute(part, name) for part in parts]
        for _, keyword, vr in resolved[:-1]:
            if vr != "SQ":
                raise BadRequest(f"{name}: {keyword} is not a sequence, so it cannot be followed by '.'")
        path = tuple(r[0] for r in resolved)
        if path in match_keys:
            raise BadRequest(f"{name}: given more than once; use a comma-separated list for list matching")
        _, keyword, vr = resolved[-1]
        key = _parse_match(path, ".".join(r[1] for r in resolved), vr, raw, name)
        top_keyword = resolved[0][1]
        if level_of(top_keyword, level).depth > level.depth:
            raise BadRequest(
                f"{name}: {top_keyword} is a {level_of(top_keyword, level).value}-level attribute "
                f"and cannot be matched in a {level.value}-level search"
            )
        match_keys[path] = key

    scope: QueryLevel | None = None
    for uid, keyword, scope_level in (
        (study_uid, "StudyInstanceUID", QueryLevel.STUDY),
        (series_uid, "SeriesInstanceUID", QueryLevel.SERIES),
    ):
        if uid is None:
            continue
        parse_uid(uid, keyword)
        path = (tag(keyword),)
        given = match_keys.get(path)
        if given is not None and given.match_type is not MatchType.UNIVERSAL and uid not in given.values:
            raise BadRequest(f"{keyword}: the query parameter contradicts the UID in the URL")
        match_keys[path] = MatchKey(path, keyword, "UI", MatchType.SINGLE, (uid,))
        scope = scope_level

    return QidoQuery(
        level=level,
        match_keys=tuple(match_keys.values()),
        include_tags=tuple(dict.fromkeys(include_tags)),
        include_all=include_all,
        limit=limit,
        offset=offset,
        fuzzy=fuzzy,
        scope=scope,
    )

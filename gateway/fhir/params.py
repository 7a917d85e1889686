"""ImagingStudy search parameters -> :class:`StudySearch` (pure and strict).

Supported (FHIR R5 §3.2.1, ImagingStudy search parameters): ``_id``, ``identifier``,
``subject:identifier`` and ``patient:identifier``, ``started`` (prefixes eq, gt, ge, lt, le),
``modality``, ``series``, ``status``, ``_include=ImagingStudy:endpoint``, ``_summary=count``,
``_count`` and ``_offset`` (the paging cursor of ``next`` links). Repeating a parameter means
AND, a comma list within one means OR.

A malformed value (a bad UID, date, number or prefix) and an unsupported modifier are a
:class:`OutcomeError` 400. An unknown parameter, or an unsupported value of ``_include`` or
``_summary``, is ignored and left out of the ``self`` link, unless the client asked for
``Prefer: handling=strict``: then it is a 400 too.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from zoneinfo import ZoneInfo

from gateway.fhir.outcome import OutcomeError
from gateway.fhir.resource import DCM_SYSTEM, DICOM_UID_SYSTEM

__all__ = [
    "DEFAULT_COUNT",
    "DateBound",
    "IdentifierMatch",
    "PatientMatch",
    "StudySearch",
    "is_uid",
    "parse_date",
    "parse_search",
]

DEFAULT_COUNT = 20

_UID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")
_MODALITY = re.compile(r"^[A-Z0-9_ ]{1,16}$")
_DATE = re.compile(
    r"^(?P<year>\d{4})(?:-(?P<month>\d{2})(?:-(?P<day>\d{2})"
    r"(?:T(?P<hour>\d{2}):(?P<minute>\d{2})(?::(?P<second>\d{2})(?:\.(?P<fraction>\d{1,9}))?)?"
    r"(?P<zone>Z|[+-]\d{2}:\d{2})?)?)?)?$"
)
_PREFIXES = ("eq", "gt", "ge", "lt", "le")
_STATUSES = frozenset({"registered", "available", "cancelled", "entered-in-error", "unknown"})
_PAGING = frozenset({"_count", "_offset"})
_IGNORED_KNOWN = frozenset({"_format"})
_SUPPORTED = frozenset(
    {
        "_id",
        "identifier",
        "subject:identifier",
        "patient:identifier",
        "started",
        "modality",
        "series",
        "status",
        "_include",
        "_summary",
    }
)


@dataclass(frozen=True)
class PatientMatch:
    """One ``[system|]PatientID`` value; `system` ``None`` matches any system, ``""`` none."""

    system: str | None
    value: str


@dataclass(frozen=True)
class IdentifierMatch:
    """One ``identifier`` parameter: the study matches any of its UIDs or accession numbers."""

    study_uids: frozenset[str] = frozenset()
    accessions: frozenset[str] = frozenset()
    other: bool = False
    """A value with a system the gateway's resources never carry: it matches nothing."""


@dataclass(frozen=True)
class DateBound:
    """One ``started`` parameter: a prefix and the period its value stands for, ``[low, high)``."""

    prefix: str
    low: datetime
    high: datetime

    def matches(self, start: datetime, end: datetime) -> bool:
        """Whether a resource's period ``[start, end)`` matches (FHIR R5 §3.2.1.5.5, prefixes)."""
        contained = self.low <= start and end <= self.high
        if self.prefix == "eq":
            return contained
        if self.prefix == "gt":
            return end > self.high
        if self.prefix == "lt":
            return start < self.low
        if self.prefix == "ge":
            return end > self.high or contained
        return start < self.low or contained  # le


@dataclass(frozen=True)
class StudySearch:
    """A parsed ImagingStudy search: every tuple is ANDed, every set within it ORed."""

    ids: tuple[frozenset[str], ...] = ()
    identifiers: tuple[IdentifierMatch, ...] = ()
    patients: tuple[tuple[PatientMatch, ...], ...] = ()
    started: tuple[DateBound, ...] = ()
    modalities: tuple[frozenset[str], ...] = ()
    series: tuple[frozenset[str], ...] = ()
    statuses: tuple[frozenset[str], ...] = ()
    include_endpoint: bool = False
    summary_count: bool = False
    count: int = DEFAULT_COUNT
    offset: int = 0
    canonical: tuple[tuple[str, str], ...] = field(default=())
    """The supported parameters as received, less paging: the ``self`` and ``next`` links carry them."""


def _invalid(message: str) -> OutcomeError:
    return OutcomeError(400, "invalid", message)


def _split(value: str) -> list[str]:
    """A comma list; ``\\,`` is an escaped comma (FHIR R5 §3.2.1.5.7)."""
    parts = re.split(r"(?<!\\),", value)
    return [part.replace("\\,", ",").strip() for part in parts]


def is_uid(value: str) -> bool:
    """Whether `value` is a valid DICOM UID (PS3.5 §9.1), hence a possible ImagingStudy id."""
    return len(value) <= 64 and _UID.match(value) is not None


def _uid(value: str, name: str) -> str:
    if not is_uid(value):
        raise _invalid(f"{name}: {value!r} is not a valid DICOM UID (digits and dots, at most 64 characters)")
    return value


def _uids(value: str, name: str) -> frozenset[str]:
    return frozenset(_uid(part, name) for part in _split(value))


def _identifier(value: str) -> IdentifierMatch:
    uids: set[str] = set()
    accessions: set[str] = set()
    other = False
    for part in _split(value):
        system, bar, code = part.rpartition("|") if "|" in part else ("", "", part)
        if not code:
            raise _invalid(f"identifier: {part!r} has no value")
        if system == DICOM_UID_SYSTEM or (not bar and code.startswith("urn:oid:")):
            if not code.startswith("urn:oid:"):
                raise _invalid(f"identifier: a {DICOM_UID_SYSTEM} value is urn:oid:UID, not {code!r}")
            uids.add(_uid(code.removeprefix("urn:oid:"), "identifier"))
        elif system:
            other = True
        else:
            if "\\" in code or "*" in code or "?" in code:
                raise _invalid(f"identifier: {code!r} is not an accession number")
            accessions.add(code)
    return IdentifierMatch(frozenset(uids), frozenset(accessions), other)


def _patients(value: str, name: str) -> tuple[PatientMatch, ...]:
    matches = []
    for part in _split(value):
        if "|" in part:
            system, _, code = part.partition("|")
            match = PatientMatch(system, code)
        else:
            match = PatientMatch(None, part)
        if not match.value or "\\" in match.value or "*" in match.value or "?" in match.value:
            raise _invalid(f"{name}: {part!r} is not [system|]PatientID")
        matches.append(match)
    return tuple(matches)


def _modalities(value: str) -> frozenset[str]:
    codes: set[str] = set()
    for part in _split(value):
        system, bar, code = part.rpartition("|") if "|" in part else ("", "", part)
        code = code.upper()
        if not _MODALITY.match(code):
            raise _invalid(f"modality: {part!r} is not a DICOM modality code")
        if not bar or system in ("", DCM_SYSTEM):
            codes.add(code)
    return frozenset(codes)


def _statuses(value: str) -> frozenset[str]:
    codes = frozenset(_split(value))
    unknown = codes - _STATUSES
    if unknown:
        raise _invalid(
            f"status: {', '.join(sorted(unknown))} is not an ImagingStudy status ({', '.join(sorted(_STATUSES))})"
        )
    return codes


def parse_date(value: str, zone: tzinfo) -> tuple[datetime, datetime]:
    """A FHIR date or dateTime search value -> the period ``[low, high)`` it stands for.

    A value without a zone is read in `zone` (the upstream's, else UTC), as resources are.
    """
    match = _DATE.match(value)
    if match is None:
        raise ValueError(value)
    year, month, day = int(match["year"]), int(match["month"] or 1), int(match["day"] or 1)
    offset = match["zone"]
    tz: tzinfo = zone
    if offset == "Z":
        tz = UTC
    elif offset:
        sign = -1 if offset[0] == "-" else 1
        tz = timezone(sign * timedelta(hours=int(offset[1:3]), minutes=int(offset[4:6])))
    hour, minute, second = int(match["hour"] or 0), int(match["minute"] or 0), int(match["second"] or 0)
    micro = int((match["fraction"] or "0")[:6].ljust(6, "0"))
    low = datetime(year, month, day, hour, minute, second, micro, tzinfo=tz)
    try:
        if match["fraction"]:
            high = low + timedelta(microseconds=1)
        elif match["second"]:
            high = low + timedelta(seconds=1)
        elif match["hour"]:
            high = low + timedelta(minutes=1)
        elif match["day"]:
            high = datetime(year, month, day, tzinfo=tz) + timedelta(days=1)
        elif match["month"]:
            high = datetime(year + month // 12, month % 12 + 1, 1, tzinfo=tz)
        else:
            high = datetime(year + 1, 1, 1, tzinfo=tz)
    except (OverflowError, ValueError):  # the period ends after year 9999
        high = datetime.max.replace(tzinfo=tz)
    return low, high


def _started(value: str, zone: tzinfo) -> DateBound:
    prefix = value[:2] if value[:2].isalpha() else "eq"
    text = value[2:] if value[:2].isalpha() else value
    if prefix not in _PREFIXES:
        raise _invalid(f"started: the prefix {prefix!r} is not supported (only {', '.join(_PREFIXES)})")
    try:
        low, high = parse_date(text, zone)
    except ValueError:
        raise _invalid(
            f"started: {value!r} is not a FHIR date or dateTime (YYYY[-MM[-DD[Thh:mm[:ss][zone]]]])"
        ) from None
    return DateBound(prefix, low, high)


def _non_negative(name: str, value: str) -> int:
    if not value.isdigit() or len(value) > 9:
        raise _invalid(f"{name}: {value!r} is not a non-negative integer")
    return int(value)


def parse_search(
    items: Iterable[tuple[str, str]], *, strict: bool = False, max_count: int = 100, zone: str = ""
) -> StudySearch:
    """Parse the query string (and form body) of an ImagingStudy search.

    Parameters
    ----------
    items : iterable of (name, value)
        The parameters in the order received.
    strict : bool
        ``Prefer: handling=strict``: unknown parameters and unsupported values are errors.
    max_count : int
        The largest page; a larger ``_count`` is lowered to it (FHIR lets a server do so).
    zone : str
        The upstream's IANA zone, for dates given without one; empty: UTC.
    """
    tz: tzinfo = ZoneInfo(zone) if zone else UTC
    ids: list[frozenset[str]] = []
    identifiers: list[IdentifierMatch] = []
    patients: list[tuple[PatientMatch, ...]] = []
    started: list[DateBound] = []
    modalities: list[frozenset[str]] = []
    series: list[frozenset[str]] = []
    statuses: list[frozenset[str]] = []
    include_endpoint = summary_count = False
    count, offset = min(DEFAULT_COUNT, max_count), 0
    canonical: list[tuple[str, str]] = []

    def unsupported(message: str) -> None:
        if strict:
            raise OutcomeError(400, "not-supported", f"{message} (Prefer: handling=strict)")

    for name, value in items:
        base, _, modifier = name.partition(":")
        if name in _IGNORED_KNOWN:
            continue
        if name in _PAGING:
            number = _non_negative(name, value)
            if name == "_offset":
                offset = number
            else:
                count = min(number, max_count)
                summary_count = summary_count or number == 0
            continue
        if name not in _SUPPORTED:
            if modifier and (base in {s.partition(":")[0] for s in _SUPPORTED} or base in ("subject", "patient")):
                raise _invalid(f"{name}: the modifier :{modifier} is not supported")
            if base in ("subject", "patient"):
                raise _invalid(f"{name}: only {base}:identifier=[system|]PatientID is supported (no Patient resources)")
            unsupported(f"the parameter {name!r} is not supported")
            continue
        if name == "_include":
            if value != "ImagingStudy:endpoint":
                unsupported(f"_include={value} is not supported (only ImagingStudy:endpoint)")
                continue
            include_endpoint = True
        elif name == "_summary":
            if value not in ("count", "false"):
                unsupported(f"_summary={value} is not supported (only count)")
                continue
            summary_count = summary_count or value == "count"
        elif name == "_id":
            ids.append(_uids(value, name))
        elif name == "identifier":
            identifiers.append(_identifier(value))
        elif name in ("subject:identifier", "patient:identifier"):
            patients.append(_patients(value, name))
        elif name == "started":
            started.append(_started(value, tz))
        elif name == "modality":
            modalities.append(_modalities(value))
        elif name == "series":
            series.append(_uids(value, name))
        else:
            statuses.append(_statuses(value))
        canonical.append((name, value))
    return StudySearch(
        ids=tuple(ids),
        identifiers=tuple(identifiers),
        patients=tuple(patients),
        started=tuple(started),
        modalities=tuple(modalities),
        series=tuple(series),
        statuses=tuple(statuses),
        include_endpoint=include_endpoint,
        summary_count=summary_count,
        count=count,
        offset=offset,
        canonical=tuple(canonical),
    )

"""DICOM attribute values -> FHIR element values (pure)."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta, timezone, tzinfo
from zoneinfo import ZoneInfo

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

__all__ = ["integer", "patient_system", "person_display", "started", "started_interval", "text"]

_DATE = re.compile(r"^(\d{4})(\d{2})(\d{2})$")
_TIME = re.compile(r"^(\d{2})(?:(\d{2})(?:(\d{2})(?:\.(\d{1,6}))?)?)?$")
_OFFSET = re.compile(r"^([+-])(\d{2})(\d{2})$")
_OID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))+$")
_URI_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:\S+$")


def text(dataset: Dataset, keyword: str) -> str:
    """The attribute's value as text, without DICOM padding; empty when absent or empty.

    A multi-valued attribute gives its first value (a PACS may answer a single-valued key with
    several values; FHIR takes one).
    """
    value = dataset.get(keyword)
    if value is None or value == "":
        return ""
    if isinstance(value, list | tuple | MultiValue):
        value = value[0] if len(value) else ""
    return str(value).rstrip("\x00 ").strip()


def integer(dataset: Dataset, keyword: str) -> int | None:
    """A non-negative integer attribute (IS, US ...), or ``None`` when absent or not a number."""
    value = text(dataset, keyword)
    try:
        number = int(float(value)) if value else None
    except ValueError:
        return None
    return number if number is not None and number >= 0 else None


def person_display(name: str) -> str:
    """A DICOM PN (``Family^Given^Middle^Prefix^Suffix``, alphabetic group) as a display string."""
    alphabetic = name.split("=")[0]
    family, given, middle, prefix, suffix = (alphabetic.split("^") + [""] * 5)[:5]
    return " ".join(part.strip() for part in (prefix, given, middle, family, suffix) if part.strip())


def patient_system(issuer: str) -> str | None:
    """Identifier.system for IssuerOfPatientID: an OID as ``urn:oid:``, a URI as it is.

    Any other issuer (a local name such as ``HOSPITAL A``) is not a URI and is left out rather
    than turned into an invalid ``system``.
    """
    if not issuer:
        return None
    if _OID.match(issuer):
        return f"urn:oid:{issuer}"
    if _URI_SCHEME.match(issuer):
        return issuer
    return None


def _date(value: str) -> date | None:
    match = _DATE.match(value)
    if match is None:
        return None
    try:
        return date(int(match[1]), int(match[2]), int(match[3]))
    except ValueError:
        return None


def _offset(value: str) -> timezone | None:
    match = _OFFSET.match(value)
    if match is None:
        return None
    minutes = int(match[2]) * 60 + int(match[3])
    if minutes > 14 * 60:
        return None
    return timezone(timedelta(minutes=-minutes if match[1] == "-" else minutes))


def _local_time(study_date: date, study_time: str) -> datetime | None:
    match = _TIME.match(study_time.replace(":", ""))
    if match is None:
        return None
    hour, minute, second = int(match[1]), int(match[2] or 0), int(match[3] or 0)
    micro = int((match[4] or "0").ljust(6, "0"))
    try:
        return datetime(study_date.year, study_date.month, study_date.day, hour, minute, second, micro)
    except ValueError:
        return None


def _zone(dataset: Dataset, zone_name: str) -> tzinfo | None:
    return _offset(text(dataset, "TimezoneOffsetFromUTC")) or (ZoneInfo(zone_name) if zone_name else None)


def started(dataset: Dataset, zone_name: str = "") -> str | None:
    """ImagingStudy.started (F5): StudyDate and StudyTime in the study's time zone, or the date only.

    The zone is TimezoneOffsetFromUTC when the PACS gives it, else `zone_name` (the upstream's
    configured IANA zone). Without either, or without a time, only the date is given: a
    dateTime with a time must carry its zone, and a bare local time would be read as UTC.
    """
    study_date = _date(text(dataset, "StudyDate"))
    if study_date is None:
        return None
    zone = _zone(dataset, zone_name)
    local = _local_time(study_date, text(dataset, "StudyTime"))
    if local is None or zone is None:
        return study_date.isoformat()
    moment = local.replace(tzinfo=zone)
    return moment.isoformat(timespec="microseconds" if local.microsecond else "seconds")


def started_interval(dataset: Dataset, zone_name: str = "") -> tuple[datetime, datetime] | None:
    """The period ``started`` stands for, for date search: the second it names, or its whole day.

    A date-only value is a day in the upstream's zone, or in UTC when none is configured (the
    search side reads a date parameter the same way).
    """
    value = started(dataset, zone_name)
    if value is None:
        return None
    if "T" in value:
        start = datetime.fromisoformat(value)
        length = timedelta(seconds=1)
    else:
        day = date.fromisoformat(value)
        start = datetime(day.year, day.month, day.day, tzinfo=_zone(dataset, zone_name) or UTC)
        length = timedelta(days=1)  # wall-clock arithmetic: the next midnight, across a DST change too
    try:
        return start, start + length
    except OverflowError:  # 9999-12-31
        return start, datetime.max.replace(tzinfo=start.tzinfo)

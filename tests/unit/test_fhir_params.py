"""ImagingStudy search parameters -> StudySearch, and FHIR version negotiation."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from gateway.fhir.outcome import OutcomeError
from gateway.fhir.params import DateBound, IdentifierMatch, PatientMatch, parse_date, parse_search
from gateway.fhir.versions import media_type, negotiate

DCM = "http://dicom.nema.org/resources/ontology/DCM"


def test_supported_parameters_and_the_canonical_self_link() -> None:
    search = parse_search(
        [
            ("_id", "1.2.3,1.2.4"),
            ("identifier", "urn:dicom:uid|urn:oid:1.2.5,ACC1,|ACC2,http://other|X"),
            ("patient:identifier", "urn:oid:1.2.9|P1"),
            ("subject:identifier", "P2,|P3"),
            ("modality", f"ct,{DCM}|PT,http://snomed.info/sct|77477000"),
            ("series", "1.2.3.1"),
            ("status", "available,registered"),
            ("_include", "ImagingStudy:endpoint"),
            ("_count", "10"),
            ("_offset", "20"),
            ("_format", "json"),
            ("unknown", "x"),
        ],
        max_count=50,
    )
    assert search.ids == (frozenset({"1.2.3", "1.2.4"}),)
    assert search.identifiers == (IdentifierMatch(frozenset({"1.2.5"}), frozenset({"ACC1", "ACC2"}), True),)
    assert search.patients == (
        (PatientMatch("urn:oid:1.2.9", "P1"),),
        (PatientMatch(None, "P2"), PatientMatch("", "P3")),
    )
    assert search.modalities == (frozenset({"CT", "PT"}),)  # a code of another system matches nothing
    assert search.series == (frozenset({"1.2.3.1"}),)
    assert search.statuses == (frozenset({"available", "registered"}),)
    assert search.include_endpoint and not search.summary_count
    assert (search.count, search.offset) == (10, 20)
    assert [name for name, _ in search.canonical] == [
        "_id",
        "identifier",
        "patient:identifier",
        "subject:identifier",
        "modality",
        "series",
        "status",
        "_include",
    ]


def test_count_is_capped_and_zero_means_summary_count() -> None:
    assert parse_search([("_count", "500")], max_count=100).count == 100
    assert parse_search([], max_count=100).count == 20
    assert parse_search([], max_count=5).count == 5
    assert parse_search([("_count", "0")]).summary_count
    assert parse_search([("_summary", "count")]).summary_count


@pytest.mark.parametrize(
    ("value", "low", "high"),
    [
        ("2024", datetime(2024, 1, 1, tzinfo=UTC), datetime(2025, 1, 1, tzinfo=UTC)),
        ("2024-12", datetime(2024, 12, 1, tzinfo=UTC), datetime(2025, 1, 1, tzinfo=UTC)),
        ("2024-02-29", datetime(2024, 2, 29, tzinfo=UTC), datetime(2024, 3, 1, tzinfo=UTC)),
        ("2024-02-29T10:00Z", datetime(2024, 2, 29, 10, tzinfo=UTC), datetime(2024, 2, 29, 10, 1, tzinfo=UTC)),
        (
            "2024-02-29T10:00:05+02:00",
            datetime(2024, 2, 29, 8, 0, 5, tzinfo=UTC),
            datetime(2024, 2, 29, 8, 0, 6, tzinfo=UTC),
        ),
    ],
)
def test_date_values_are_periods(value: str, low: datetime, high: datetime) -> None:
    assert parse_date(value, UTC) == (low, high)


def test_started_prefixes_and_repetition() -> None:
    search = parse_search([("started", "ge2024-01-01"), ("started", "lt2025-01-01")])
    assert [b.prefix for b in search.started] == ["ge", "lt"]
    day = (datetime(2024, 6, 1, tzinfo=UTC), datetime(2024, 6, 2, tzinfo=UTC))
    assert all(bound.matches(*day) for bound in search.started)
    assert not search.started[1].matches(datetime(2025, 1, 1, tzinfo=UTC), datetime(2025, 1, 2, tzinfo=UTC))
    year = DateBound("eq", datetime(2024, 1, 1, tzinfo=UTC), datetime(2025, 1, 1, tzinfo=UTC))
    assert year.matches(*day)
    assert not DateBound("gt", *day).matches(*day)
    assert DateBound("ge", *day).matches(*day) and DateBound("le", *day).matches(*day)
    later = (day[0] + timedelta(days=1), day[1] + timedelta(days=1))
    assert DateBound("gt", *day).matches(*later) and DateBound("lt", *later).matches(*day)


def test_a_date_without_zone_is_in_the_upstream_zone() -> None:
    (bound,) = parse_search([("started", "2024-07-01")], zone="Europe/Berlin").started
    assert bound.low == datetime(2024, 6, 30, 22, tzinfo=UTC)


@pytest.mark.parametrize(
    "items",
    [
        [("started", "2024-13")],
        [("started", "2024-02-30")],
        [("started", "sa2024")],
        [("started", "yesterday")],
        [("_id", "1.02.3")],
        [("_id", "1.2.x")],
        [("series", "")],
        [("identifier", "urn:dicom:uid|1.2.3")],
        [("identifier", "urn:oid:1.2.03")],
        [("patient:identifier", "P*")],
        [("modality", "C-T")],
        [("status", "final")],
        [("_count", "ten")],
        [("_offset", "-5")],
        [("modality:text", "CT")],
        [("patient", "Patient/1")],
        [("subject:Patient", "1")],
    ],
)
def test_malformed_values_are_400(items: list[tuple[str, str]]) -> None:
    with pytest.raises(OutcomeError) as caught:
        parse_search(items)
    assert caught.value.status == 400 and caught.value.code == "invalid"


def test_unknown_parameters_are_ignored_unless_strict() -> None:
    items = [("_sort", "started"), ("_include", "ImagingStudy:subject"), ("_summary", "text")]
    lenient = parse_search(items)
    assert lenient.canonical == () and not lenient.include_endpoint and not lenient.summary_count
    for item in items:
        with pytest.raises(OutcomeError) as caught:
            parse_search([item], strict=True)
        assert caught.value.status == 400


@pytest.mark.parametrize(
    ("accept", "format_parameter", "version"),
    [
        ("", None, "R5"),
        ("application/fhir+json", None, "R5"),
        ("application/fhir+json; fhirVersion=4.0", None, "R4"),
        ("application/fhir+json;fhirVersion=5.0", None, "R5"),
        ("application/json", None, "R5"),
        ("*/*", None, "R5"),
        ("application/fhir+xml;q=1, application/fhir+json; fhirVersion=4.0; q=0.5", None, "R4"),
        ("application/fhir+json; fhirVersion=3.0, application/fhir+json; fhirVersion=4.0", None, "R4"),
        ("text/html", "json", "R5"),
        ("application/fhir+json; fhirVersion=4.0", "application/fhir+json", "R4"),
    ],
)
def test_negotiation(accept: str, format_parameter: str | None, version: str) -> None:
    assert negotiate(accept, format_parameter) == version


@pytest.mark.parametrize(
    ("accept", "format_parameter"),
    [
        ("application/fhir+json; fhirVersion=3.0", None),
        ("application/fhir+json; fhirVersion=4.3", None),
        ("application/fhir+xml", None),
        ("application/json;q=0", None),
        ("", "xml"),
        ("", "application/fhir+json; fhirVersion=1.0"),
    ],
)
def test_other_versions_and_formats_are_406(accept: str, format_parameter: str | None) -> None:
    with pytest.raises(OutcomeError) as caught:
        negotiate(accept, format_parameter)
    assert caught.value.status == 406


def test_media_types() -> None:
    assert media_type("R5") == "application/fhir+json; fhirVersion=5.0"
    assert media_type("R4") == "application/fhir+json; fhirVersion=4.0"

"""StudyRecord -> ImagingStudy, DICOM values -> FHIR values, Endpoints and the CapabilityStatement."""

from __future__ import annotations

from typing import Any

import pytest
from pydicom.dataset import Dataset

from gateway.fhir.capability import capability_statement
from gateway.fhir.endpoint import endpoint_ids, endpoint_resources
from gateway.fhir.records import InstanceRecord, SeriesRecord, StudyRecord
from gateway.fhir.resource import imaging_study
from gateway.fhir.values import patient_system, person_display, started, started_interval
from tests.fhirchecks import validate, violated_invariants

CT = "1.2.840.10008.5.1.4.1.1.2"
PT = "1.2.840.10008.5.1.4.1.1.128"
ROOT = "https://pacs.example.org/dicom-web"


def study_dataset(**values: str) -> Dataset:
    ds = Dataset()
    ds.StudyInstanceUID = "1.2.3"
    ds.PatientID = "P1"
    ds.PatientName = "Doe^John^^Dr"
    ds.StudyDate = "20240102"
    ds.StudyTime = "101010"
    ds.AccessionNumber = "A1"
    ds.StudyDescription = "PET/CT"
    ds.ModalitiesInStudy = "CT"  # stale: written when the first series arrived
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    return ds


def series(uid: str, modality: str, count: int, sop_class: str = CT) -> SeriesRecord:
    instances = [InstanceRecord(f"{uid}.{n}", sop_class, n) for n in range(1, count + 1)]
    return SeriesRecord(uid, modality, int(uid.rsplit(".", 1)[1]), f"{modality} series", "", count, instances)


def record(listed: bool = True, **values: str) -> StudyRecord:
    return StudyRecord(
        study_dataset(**values),
        [series("1.2.3.1", "CT", 2), series("1.2.3.2", "PT", 3, PT), series("1.2.3.3", "CT", 1)],
        listed,
    )


@pytest.mark.parametrize("version", ["R5", "R4"])
def test_a_study_holds_the_invariants_in_both_versions(version: str) -> None:
    resource = imaging_study(record(), dicomweb_root=ROOT, version=version)  # type: ignore[arg-type]
    validate(resource, version)
    assert resource["numberOfSeries"] == 3 and resource["numberOfInstances"] == 6
    codes = [m["code"] if version == "R4" else m["coding"][0]["code"] for m in resource["modality"]]
    assert codes == ["CT", "PT"]  # distinct, from the series: not the stale "CT"
    assert resource["identifier"][0] == {"system": "urn:dicom:uid", "value": "urn:oid:1.2.3"}
    assert resource["series"][0]["uid"] == "1.2.3.1"  # a plain UID, no urn:oid:
    assert resource["endpoint"] == [{"reference": f"Endpoint/{i}"} for i in endpoint_ids(ROOT)]
    if version == "R5":
        assert resource["basedOn"][0]["identifier"]["value"] == "A1"
        assert len(resource["identifier"]) == 1
    else:
        assert resource["identifier"][1]["value"] == "A1" and "basedOn" not in resource


def test_without_instance_lists_there_is_no_top_level_count() -> None:
    for resource in (
        imaging_study(record(listed=False), dicomweb_root=ROOT, version="R5"),
        imaging_study(record(), dicomweb_root=ROOT, version="R5", list_instances=False),
    ):
        validate(resource)
        assert "numberOfInstances" not in resource
        assert [s["numberOfInstances"] for s in resource["series"]] == [2, 3, 1]
        assert all("instance" not in s for s in resource["series"])
    # What the rule prevents: the top-level count beside series without their instances.
    broken = imaging_study(record(listed=False), dicomweb_root=ROOT, version="R5") | {"numberOfInstances": 6}
    assert violated_invariants(broken) == ["ist-4"]


def test_the_checks_catch_broken_resources() -> None:
    resource: dict[str, Any] = imaging_study(record(), dicomweb_root=ROOT, version="R5")
    resource["modality"] = resource["modality"][:1] * 2
    assert violated_invariants(resource) == ["ist-7", "distinct"]
    resource = imaging_study(record(), dicomweb_root=ROOT, version="R4")
    resource["modality"] = resource["modality"][:1]
    assert violated_invariants(resource, "R4") == ["ist-7"]


def test_subject_is_a_logical_reference_by_patient_id() -> None:
    plain = imaging_study(record(), dicomweb_root=ROOT, version="R5")["subject"]
    assert plain == {"type": "Patient", "identifier": {"value": "P1"}, "display": "Dr John Doe"}
    issued = imaging_study(record(IssuerOfPatientID="2.16.840.1.1"), dicomweb_root=ROOT, version="R5")
    assert issued["subject"]["identifier"] == {"system": "urn:oid:2.16.840.1.1", "value": "P1"}
    anonymous = imaging_study(record(PatientID="", PatientName=""), dicomweb_root=ROOT, version="R5")
    validate(anonymous)
    assert "identifier" not in anonymous["subject"] and anonymous["subject"]["extension"]
    assert patient_system("https://hospital.example/ids") == "https://hospital.example/ids"
    assert patient_system("HOSPITAL A") is None
    assert person_display("Müller^Anna=ミュラー^アンナ") == "Anna Müller"


@pytest.mark.parametrize(
    ("values", "zone", "expected"),
    [
        ({"TimezoneOffsetFromUTC": "+0530"}, "", "2024-01-02T10:10:10+05:30"),
        ({"TimezoneOffsetFromUTC": "-0000"}, "Europe/Berlin", "2024-01-02T10:10:10+00:00"),
        ({}, "Europe/Berlin", "2024-01-02T10:10:10+01:00"),
        ({"StudyDate": "20240702"}, "Europe/Berlin", "2024-07-02T10:10:10+02:00"),
        ({}, "", "2024-01-02"),
        ({"StudyTime": ""}, "Europe/Berlin", "2024-01-02"),
        ({"StudyTime": "1010"}, "UTC", "2024-01-02T10:10:00+00:00"),
        ({"StudyTime": "101010.25"}, "UTC", "2024-01-02T10:10:10.250000+00:00"),
        ({"TimezoneOffsetFromUTC": "bogus"}, "", "2024-01-02"),
        ({"StudyDate": ""}, "UTC", None),
        ({"StudyDate": "20241345"}, "UTC", None),
    ],
)
def test_started_has_a_real_zone_or_is_a_date(values: dict[str, str], zone: str, expected: str | None) -> None:
    assert started(study_dataset(**values), zone) == expected


def test_started_interval() -> None:
    start, end = started_interval(study_dataset(TimezoneOffsetFromUTC="+0100"))  # type: ignore[misc]
    assert start.isoformat() == "2024-01-02T10:10:10+01:00" and (end - start).total_seconds() == 1
    start, end = started_interval(study_dataset(StudyTime=""), "Europe/Berlin")  # type: ignore[misc]
    assert start.isoformat() == "2024-01-02T00:00:00+01:00" and (end - start).days == 1
    start, end = started_interval(study_dataset(StudyDate="99991231", StudyTime=""))  # type: ignore[misc]
    assert end.year == 9999 and end > start


@pytest.mark.parametrize("version", ["R5", "R4"])
def test_endpoints(version: str) -> None:
    resources = endpoint_resources(ROOT + "/", version)
    for resource in resources:
        validate(resource, version)
        assert resource["address"] == ROOT and resource["status"] == "active"
    assert [r["id"] for r in resources] == endpoint_ids(ROOT) == endpoint_ids(ROOT + "/studies")
    assert endpoint_ids(ROOT) != endpoint_ids(ROOT + "/upstreams/other")
    assert all(len(i) <= 64 for i in endpoint_ids(ROOT))


@pytest.mark.parametrize("version", ["R5", "R4"])
def test_capability_statement(version: str) -> None:
    statement = capability_statement(version, "http://gateway/fhir", "main", smart=False)  # type: ignore[arg-type]
    validate(statement, version)
    assert [r["type"] for r in statement["rest"][0]["resource"]] == ["ImagingStudy", "Endpoint"]
    assert "security" not in statement["rest"][0]
    secured = capability_statement(version, "http://gateway/fhir", "main", smart=True)  # type: ignore[arg-type]
    validate(secured, version)
    (service,) = secured["rest"][0]["security"]["service"]
    assert service["coding"][0]["code"] == "SMART-on-FHIR"
    assert "http://gateway/fhir/.well-known/smart-configuration" in secured["rest"][0]["security"]["description"]

"""FHIR read and search through the gateway in front of the in-process fake PACS.

The fake answers relationally or hierarchically, records every identifier it receives (what the
gateway asked the PACS, and how many C-FINDs) and fails on demand. The app runs in-process: its
upstreams are entered by hand and a tiny middleware can bind requests to a patient, as the
access-control middleware will.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Any

import httpx
import pytest
from pydicom.dataset import Dataset
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.app import create_app
from gateway.settings import load_settings
from tests.fakepacs import FakePacs, Fault
from tests.fhirchecks import validate

pytestmark = pytest.mark.anyio

CT = "1.2.840.10008.5.1.4.1.1.2"
PT = "1.2.840.10008.5.1.4.1.1.128"
DCM = "http://dicom.nema.org/resources/ontology/DCM"


def instance(study: int, series: int, number: int, modality: str, **extra: str) -> Dataset:
    ds = Dataset()
    ds.StudyInstanceUID = f"1.2.826.0.1.{study}"
    ds.SeriesInstanceUID = f"1.2.826.0.1.{study}.{series}"
    ds.SOPInstanceUID = f"1.2.826.0.1.{study}.{series}.{number}"
    ds.SOPClassUID = CT if modality == "CT" else PT
    ds.Modality = modality
    ds.PatientName = f"Patient^Number{study % 3}"
    ds.PatientID = f"P{study % 3}"
    ds.StudyDate = f"2020{study:02d}01"
    ds.StudyTime = "101500"
    ds.AccessionNumber = f"ACC{study}"
    ds.SeriesNumber = series
    ds.InstanceNumber = number
    # Stale, as the seed's "Common Operational Errors" describe: written with the first series.
    ds.ModalitiesInStudy = "CT"
    for keyword, value in extra.items():
        setattr(ds, keyword, value)
    return ds


def study_instances(study: int, pt_series: bool = True, **extra: str) -> list[Dataset]:
    series = [(1, "CT"), (2, "PT")] if pt_series else [(1, "CT")]
    return [instance(study, se, n, m, **extra) for se, m in series for n in (1, 2, 3)]


# Studies 1..8: odd ones CT+PT, even ones CT only, study 3 with its zone; study 9 is an MR study.
INSTANCES = [ds for st in range(1, 9) for ds in study_instances(st, pt_series=st % 2 == 1)]
for ds in INSTANCES:
    if ds.StudyInstanceUID == "1.2.826.0.1.3":
        ds.TimezoneOffsetFromUTC = "-0500"
INSTANCES += [instance(9, 1, 1, "MR")]


def bind_patient(app: ASGIApp, patient_id: str) -> ASGIApp:
    """What the auth middleware does for a patient-bound token: put its PatientID in the scope."""

    async def bound(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            scope["gateway.patient_id"] = patient_id
        await app(scope, receive, send)

    return bound


@asynccontextmanager
async def fhir(
    pacs: FakePacs, *, patient_id: str | None = None, relational: bool = True, **options: Any
) -> AsyncIterator[httpx.AsyncClient]:
    settings = load_settings(None, upstream=pacs.upstream)
    upstream = replace(settings.default_upstream, profile="orthanc" if relational else "dcmqrscp", **options)
    settings = replace(settings, upstreams=(upstream,), fhir_max_count=5)
    app = create_app(settings)
    if patient_id is not None:
        # Inside the access control, which answers for the scope key itself (an anonymous request
        # is bound to no patient): what it does for a patient-bound token (tests/integration/test_auth.py).
        app.router = bind_patient(app.router, patient_id)  # type: ignore[assignment]
    async with app.state.upstreams:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
            yield client


@pytest.fixture(params=[True, False], ids=["relational", "hierarchical"])
def relational(request: pytest.FixtureRequest) -> bool:
    return bool(request.param)


def finds(pacs: FakePacs, level: str) -> list[Dataset]:
    return [ds for ds in pacs.received if ds.QueryRetrieveLevel == level]


async def test_read_is_the_whole_fresh_study(relational: bool) -> None:
    with FakePacs(INSTANCES, relational=relational) as pacs:
        async with fhir(pacs, relational=relational) as client:
            response = await client.get("/fhir/ImagingStudy/1.2.826.0.1.3")
            again = await client.get("/fhir/ImagingStudy/1.2.826.0.1.3")
            cached = await client.get(
                "/fhir/ImagingStudy/1.2.826.0.1.3", headers={"If-None-Match": response.headers["etag"]}
            )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/fhir+json; fhirVersion=5.0"
    study = response.json()
    validate(study)
    assert study["id"] == "1.2.826.0.1.3"
    # Derived from the series, not the stale study-level ModalitiesInStudy "CT".
    assert study["modality"] == [
        {"coding": [{"system": DCM, "code": "CT"}]},
        {"coding": [{"system": DCM, "code": "PT"}]},
    ]
    assert study["numberOfSeries"] == 2 and study["numberOfInstances"] == 6
    assert [s["numberOfInstances"] for s in study["series"]] == [3, 3]
    assert [i["uid"] for i in study["series"][1]["instance"]] == [f"1.2.826.0.1.3.2.{n}" for n in (1, 2, 3)]
    assert study["series"][1]["instance"][0]["sopClass"] == {"system": "urn:ietf:rfc:3986", "code": f"urn:oid:{PT}"}
    assert study["started"] == "2020-03-01T10:15:00-05:00"
    assert study["subject"] == {"type": "Patient", "identifier": {"value": "P0"}, "display": "Number0 Patient"}
    assert study["basedOn"][0]["identifier"]["value"] == "ACC3"
    assert again.headers["etag"] == response.headers["etag"]
    assert cached.status_code == 304
    series_finds = finds(pacs, "SERIES")
    image_finds = finds(pacs, "IMAGE")
    # Three reads: each one SERIES C-FIND, and one IMAGE C-FIND over the study (relational) or
    # one per series (hierarchical).
    assert len(series_finds) == 3
    assert len(image_finds) == (3 if relational else 6)


async def test_read_in_r4_and_the_missing_study() -> None:
    with FakePacs(INSTANCES, relational=True) as pacs:
        async with fhir(pacs) as client:
            r4 = await client.get(
                "/fhir/ImagingStudy/1.2.826.0.1.2", headers={"Accept": "application/fhir+json; fhirVersion=4.0"}
            )
            r4_search = await client.get(
                "/fhir/ImagingStudy",
                params={"modality": "PT", "_include": "ImagingStudy:endpoint"},
                headers={"Accept": "application/fhir+json; fhirVersion=4.0"},
            )
            missing = await client.get("/fhir/ImagingStudy/1.2.826.0.1.99")
            not_a_uid = await client.get("/fhir/ImagingStudy/abc")
            r3 = await client.get("/fhir/metadata", headers={"Accept": "application/fhir+json; fhirVersion=3.0"})
            xml = await client.get("/fhir/metadata?_format=xml")
    assert r4.headers["content-type"] == "application/fhir+json; fhirVersion=4.0"
    study = r4.json()
    validate(study, "R4")
    assert study["modality"] == [{"system": DCM, "code": "CT"}]
    assert {
        "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "ACSN"}]},
        "value": "ACC2",
    } in study["identifier"]
    assert study["started"] == "2020-02-01"  # no TimezoneOffsetFromUTC, no configured zone: the date only
    validate(r4_search.json(), "R4")
    assert [e["resource"]["resourceType"] for e in r4_search.json()["entry"]] == ["ImagingStudy"] * 4 + ["Endpoint"] * 3
    for response, status in ((missing, 404), (not_a_uid, 404), (r3, 406), (xml, 406)):
        assert response.status_code == status
        validate(response.json())
        assert response.json()["resourceType"] == "OperationOutcome"


async def test_configured_zone_and_instance_cap() -> None:
    with FakePacs(INSTANCES, relational=True) as pacs:
        async with fhir(pacs, timezone="Europe/Berlin", fhir_max_instances=5) as client:
            big = (await client.get("/fhir/ImagingStudy/1.2.826.0.1.1")).json()
            small = (await client.get("/fhir/ImagingStudy/1.2.826.0.1.2")).json()
    validate(big)
    validate(small)
    assert big["started"] == "2020-01-01T10:15:00+01:00"
    assert small["started"] == "2020-02-01T10:15:00+01:00"
    # Six instances above a cap of five: no lists, and no top-level count beside them (ist-4).
    assert "numberOfInstances" not in big and all("instance" not in s for s in big["series"])
    assert [s["numberOfInstances"] for s in big["series"]] == [3, 3]
    assert small["numberOfInstances"] == 3 and len(small["series"][0]["instance"]) == 3


async def test_search_by_modality_uses_series_modality(relational: bool) -> None:
    with FakePacs(INSTANCES, relational=relational) as pacs:
        async with fhir(pacs, relational=relational) as client:
            response = await client.get("/fhir/ImagingStudy", params={"modality": f"{DCM}|PT"})
            counted = await client.get("/fhir/ImagingStudy", params={"modality": "PT,MR", "_summary": "count"})
    bundle = response.json()
    validate(bundle)
    uids = [e["resource"]["id"] for e in bundle["entry"]]
    assert sorted(uids) == [f"1.2.826.0.1.{n}" for n in (1, 3, 5, 7)]
    assert bundle["total"] == 4 and [link["relation"] for link in bundle["link"]] == ["self"]
    for item in bundle["entry"]:
        assert item["search"] == {"mode": "match"}
        assert item["fullUrl"] == f"http://gateway/fhir/ImagingStudy/{item['resource']['id']}"
        assert [s["numberOfInstances"] for s in item["resource"]["series"]] == [3, 3]
        assert "numberOfInstances" not in item["resource"]  # search entries list no instances (ist-4)
    assert counted.json() == {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": 5,
        "link": [{"relation": "self", "url": "http://gateway/fhir/ImagingStudy?modality=PT,MR&_summary=count"}],
    }
    if relational:
        # A SERIES C-FIND on Modality, the studies by UID list, then the page's series and instances
        # by UID list: a handful of C-FINDs, not one per study.
        assert len(pacs.received) <= 8
        assert any(
            ds.get("Modality") == "PT" and "StudyInstanceUID" in ds and not ds.StudyInstanceUID
            for ds in finds(pacs, "SERIES")
        )
    else:
        # One SERIES C-FIND per study and request (9 studies, 2 requests); the page's entries
        # reuse the answers of that check.
        assert len(finds(pacs, "SERIES")) == 18


async def test_search_parameters_and_paging() -> None:
    with FakePacs(INSTANCES, relational=True) as pacs:
        async with fhir(pacs) as client:

            async def ids(**params: Any) -> list[str]:
                response = await client.get("/fhir/ImagingStudy", params=params)
                assert response.status_code == 200, response.text
                validate(response.json())
                return sorted(e["resource"]["id"].rsplit(".", 1)[1] for e in response.json().get("entry", []))

            assert await ids(_id="1.2.826.0.1.2,1.2.826.0.1.4") == ["2", "4"]
            assert await ids(identifier="urn:dicom:uid|urn:oid:1.2.826.0.1.5") == ["5"]
            assert await ids(identifier="ACC6") == ["6"]
            assert await ids(**{"patient:identifier": "P1"}) == ["1", "4", "7"]
            assert await ids(**{"subject:identifier": "other-system|P1"}) == []
            assert await ids(started=["ge2020-03-01", "lt2020-06"]) == ["3", "4", "5"]
            assert await ids(started="2020-04") == ["4"]
            before = len(pacs.received)
            assert await ids(started=["ge2021-01-01", "lt2020-01-01"]) == []
            assert await ids(identifier=["ACC1", "ACC2"]) == []
            assert len(pacs.received) == before  # contradictions need no C-FIND
            assert await ids(started="le0001-01-01") == []
            assert await ids(started="ge9999-12-31T23:59:59Z") == []
            assert await ids(series="1.2.826.0.1.8.1") == ["8"]
            assert await ids(status="available", _count="3", modality="CT", unknown="x") == ["1", "2", "3"]
            assert await ids(status="cancelled") == []

            first = (await client.get("/fhir/ImagingStudy", params={"_count": "50", "bogus": "1"})).json()
            assert len(first["entry"]) == 5  # _count is capped at fhir_max_count
            links = {link["relation"]: link["url"] for link in first["link"]}
            assert links["self"] == "http://gateway/fhir/ImagingStudy?_count=5"
            pages = [e["resource"]["id"] for e in first["entry"]]
            url = links["next"]
            while url:
                page = (await client.get(url)).json()
                validate(page)
                pages += [e["resource"]["id"] for e in page.get("entry", [])]
                url = next((link["url"] for link in page["link"] if link["relation"] == "next"), None)
            assert sorted(pages) == [f"1.2.826.0.1.{n}" for n in range(1, 10)]

            posted = await client.post(
                "/fhir/ImagingStudy/_search",
                data={"modality": "PT", "_include": "ImagingStudy:endpoint"},
                headers={"Prefer": "handling=strict"},
            )
            assert posted.status_code == 200
            bundle = posted.json()
            validate(bundle)
            modes = [e["search"]["mode"] for e in bundle["entry"]]
            assert modes == ["match"] * 4 + ["include"] * 3
            endpoints = [e["resource"] for e in bundle["entry"] if e["search"]["mode"] == "include"]
            references = {r["reference"] for r in bundle["entry"][0]["resource"]["endpoint"]}
            assert {f"Endpoint/{r['id']}" for r in endpoints} == references


async def test_bad_searches_are_operation_outcomes() -> None:
    with FakePacs(INSTANCES, relational=True) as pacs:
        async with fhir(pacs) as client:
            before = len(pacs.received)
            for params, headers, status in (
                ({"started": "2020-13-45"}, {}, 400),
                ({"started": "ne2020"}, {}, 400),
                ({"_id": "1.02"}, {}, 400),
                ({"series": "abc"}, {}, 400),
                ({"status": "done"}, {}, 400),
                ({"_count": "-1"}, {}, 400),
                ({"modality:not": "CT"}, {}, 400),
                ({"patient": "Patient/1"}, {}, 400),
                ({"bogus": "1"}, {"Prefer": "handling=strict"}, 400),
                ({"_include": "ImagingStudy:subject"}, {"Prefer": "handling=strict"}, 400),
            ):
                response = await client.get("/fhir/ImagingStudy", params=params, headers=headers)
                assert response.status_code == status, params
                validate(response.json())
                assert response.json()["issue"][0]["severity"] == "error"
            form = await client.post("/fhir/ImagingStudy/_search", json={"modality": "CT"})
            assert form.status_code == 415
            validate(form.json())
            assert len(pacs.received) == before  # nothing malformed reached the PACS


async def test_a_request_bound_to_a_patient_sees_only_that_patient() -> None:
    with FakePacs(INSTANCES, relational=True) as pacs:
        async with fhir(pacs, patient_id="P1") as client:
            own = await client.get("/fhir/ImagingStudy/1.2.826.0.1.4")
            other = await client.get("/fhir/ImagingStudy/1.2.826.0.1.3")
            reads = len(pacs.received)
            everything = (await client.get("/fhir/ImagingStudy")).json()
            pt = (await client.get("/fhir/ImagingStudy", params={"modality": "PT"})).json()
            asked_other = (await client.get("/fhir/ImagingStudy", params={"patient:identifier": "P2"})).json()
    assert own.status_code == 200
    assert other.status_code == 403
    assert other.json()["issue"][0]["code"] == "forbidden"
    assert sorted(e["resource"]["id"] for e in everything["entry"]) == [
        "1.2.826.0.1.1",
        "1.2.826.0.1.4",
        "1.2.826.0.1.7",
    ]
    assert sorted(e["resource"]["id"] for e in pt["entry"]) == ["1.2.826.0.1.1", "1.2.826.0.1.7"]
    assert "entry" not in asked_other
    # Every search C-FIND at STUDY level carries the bound PatientID (a read asks by UID only, to
    # tell a study of another patient, 403, from a missing one, 404).
    searches = [ds for ds in pacs.received[reads:] if ds.QueryRetrieveLevel == "STUDY"]
    assert searches and all(ds.PatientID == "P1" for ds in searches)


async def test_pacs_failures_are_operation_outcomes() -> None:
    with FakePacs(INSTANCES, relational=True, fault=Fault("status", after=1, status=0xA700)) as pacs:
        async with fhir(pacs) as client:
            failed = await client.get("/fhir/ImagingStudy", params={"modality": "CT"})
    assert failed.status_code == 502
    assert failed.json()["issue"][0]["code"] == "exception"
    with FakePacs(INSTANCES, relational=True, fault=Fault("hang", after=0, seconds=3)) as pacs:
        async with fhir(pacs, dimse_timeout=0.5) as client:
            slow = await client.get("/fhir/ImagingStudy/1.2.826.0.1.1")
    assert slow.status_code == 504
    assert slow.json()["issue"][0]["code"] == "timeout"
    async with fhir(FakePacs([], port=1)) as client:
        down = await client.get("/fhir/ImagingStudy")
    assert down.status_code == 502
    validate(down.json())


async def test_metadata_and_endpoints() -> None:
    with FakePacs(INSTANCES, relational=True) as pacs:
        async with fhir(pacs) as client:
            r5 = (await client.get("/fhir/metadata")).json()
            r4 = (
                await client.get("/fhir/metadata", headers={"Accept": "application/fhir+json; fhirVersion=4.0"})
            ).json()
            endpoints = (await client.get("/fhir/Endpoint?_format=json")).json()
            named = (await client.get("/fhir/upstreams/default/Endpoint")).json()
            one = await client.get(f"/fhir/Endpoint/{endpoints['entry'][0]['resource']['id']}")
            none = await client.get("/fhir/Endpoint/nothing")
    validate(r5)
    validate(r4, "R4")
    assert r5["fhirVersion"] == "5.0.0" and r4["fhirVersion"] == "4.0.1"
    resource = {r["type"]: r for r in r5["rest"][0]["resource"]}
    assert {p["name"] for p in resource["ImagingStudy"]["searchParam"]} == {
        "_id",
        "identifier",
        "patient",
        "subject",
        "started",
        "modality",
        "series",
        "status",
    }
    validate(endpoints)
    kinds = sorted(e["resource"]["connectionType"][0]["coding"][0]["code"] for e in endpoints["entry"])
    assert kinds == ["dicom-qido-rs", "dicom-stow-rs", "dicom-wado-rs"]
    assert {e["resource"]["address"] for e in endpoints["entry"]} == {"http://gateway/dicom-web"}
    assert {e["resource"]["address"] for e in named["entry"]} == {"http://gateway/dicom-web/upstreams/default"}
    assert one.status_code == 200 and one.json()["status"] == "active"
    assert none.status_code == 404

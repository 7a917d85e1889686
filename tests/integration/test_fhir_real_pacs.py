"""FHIR ImagingStudy and Endpoint through the gateway in front of Orthanc and dcmqrscp.

Every sample study is read and compared with Orthanc's own QIDO-RS on the same data (series,
modalities, counts, instances); searches are compared with the sample data's ground truth; and
a client that follows ImagingStudy.endpoint reaches the gateway's WADO-RS.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import httpx
import pytest
from dicomweb_client.api import DICOMwebClient

from gateway.demo.pacs import DcmqrscpPacs, LocalPacs, OrthancPacs
from gateway.demo.samples import SOP_CLASSES, SampleSeries, generate_sample_studies, iter_sample_datasets
from gateway.settings import load_settings
from tests.conftest import live_gateway
from tests.fhirchecks import validate

STUDIES = generate_sample_studies(48)
BY_UID = {s.study_uid: s for s in STUDIES}
DCM = "http://dicom.nema.org/resources/ontology/DCM"


@dataclass
class Fhir:
    kind: str
    base: str
    dicomweb: str
    client: httpx.Client

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.client.get(self.base + path, **kwargs)


@pytest.fixture(scope="module")
def pacs_pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, LocalPacs]]:
    with contextlib.ExitStack() as stack:
        started: dict[str, LocalPacs] = {}
        for kind, factory in (("orthanc", OrthancPacs), ("dcmqrscp", DcmqrscpPacs)):
            pacs = stack.enter_context(factory(Path(tmp_path_factory.mktemp(f"fhir-{kind}"))))
            pacs.store(iter_sample_datasets(STUDIES))
            started[kind] = pacs
        yield started


@pytest.fixture(scope="module", params=["orthanc", "dcmqrscp"])
def fhir(request: pytest.FixtureRequest, pacs_pool: dict[str, LocalPacs]) -> Iterator[Fhir]:
    kind = request.param
    settings = load_settings(None, upstream=pacs_pool[kind].upstream)
    settings = replace(settings, upstreams=(replace(settings.default_upstream, profile="auto"),))
    with live_gateway(settings) as root, httpx.Client(timeout=30) as client:
        yield Fhir(kind, root.removesuffix(settings.base_path) + "/fhir", root, client)


@pytest.fixture(scope="module")
def orthanc_qido(pacs_pool: dict[str, LocalPacs]) -> Iterator[httpx.Client]:
    orthanc = pacs_pool["orthanc"]
    assert isinstance(orthanc, OrthancPacs)
    with httpx.Client(base_url=orthanc.dicomweb_url, timeout=30) as client:
        yield client


def qido(client: httpx.Client, path: str, **params: str) -> list[dict[str, Any]]:
    response = client.get(path, params=params)
    assert response.status_code in (200, 204), response.text
    return list(response.json()) if response.status_code == 200 else []


def first(result: dict[str, Any], tag: str) -> Any:
    values = result.get(tag, {}).get("Value")
    return values[0] if values else None


def test_every_study_reads_as_orthancs_own_qido_sees_it(fhir: Fhir, orthanc_qido: httpx.Client) -> None:
    for study in STUDIES:
        response = fhir.get(f"/ImagingStudy/{study.study_uid}")
        assert response.status_code == 200, response.text
        resource = response.json()
        validate(resource)
        native_study = qido(orthanc_qido, "/studies", StudyInstanceUID=study.study_uid)[0]
        native_series = qido(orthanc_qido, f"/studies/{study.study_uid}/series")
        native_instances = qido(orthanc_qido, f"/studies/{study.study_uid}/instances")
        codes = [m["coding"][0]["code"] for m in resource["modality"]]
        assert sorted(codes) == sorted(native_study["00080061"]["Value"]) == list(study.modalities)
        assert resource["numberOfSeries"] == first(native_study, "00201206") == len(native_series)
        by_uid = {first(s, "0020000E"): s for s in native_series}
        assert {s["uid"] for s in resource["series"]} == set(by_uid)
        for element in resource["series"]:
            native = by_uid[element["uid"]]
            assert element["modality"]["coding"][0] == {"system": DCM, "code": first(native, "00080060")}
            assert element["numberOfInstances"] == first(native, "00201209")
            assert element["number"] == first(native, "00200011")
            if fhir.kind == "orthanc":  # dcmqrscp does not index SeriesDescription
                assert element["description"] == first(native, "0008103E")
        if fhir.kind == "orthanc":
            assert resource["numberOfInstances"] == first(native_study, "00201208")
            listed = {(i["uid"], i["sopClass"]["code"]) for s in resource["series"] for i in s["instance"]}
            native_listed = {(first(i, "00080018"), "urn:oid:" + first(i, "00080016")) for i in native_instances}
            assert listed == native_listed
        else:
            # dcmqrscp's C-FIND gives no SOPClassUID, which an instance element requires: the
            # lists are left out, and the top-level count with them (ist-4); series counts stay.
            assert "numberOfInstances" not in resource
            assert sum(s["numberOfInstances"] for s in resource["series"]) == study.instance_count
        subject = resource["subject"]
        assert subject["identifier"] == {"value": study.patient_id}
        if study.study_date:
            assert resource["started"] == f"{study.study_date[:4]}-{study.study_date[4:6]}-{study.study_date[6:]}"
        else:
            assert "started" not in resource


def test_searches_match_the_sample_data(fhir: Fhir) -> None:
    def ids(**params: str | list[str]) -> set[str]:
        found: set[str] = set()
        url: str | None = fhir.base + "/ImagingStudy"
        query: dict[str, Any] | None = {**params, "_count": "10"}
        while url:
            response = fhir.client.get(url, params=query)
            assert response.status_code == 200, response.text
            bundle = response.json()
            validate(bundle)
            found |= {e["resource"]["id"] for e in bundle.get("entry", [])}
            url = next((link["url"] for link in bundle["link"] if link["relation"] == "next"), None)
            query = None
        return found

    assert ids(modality="PT") == {s.study_uid for s in STUDIES if "PT" in s.modalities}
    assert ids(modality="SR,KO") == {s.study_uid for s in STUDIES if {"SR", "KO"} & set(s.modalities)}
    assert ids(modality="CT", started=["ge2020-01-01", "lt2022-01-01"]) == {
        s.study_uid for s in STUDIES if "CT" in s.modalities and "20200101" <= s.study_date < "20220101"
    }
    patient = STUDIES[0].patient_id
    assert ids(**{"patient:identifier": patient}) == {s.study_uid for s in STUDIES if s.patient_id == patient}
    assert ids(identifier=STUDIES[5].accession_number) == {STUDIES[5].study_uid}
    counted = fhir.get("/ImagingStudy", params={"modality": "MR", "_summary": "count"}).json()
    assert counted["total"] == sum("MR" in s.modalities for s in STUDIES)


def test_following_the_endpoint_reaches_wado_rs(fhir: Fhir) -> None:
    study = next(s for s in STUDIES if len(s.series) >= 2)
    bundle = fhir.get("/ImagingStudy", params={"_id": study.study_uid, "_include": "ImagingStudy:endpoint"}).json()
    validate(bundle)
    resource = bundle["entry"][0]["resource"]
    endpoints = {e["resource"]["id"]: e["resource"] for e in bundle["entry"][1:]}
    wado = next(
        endpoints[ref["reference"].removeprefix("Endpoint/")]
        for ref in resource["endpoint"]
        if endpoints[ref["reference"].removeprefix("Endpoint/")]["connectionType"][0]["coding"][0]["code"]
        == "dicom-wado-rs"
    )
    assert not wado["address"].endswith(("/", "/studies"))
    series_uid = resource["series"][0]["uid"]
    response = fhir.client.get(f"{wado['address']}/studies/{study.study_uid}/series/{series_uid}/metadata")
    assert response.status_code == 200
    metadata = response.json()
    assert len(metadata) == study.series[0].instance_count
    assert {first(m, "0020000E") for m in metadata} == {series_uid}


def test_a_series_stored_through_the_gateway_shows_in_the_very_next_read(fhir: Fhir) -> None:
    # A CT study of its own (not one of STUDIES), then a PT series stored into it.
    ct_study = next(s for s in generate_sample_studies(8, seed=7) if s.modalities == ("CT",))
    ct_study = replace(ct_study, patient_id=f"STOW-{fhir.kind}")
    pt = SampleSeries(f"{ct_study.study_uid}.9", "PT", SOP_CLASSES["PT"], 2, 9, "PET ADDED LATER")
    dicomweb = DICOMwebClient(url=fhir.dicomweb)
    dicomweb.store_instances(list(iter_sample_datasets([ct_study])))
    before = fhir.get(f"/ImagingStudy/{ct_study.study_uid}").json()
    dicomweb.store_instances(list(iter_sample_datasets([replace(ct_study, series=(pt,))])))
    after = fhir.get(f"/ImagingStudy/{ct_study.study_uid}").json()
    validate(before)
    validate(after)
    assert [m["coding"][0]["code"] for m in before["modality"]] == ["CT"]
    assert [m["coding"][0]["code"] for m in after["modality"]] == ["CT", "PT"]
    assert after["numberOfSeries"] == before["numberOfSeries"] + 1
    assert after["series"][-1]["uid"] == pt.series_uid and after["series"][-1]["numberOfInstances"] == 2
    found = fhir.get("/ImagingStudy", params={"modality": "PT", "patient:identifier": ct_study.patient_id}).json()
    assert [e["resource"]["id"] for e in found["entry"]] == [ct_study.study_uid]

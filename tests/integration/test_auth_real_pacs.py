"""Patient-bound tokens in front of real PACS: Orthanc (C-GET) and dcmtk's dcmqrscp (C-MOVE).

A token for one patient searches that patient's studies only, is refused another patient's study
before anything is retrieved (the gateway's cache admits no instance of it), and stores that
patient's instances only: another patient's instance fails in the store response and never
reaches the PACS.
"""

from __future__ import annotations

import contextlib
import io
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydicom import dcmwrite
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import generate_uid

from gateway.demo.issuer import AUDIENCE, LocalIssuer
from gateway.demo.pacs import DcmqrscpPacs, LocalPacs, OrthancPacs, free_port
from gateway.demo.samples import generate_sample_studies, iter_sample_datasets
from gateway.settings import AuthSettings, load_settings
from tests.conftest import live_gateway

pytestmark = pytest.mark.upstream

STUDIES = generate_sample_studies(12, seed=5)
PATIENT = STUDIES[0].patient_id
OWN = [s for s in STUDIES if s.patient_id == PATIENT]
OTHERS = [s for s in STUDIES if s.patient_id != PATIENT]
STORE_PORT = free_port()
GATEWAYS = [("orthanc", "get"), ("dcmqrscp", "move")]
ACCEPT_DICOM = {"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'}


@pytest.fixture(scope="module")
def issuer() -> Iterator[LocalIssuer]:
    with LocalIssuer() as running:
        yield running


@pytest.fixture(scope="module")
def pacs_pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, LocalPacs]]:
    destinations = {"GATEWAY": ("127.0.0.1", STORE_PORT)}
    with contextlib.ExitStack() as stack:
        started: dict[str, LocalPacs] = {}
        for kind, factory in (("orthanc", OrthancPacs), ("dcmqrscp", DcmqrscpPacs)):
            pacs = stack.enter_context(factory(Path(tmp_path_factory.mktemp(kind)), move_destinations=destinations))
            pacs.store(iter_sample_datasets(STUDIES))
            started[kind] = pacs
        yield started


@pytest.fixture(scope="module", params=GATEWAYS, ids=[f"{kind}-{method}" for kind, method in GATEWAYS])
def root(request: pytest.FixtureRequest, pacs_pool: dict[str, LocalPacs], issuer: LocalIssuer) -> Iterator[str]:
    kind, method = request.param
    settings = load_settings(None, upstream=pacs_pool[kind].upstream, retrieve=method, store_port=STORE_PORT)
    settings = replace(
        settings,
        upstreams=(replace(settings.default_upstream, profile=kind),),
        auth=AuthSettings(issuers=(issuer.url,), audience=AUDIENCE),
    )
    with live_gateway(settings) as url:
        yield url


def patient_token(issuer: LocalIssuer, scope: str = "patient/ImagingStudy.rs") -> dict[str, str]:
    return {"Authorization": f"Bearer {issuer.token(scope=scope, patient=PATIENT)}"}


def studies(response: httpx.Response) -> set[str]:
    if response.status_code == 204:
        return set()
    assert response.status_code == 200, response.text
    return {r["0020000D"]["Value"][0] for r in response.json()}


def admitted(root: str) -> int:
    """Instances the gateway has received from the PACS (by C-GET or C-MOVE) so far."""
    caches = httpx.get(root.replace("/dicom-web", "/health"), timeout=10).json()["caches"]
    return int(caches["default"]["admitted"])


def test_search_is_narrowed_to_the_patient(root: str, issuer: LocalIssuer) -> None:
    token = patient_token(issuer)
    assert studies(httpx.get(f"{root}/studies", headers=token, timeout=30)) == {s.study_uid for s in OWN}
    series = httpx.get(f"{root}/series", headers=token, timeout=30).json()
    assert {r["0020000D"]["Value"][0] for r in series} == {s.study_uid for s in OWN}
    assert {r["00100020"]["Value"][0] for r in series} == {PATIENT}
    other = OTHERS[0]
    for query in (
        f"/studies?PatientID={other.patient_id}",
        f"/studies/{other.study_uid}/series",
        f"/studies/{other.study_uid}/instances",
    ):
        assert httpx.get(root + query, headers=token, timeout=30).status_code == 204, query
    everyone = {"Authorization": f"Bearer {issuer.token(scope='user/ImagingStudy.rs')}"}
    assert studies(httpx.get(f"{root}/studies", headers=everyone, timeout=30)) == {s.study_uid for s in STUDIES}


def test_another_patients_study_is_refused_before_anything_is_retrieved(root: str, issuer: LocalIssuer) -> None:
    token = patient_token(issuer)
    other = OTHERS[0]
    series = other.series[0]
    instance = f"/studies/{other.study_uid}/series/{series.series_uid}/instances/{series.instance_uid(1)}"
    before = admitted(root)
    for path in (
        f"/studies/{other.study_uid}",
        f"/studies/{other.study_uid}/metadata",
        f"/studies/{other.study_uid}/thumbnail",
        f"/studies/{other.study_uid}/series/{series.series_uid}/rendered",
        f"{instance}/frames/1",
        f"{instance}/bulkdata/7FE00010",
    ):
        response = httpx.get(root + path, headers={**token, **ACCEPT_DICOM}, timeout=30)
        assert response.status_code == 403, path
    assert admitted(root) == before, "an instance of another patient was retrieved"
    own = httpx.get(f"{root}/studies/{OWN[0].study_uid}/metadata", headers=token, timeout=30)
    assert own.status_code == 200 and {r["00100020"]["Value"][0] for r in own.json()} == {PATIENT}
    assert admitted(root) > before
    missing = httpx.get(f"{root}/studies/{generate_uid()}/metadata", headers=token, timeout=30)
    assert missing.status_code == 404


def _instance(patient_id: str) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"  # Secondary Capture, no pixel data needed here
    ds.SOPInstanceUID, ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid(), generate_uid()
    ds.PatientID, ds.PatientName, ds.Modality = patient_id, "Stow^Test", "OT"
    ds.StudyDate, ds.StudyID, ds.SeriesNumber, ds.InstanceNumber = "20240101", "1", 1, 1
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.1"
    ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
    return ds


def _multipart(datasets: list[Dataset]) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    body = b""
    for ds in datasets:
        buffer = io.BytesIO()
        dcmwrite(buffer, ds, enforce_file_format=True)
        body += f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + buffer.getvalue() + b"\r\n"
    return body + f"--{boundary}--\r\n".encode(), f'multipart/related; type="application/dicom"; boundary={boundary}'


def _sequence(response: dict[str, Any], tag: str) -> list[dict[str, Any]]:
    return list(response.get(tag, {}).get("Value", []))


def test_stow_stores_the_patients_instances_only(root: str, issuer: LocalIssuer) -> None:
    own, other = _instance(PATIENT), _instance(OTHERS[0].patient_id)
    slipped = _instance(PATIENT)  # the token's PatientID, but into another patient's existing study
    slipped.StudyInstanceUID = OTHERS[0].study_uid
    body, content_type = _multipart([own, other, slipped])
    token = patient_token(issuer, "patient/ImagingStudy.c")
    response = httpx.post(f"{root}/studies", content=body, headers={**token, "Content-Type": content_type}, timeout=60)
    assert response.status_code == 202, response.text
    answer = response.json()
    assert [i["00081155"]["Value"][0] for i in _sequence(answer, "00081199")] == [own.SOPInstanceUID]
    failed = {i["00081155"]["Value"][0]: i["00081197"]["Value"] for i in _sequence(answer, "00081198")}
    assert failed == {other.SOPInstanceUID: [0x0124], slipped.SOPInstanceUID: [0x0124]}
    everyone = {"Authorization": f"Bearer {issuer.token(scope='system/ImagingStudy.rs')}"}
    stored = httpx.get(f"{root}/studies?StudyInstanceUID={own.StudyInstanceUID}", headers=everyone, timeout=30)
    refused = httpx.get(f"{root}/studies?StudyInstanceUID={other.StudyInstanceUID}", headers=everyone, timeout=30)
    assert stored.status_code == 200 and refused.status_code == 204
    slipped_in = httpx.get(f"{root}/studies/{OTHERS[0].study_uid}/instances", headers=everyone, timeout=30).json()
    assert slipped.SOPInstanceUID not in {r["00080018"]["Value"][0] for r in slipped_in}

"""Publishing to a FHIR server: a real gateway in front of a real PACS, and a recording FHIR server.

Most tests build the ImagingStudy with a stand-in builder that does its own C-FINDs through the
upstream's query client, so that they check the publishing alone: the conditional PUT and the
Endpoints it references reach the FHIR server after a STOW-RS, the STOW-RS answer never waits for
the FHIR server, a failing or absent server gets the publication later, a restart loses nothing,
and ``dicomweb-gateway publish`` finds studies that reached the PACS some other way. The last
test runs the gateway's own builders end to end and validates what reaches the FHIR server.
"""

from __future__ import annotations

import io
import json
import sys
import time
import types
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest
from dicomweb_client.api import DICOMwebClient
from pydicom.dataset import Dataset
from pydicom.filewriter import dcmwrite
from pynetdicom import AE

from gateway.cli import main
from gateway.demo.pacs import DcmqrscpPacs, LocalPacs, OrthancPacs
from gateway.demo.samples import generate_sample_studies, iter_ct_volume, iter_sample_datasets
from gateway.fhir.publish.publisher import Publisher
from gateway.fhir.publish.upsert import StudyPublisher, dicomweb_roots
from gateway.settings import Settings, load_settings
from gateway.upstreams import Upstream, Upstreams
from tests.conftest import live_gateway
from tests.fhirchecks import validate
from tests.fhirserver import RecordingFhirServer, serving

PUBLIC_URL = "https://gateway.example.org"
FIND = "1.2.840.10008.5.1.4.1.2.2.1"


async def _find(upstream: Upstream, level: str, **keys: str) -> list[Dataset]:
    query = Dataset()
    query.QueryRetrieveLevel = level
    for keyword, value in keys.items():
        setattr(query, keyword, value)
    return [ds async for ds in upstream.client.find(query)]


async def stand_in_imaging_study(
    upstream: Upstream, study_uid: str, *, dicomweb_root: str, version: str
) -> dict[str, Any] | None:
    """A stand-in ImagingStudy builder: the study's series and instance counts, by C-FIND now."""
    series = await _find(upstream, "SERIES", StudyInstanceUID=study_uid, SeriesInstanceUID="", Modality="")
    if not series:
        return None
    instances = 0
    for one in {ds.SeriesInstanceUID: ds for ds in series}.values():
        found = await _find(
            upstream, "IMAGE", StudyInstanceUID=study_uid, SeriesInstanceUID=one.SeriesInstanceUID, SOPInstanceUID=""
        )
        instances += len({ds.SOPInstanceUID for ds in found})
    return {
        "resourceType": "ImagingStudy",
        "id": study_uid,
        "identifier": [{"system": "urn:dicom:uid", "value": f"urn:oid:{study_uid}"}],
        "status": "available",
        "modality": [
            {"system": "http://dicom.nema.org/resources/ontology/DCM", "code": m}
            for m in sorted({ds.Modality for ds in series})
        ],
        "numberOfSeries": len({ds.SeriesInstanceUID for ds in series}),
        "numberOfInstances": instances,
        "endpoint": [{"reference": "Endpoint/test-wado-rs"}],
    }


def stand_in_endpoints(dicomweb_root: str, version: str) -> list[dict[str, Any]]:
    return [{"resourceType": "Endpoint", "id": "test-wado-rs", "status": "active", "address": dicomweb_root}]


def stand_in_publisher(settings: Settings, upstreams: Upstreams) -> Publisher | None:
    assert settings.fhir_publish is not None
    study_publisher = stand_in_study_publisher(settings, upstreams)
    return Publisher(settings.fhir_publish, study_publisher, [u.name for u in settings.upstreams])


def stand_in_study_publisher(settings: Settings, upstreams: Upstreams) -> StudyPublisher:
    assert settings.fhir_publish is not None
    roots = dicomweb_roots(settings)
    return StudyPublisher(settings.fhir_publish, upstreams, roots, stand_in_imaging_study, stand_in_endpoints)


@pytest.fixture(scope="module", params=["orthanc", "dcmqrscp"])
def pacs(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalPacs]:
    factory = OrthancPacs if request.param == "orthanc" else DcmqrscpPacs
    with factory(Path(tmp_path_factory.mktemp(request.param))) as started:
        yield started


def publishing_settings(pacs: LocalPacs, fhir: RecordingFhirServer, queue: Path, **publish: Any) -> Settings:
    settings = load_settings(None, upstream=pacs.upstream, public_url=PUBLIC_URL, fhir_publish_url=fhir.base)
    assert settings.fhir_publish is not None
    values: dict[str, Any] = {"queue_dir": str(queue), "publish_delay": 0.0, "publish_backoff": 0.2}
    return replace(settings, fhir_publish=replace(settings.fhir_publish, **(values | publish)))


def health(root: str) -> dict[str, Any]:
    base = root.removesuffix("/dicom-web")
    with urllib.request.urlopen(f"{base}/health", timeout=10) as response:
        body: dict[str, Any] = json.loads(response.read())
    return body


def publishing_stats(root: str, until: Callable[[dict[str, Any]], bool], timeout: float = 30.0) -> dict[str, Any]:
    """``/health``'s ``fhir_publish``, once `until` holds (the publisher counts after the server answers)."""
    deadline = time.monotonic() + timeout
    stats: dict[str, Any] = health(root)["fhir_publish"]
    while not until(stats):
        assert time.monotonic() < deadline, f"/health never showed it: {stats}"
        time.sleep(0.05)
        stats = health(root)["fhir_publish"]
    return stats


def identifier(study_uid: str) -> str:
    return f"urn:dicom:uid|urn:oid:{study_uid}"


def test_stow_rs_publishes_the_study_as_the_pacs_holds_it(pacs: LocalPacs, tmp_path: Path) -> None:
    volume = list(iter_ct_volume(3, rows=16, columns=16, seed=21))
    study = volume[0].StudyInstanceUID
    with serving(RecordingFhirServer()) as fhir:
        settings = publishing_settings(pacs, fhir, tmp_path / "queue")
        with live_gateway(settings, publisher_factory=stand_in_publisher) as root:
            response = DICOMwebClient(url=root).store_instances(volume[:2])
            assert len(response.ReferencedSOPSequence) == 2
            fhir.wait_for(lambda server: identifier(study) in server.studies)
            DICOMwebClient(url=root).store_instances(volume[2:], study_instance_uid=study)
            fhir.wait_for(lambda server: server.studies[identifier(study)]["numberOfInstances"] == 3)
            stats = publishing_stats(root, lambda stats: stats["published"] == 2)
    # Built from C-FIND after the store: the PACS's count, not the request's.
    first, second = fhir.puts("ImagingStudy")
    assert first.body["numberOfInstances"] == 2
    assert first.raw_query == f"identifier=urn%3Adicom%3Auid%7Curn%3Aoid%3A{study}"
    assert first.headers["content-type"] == "application/fhir+json; fhirVersion=4.0"
    # The Endpoint it references was PUT under its id before the first ImagingStudy, with the public root.
    (endpoint,) = fhir.puts("Endpoint/test-wado-rs")
    assert endpoint.received_at <= first.received_at
    assert endpoint.body["address"] == f"{PUBLIC_URL}/dicom-web"
    assert (stats["published"], stats["queued"], stats["failed"], stats["url"]) == (2, 0, 0, fhir.base)
    assert list((tmp_path / "queue" / "default").iterdir()) == []


def test_the_stow_rs_answer_does_not_wait_for_a_slow_fhir_server(pacs: LocalPacs, tmp_path: Path) -> None:
    volume = list(iter_ct_volume(2, rows=16, columns=16, seed=22))
    study = volume[0].StudyInstanceUID
    with serving(RecordingFhirServer()) as fhir:
        fhir.release.clear()  # the FHIR server takes every request and answers none until told
        settings = publishing_settings(pacs, fhir, tmp_path / "queue")
        with live_gateway(settings, publisher_factory=stand_in_publisher) as root:
            response = DICOMwebClient(url=root).store_instances(volume)
            assert len(response.ReferencedSOPSequence) == 2 and "FailedSOPSequence" not in response
            fhir.wait_for(lambda server: len(server.requests) >= 1)  # the publication is under way ...
            assert fhir.answered == 0  # ... and has had no answer: the STOW-RS answer did not wait for it
            assert health(root)["fhir_publish"]["in_flight"] == 1
            fhir.release.set()
            fhir.wait_for(lambda server: identifier(study) in server.studies)
            assert fhir.studies[identifier(study)]["numberOfInstances"] == 2


def test_a_down_fhir_server_gets_the_publication_later_even_across_a_restart(pacs: LocalPacs, tmp_path: Path) -> None:
    volume = list(iter_ct_volume(2, rows=16, columns=16, seed=23))
    study = volume[0].StudyInstanceUID
    fhir = RecordingFhirServer()  # its port is reserved, nothing listens there yet: connection refused
    settings = publishing_settings(pacs, fhir, tmp_path / "queue", publish_backoff=0.2, publish_backoff_max=0.5)
    with live_gateway(settings, publisher_factory=stand_in_publisher) as root:
        response = DICOMwebClient(url=root).store_instances(volume)
        assert len(response.ReferencedSOPSequence) == 2
        stats = publishing_stats(root, lambda stats: stats["retried"] >= 2)
        assert stats["queued"] == 1 and stats["published"] == 0
        assert "ConnectError" in stats["last_error"] and stats["last_error_at"] is not None
    # Stopped with the study still queued: it is on disk.
    assert [p.name for p in (tmp_path / "queue" / "default").iterdir()] == [f"{study}.json"]

    with serving(fhir):
        fhir.fail_next(2, 503, retry_after="1")  # up, but overloaded at first
        with live_gateway(settings, publisher_factory=stand_in_publisher) as root:
            fhir.wait_for(lambda server: identifier(study) in server.studies)
            publishing_stats(root, lambda stats: stats["published"] == 1 and stats["queued"] == 0)
            assert len(fhir.requests) >= 3
            second, third = fhir.requests[1], fhir.requests[2]
            assert second.received_at - fhir.requests[0].received_at >= 0.95  # Retry-After: 1 honoured
            assert third.received_at - second.received_at >= 0.95
    assert fhir.studies[identifier(study)]["numberOfInstances"] == 2
    assert list((tmp_path / "queue" / "default").iterdir()) == []


def in_pacs(pacs: LocalPacs, ds: Dataset) -> bool:
    """True once the PACS answers a C-FIND for the instance (straight to it, not through the gateway)."""
    ae = AE("CHECKER")
    ae.add_requested_context(FIND)
    assoc = ae.associate(pacs.host, pacs.port, ae_title=pacs.ae_title)
    assert assoc.is_established
    query = Dataset()
    query.QueryRetrieveLevel = "IMAGE"
    query.StudyInstanceUID, query.SeriesInstanceUID, query.SOPInstanceUID = (
        ds.StudyInstanceUID,
        ds.SeriesInstanceUID,
        ds.SOPInstanceUID,
    )
    try:
        return any(status.Status == 0xFF00 for status, _ in assoc.send_c_find(query, FIND))
    finally:
        assoc.release()


def test_a_stow_rs_that_fails_after_storing_some_still_publishes_them(pacs: LocalPacs, tmp_path: Path) -> None:
    first, second = iter_ct_volume(2, rows=64, columns=64, seed=24)
    parts = []
    for ds in (first, second):
        buffer = io.BytesIO()
        dcmwrite(buffer, ds, enforce_file_format=True)
        parts.append(buffer.getvalue())
    head = (
        b"--b\r\nContent-Type: application/dicom\r\n\r\n%s\r\n--b\r\nContent-Type: application/dicom\r\n\r\n" % parts[0]
    )

    def body() -> Iterator[bytes]:
        yield head
        deadline = time.monotonic() + 30
        while not in_pacs(pacs, first):  # the first instance is stored before the body goes over the limit
            assert time.monotonic() < deadline
            time.sleep(0.05)
        yield parts[1] + b"\r\n--b--\r\n"

    with serving(RecordingFhirServer()) as fhir:
        settings = replace(publishing_settings(pacs, fhir, tmp_path / "queue"), max_upload_bytes=len(head) + 100)
        with live_gateway(settings, publisher_factory=stand_in_publisher) as root:
            headers = {"Content-Type": 'multipart/related; type="application/dicom"; boundary=b'}
            response = httpx.post(f"{root}/studies", content=body(), headers=headers, timeout=60)
            assert response.status_code == 413 and "1 instances were stored" in response.json()["detail"]
            fhir.wait_for(lambda server: identifier(first.StudyInstanceUID) in server.studies)
    assert fhir.studies[identifier(first.StudyInstanceUID)]["numberOfInstances"] == 1


def test_publish_command_publishes_studies_that_came_another_way(
    pacs: LocalPacs, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    studies = generate_sample_studies(8, seed=3)
    assert pacs.store(iter_sample_datasets(studies)) > 0  # C-STORE straight into the PACS, not STOW-RS
    in_range = {s.study_uid for s in studies if "20220101" <= s.study_date <= "20231231"}
    assert 0 < len(in_range) < len(studies)
    # The command binds the real builders through gateway.fhir.publish.wiring; here, the stand-in.
    wiring = types.ModuleType("gateway.fhir.publish.wiring")
    wiring.make_study_publisher = stand_in_study_publisher  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "gateway.fhir.publish.wiring", wiring)
    gateway_cache = tmp_path / "cache"  # a running gateway's instance cache: the command leaves it alone
    (gateway_cache / "default" / "instances").mkdir(parents=True)
    (gateway_cache / "default" / "instances" / "cached.dcm").write_bytes(b"DICM")
    config = tmp_path / "gateway.toml"
    config.write_text(
        f'[gateway]\npublic_url = "{PUBLIC_URL}"\ncache_dir = "{gateway_cache}"\n\n'
        f'[fhir]\npublish_version = "R5"\nqueue_dir = "{tmp_path / "unused-queue"}"\npublish_backoff = 0.1\n',
        encoding="utf-8",
    )
    with serving(RecordingFhirServer()) as fhir:
        flags = ["--config", str(config), "--upstream", pacs.upstream, "--fhir-publish-url", fhir.base]
        assert main(["publish", *flags, "--since", "2022-01-01", "--until", "20231231"]) == 0
        assert set(fhir.studies) == {identifier(uid) for uid in in_range}
        assert all(r.headers["content-type"].endswith("fhirVersion=5.0") for r in fhir.requests)
        out = capsys.readouterr().out
        assert f"{len(in_range)} published, 0 failed" in out

        missing = "1.2.826.0.1.3680043.8.498.999"
        fhir.fail_next(1, 503)
        some = sorted(in_range)[0]
        assert main(["publish", *flags, some, missing]) == 1
        out = capsys.readouterr().out
        assert f"published {some}" in out and f"retrying {some}" in out
        assert f"FAILED {missing}: not in the PACS" in out and "1 published, 1 failed" in out
    assert not (tmp_path / "unused-queue").exists()  # the command never touches the gateway's queue
    assert (gateway_cache / "default" / "instances" / "cached.dcm").exists()


@pytest.mark.parametrize("version", ["R4", "R5"])
def test_the_gateway_publishes_its_own_imaging_study_and_endpoints(
    pacs: LocalPacs, tmp_path: Path, version: str
) -> None:
    """End to end with the real builders: what reaches the FHIR server is a valid, fresh ImagingStudy."""
    study = generate_sample_studies(48, seed=5 if version == "R4" else 6)
    two_series = next(s for s in study if len({series.modality for series in s.series}) >= 2)
    datasets = list(iter_sample_datasets([two_series]))
    with serving(RecordingFhirServer()) as fhir:
        settings = publishing_settings(pacs, fhir, tmp_path / "queue", publish_version=version)
        with live_gateway(settings) as root:  # the default publisher: gateway.fhir.publish.wiring
            DICOMwebClient(url=root).store_instances(datasets)
            fhir.wait_for(lambda server: identifier(two_series.study_uid) in server.studies)
    (put,) = fhir.puts("ImagingStudy")
    published = put.body
    validate(published, version)
    assert published["id"] == two_series.study_uid
    modalities = (
        {c["code"] for c in published["modality"]}
        if version == "R4"
        else {c["coding"][0]["code"] for c in published["modality"]}
    )
    assert modalities == {series.modality for series in two_series.series}
    assert published["numberOfSeries"] == len(two_series.series)
    assert sum(s["numberOfInstances"] for s in published["series"]) == len(datasets)
    for reference in published["endpoint"]:
        endpoint = fhir.endpoints[reference["reference"].removeprefix("Endpoint/")]
        validate(endpoint, version)
        assert endpoint["address"] == f"{PUBLIC_URL}/dicom-web"

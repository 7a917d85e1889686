"""WADO-RS through the gateway in front of real PACS, by C-GET and by C-MOVE, driven by dicomweb-client.

Orthanc (capable) and dcmtk's dcmqrscp (strict legacy) hold the same sample studies. Whatever the
PACS and the retrieve method, what comes back through the gateway must be what was loaded: the
same instances, attributes and pixel data, and what Orthanc's own DICOMweb answers.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import httpx
import pytest
from dicomweb_client.api import DICOMwebClient
from pydicom.dataset import Dataset

from gateway.demo.pacs import DcmqrscpPacs, LocalPacs, OrthancPacs, free_port
from gateway.demo.samples import generate_sample_studies, iter_sample_datasets
from gateway.settings import load_settings
from tests.conftest import live_gateway

pytestmark = pytest.mark.upstream

STUDIES = generate_sample_studies(6, seed=3)
LOADED = {str(ds.SOPInstanceUID): ds for ds in iter_sample_datasets(STUDIES)}
STORE_PORT = free_port()
AS_STORED = (("application/dicom", "*"),)


@pytest.fixture(scope="module")
def pacs_pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, LocalPacs]]:
    """Orthanc and dcmqrscp, each holding the sample studies and knowing the gateway's storage SCP."""
    destinations = {"GATEWAY": ("127.0.0.1", STORE_PORT)}
    with contextlib.ExitStack() as stack:
        started: dict[str, LocalPacs] = {}
        for kind, factory in (("orthanc", OrthancPacs), ("dcmqrscp", DcmqrscpPacs)):
            pacs = stack.enter_context(factory(Path(tmp_path_factory.mktemp(kind)), move_destinations=destinations))
            pacs.store(LOADED.values())
            started[kind] = pacs
        yield started


GATEWAYS = [("orthanc", "get"), ("orthanc", "move"), ("dcmqrscp", "get"), ("dcmqrscp", "move")]


@pytest.fixture(scope="module", params=GATEWAYS, ids=[f"{kind}-{method}" for kind, method in GATEWAYS])
def gateway(request: pytest.FixtureRequest, pacs_pool: dict[str, LocalPacs]) -> Iterator[DICOMwebClient]:
    kind, method = request.param
    settings = load_settings(None, upstream=pacs_pool[kind].upstream, retrieve=method, store_port=STORE_PORT)
    settings = replace(settings, upstreams=(replace(settings.default_upstream, profile=kind),))
    with live_gateway(settings) as root:
        client = DICOMwebClient(url=root)
        client.root = root  # type: ignore[attr-defined]
        yield client


def assert_as_loaded(retrieved: Dataset) -> None:
    """Every attribute that was loaded comes back with the same value, pixel data byte for byte."""
    loaded = LOADED[str(retrieved.SOPInstanceUID)]
    assert retrieved.preamble is not None and retrieved.file_meta.MediaStorageSOPInstanceUID == loaded.SOPInstanceUID
    for element in loaded:
        assert element.tag in retrieved, element.keyword
        assert retrieved[element.tag].value == element.value, element.keyword


def test_study_retrieve_brings_every_instance_as_loaded(gateway: DICOMwebClient) -> None:
    for study in STUDIES[:3]:
        retrieved = gateway.retrieve_study(study.study_uid)
        uids = sorted(str(ds.SOPInstanceUID) for ds in retrieved)
        assert uids == sorted(s.instance_uid(n) for s in study.series for n in range(1, s.instance_count + 1))
        for ds in retrieved:
            assert_as_loaded(ds)


def test_series_and_instance_retrieve(gateway: DICOMwebClient) -> None:
    study = STUDIES[1]
    series = study.series[-1]
    retrieved = gateway.retrieve_series(study.study_uid, series.series_uid, media_types=AS_STORED)
    assert sorted(str(ds.SOPInstanceUID) for ds in retrieved) == sorted(
        series.instance_uid(n) for n in range(1, series.instance_count + 1)
    )
    one = gateway.retrieve_instance(study.study_uid, series.series_uid, series.instance_uid(1))
    assert one.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
    assert_as_loaded(one)


def test_same_instances_as_orthanc_native_dicomweb(gateway: DICOMwebClient, pacs_pool: dict[str, LocalPacs]) -> None:
    orthanc = pacs_pool["orthanc"]
    assert isinstance(orthanc, OrthancPacs)
    native = DICOMwebClient(url=orthanc.dicomweb_url)
    study = STUDIES[2]
    ours = {str(ds.SOPInstanceUID): ds for ds in gateway.retrieve_study(study.study_uid)}
    theirs = {str(ds.SOPInstanceUID): ds for ds in native.retrieve_study(study.study_uid)}
    assert ours.keys() == theirs.keys()
    for uid, ds in ours.items():
        assert ds.get("PixelData") == theirs[uid].get("PixelData")


def test_concurrent_retrieves_of_the_same_and_of_different_studies_do_not_mix(gateway: DICOMwebClient) -> None:
    # With C-MOVE all of these arrive at the one storage SCP at once.
    wanted = [STUDIES[0], STUDIES[0], STUDIES[3], STUDIES[4], STUDIES[3], STUDIES[5]]
    with ThreadPoolExecutor(len(wanted)) as executor:
        results = list(executor.map(lambda s: gateway.retrieve_study(s.study_uid, media_types=AS_STORED), wanted))
    for study, retrieved in zip(wanted, results, strict=True):
        assert {str(ds.StudyInstanceUID) for ds in retrieved} == {study.study_uid}
        assert len(retrieved) == study.instance_count


def test_missing_resources_malformed_uids_and_unservable_syntaxes(gateway: DICOMwebClient) -> None:
    root = gateway.root  # type: ignore[attr-defined]
    study = STUDIES[0]
    accept = {"Accept": 'multipart/related; type="application/dicom"'}
    missing = httpx.get(f"{root}/studies/1.2.3.999", headers=accept, timeout=30)
    assert missing.status_code == 404 and "no study" in missing.json()["detail"]
    missing_series = httpx.get(f"{root}/studies/{study.study_uid}/series/1.2.3.999", headers=accept, timeout=30)
    assert missing_series.status_code == 404
    assert httpx.get(f"{root}/studies/1.2.x", headers=accept, timeout=30).status_code == 400
    jpeg = {"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.4.50'}
    assert httpx.get(f"{root}/studies/{study.study_uid}", headers=jpeg, timeout=30).status_code == 406

"""STOW-RS through the gateway into real PACS (Orthanc, dcmqrscp), driven by dicomweb-client.

Each upload is checked four ways: the store response, a C-FIND straight to the PACS, the
instance retrieved straight from the PACS (Orthanc's REST API, a C-GET from dcmqrscp), and the
instance retrieved through the gateway's own WADO-RS, each compared with what was sent: every
attribute and the pixel data, byte for byte.
"""

from __future__ import annotations

import contextlib
import io
import json
import urllib.request
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pydicom
import pytest
from dicomweb_client.api import DICOMwebClient
from pydicom.dataset import Dataset
from pynetdicom import AE, build_role, evt
from requests.exceptions import HTTPError

from gateway.demo.pacs import DcmqrscpPacs, LocalPacs, OrthancPacs
from gateway.demo.samples import generate_sample_studies, iter_ct_volume, iter_sample_datasets
from gateway.settings import load_settings
from tests.conftest import live_gateway

FIND = "1.2.840.10008.5.1.4.1.2.2.1"
GET = "1.2.840.10008.5.1.4.1.2.2.3"
# Measured: Orthanc drops SpecificCharacterSet "ISO_IR 100" when it stores an instance (and may add
# InstanceAvailability); every other attribute and the pixel data come back as they were sent.
ORTHANC_CHANGED = {"InstanceAvailability", "SpecificCharacterSet"}


@pytest.fixture(scope="module", params=["orthanc", "dcmqrscp"])
def pacs(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalPacs]:
    factory = OrthancPacs if request.param == "orthanc" else DcmqrscpPacs
    with factory(Path(tmp_path_factory.mktemp(request.param))) as started:
        yield started


@pytest.fixture(scope="module")
def client(pacs: LocalPacs) -> Iterator[DICOMwebClient]:
    settings = load_settings(None, upstream=pacs.upstream)
    with live_gateway(settings) as root:
        yield DICOMwebClient(url=root)


def find_instances(pacs: LocalPacs, study_uid: str) -> set[str]:
    """SOPInstanceUIDs of the study, by C-FIND straight to the PACS (not through the gateway)."""
    ae = AE("CHECKER")
    ae.add_requested_context(FIND)
    assoc = ae.associate(pacs.host, pacs.port, ae_title=pacs.ae_title)
    assert assoc.is_established
    found: set[str] = set()
    try:
        series_query = Dataset()
        series_query.QueryRetrieveLevel, series_query.StudyInstanceUID, series_query.SeriesInstanceUID = (
            "SERIES",
            study_uid,
            "",
        )
        series = [
            ds.SeriesInstanceUID for status, ds in assoc.send_c_find(series_query, FIND) if status.Status == 0xFF00
        ]
        for series_uid in series:
            query = Dataset()
            query.QueryRetrieveLevel = "IMAGE"
            query.StudyInstanceUID, query.SeriesInstanceUID, query.SOPInstanceUID = study_uid, series_uid, ""
            found |= {ds.SOPInstanceUID for status, ds in assoc.send_c_find(query, FIND) if status.Status == 0xFF00}
    finally:
        assoc.release()
    return found


def retrieve(pacs: LocalPacs, ds: Dataset) -> Dataset:
    """The stored instance, straight from the PACS."""
    if isinstance(pacs, OrthancPacs):
        request = urllib.request.Request(
            f"{pacs.http_url}/tools/lookup", data=ds.SOPInstanceUID.encode(), method="POST"
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            (found,) = json.loads(response.read())
        with urllib.request.urlopen(f"{pacs.http_url}/instances/{found['ID']}/file", timeout=10) as response:
            return pydicom.dcmread(io.BytesIO(response.read()))
    received: list[Dataset] = []

    def keep(event: evt.Event) -> int:
        received.append(event.dataset)
        return 0x0000

    ae = AE("GETTER")
    ae.add_requested_context(GET)
    ae.add_requested_context(ds.SOPClassUID)
    role = build_role(ds.SOPClassUID, scp_role=True)
    assoc = ae.associate(
        pacs.host, pacs.port, ae_title=pacs.ae_title, ext_neg=[role], evt_handlers=[(evt.EVT_C_STORE, keep)]
    )
    assert assoc.is_established
    query = Dataset()
    query.QueryRetrieveLevel = "IMAGE"
    query.StudyInstanceUID, query.SeriesInstanceUID, query.SOPInstanceUID = (
        ds.StudyInstanceUID,
        ds.SeriesInstanceUID,
        ds.SOPInstanceUID,
    )
    try:
        statuses = [status.Status for status, _ in assoc.send_c_get(query, GET)]
    finally:
        assoc.release()
    assert statuses[-1] == 0x0000 and len(received) == 1
    return received[0]


def assert_same(sent: Dataset, stored: Dataset, pacs: LocalPacs) -> None:
    assert stored.PixelData == sent.PixelData
    ignored = ORTHANC_CHANGED if isinstance(pacs, OrthancPacs) else set()
    sent_elements = {e.keyword: e.value for e in sent if e.keyword not in ignored and e.keyword != "PixelData"}
    stored_elements = {e.keyword: e.value for e in stored if e.keyword not in ignored and e.keyword != "PixelData"}
    assert stored_elements == sent_elements


def test_stored_instances_are_in_the_pacs_byte_identical(pacs: LocalPacs, client: DICOMwebClient) -> None:
    volume = list(iter_ct_volume(6, rows=64, columns=64, seed=4))
    response = client.store_instances(volume)
    assert len(response.ReferencedSOPSequence) == 6 and "FailedSOPSequence" not in response
    study = volume[0].StudyInstanceUID
    assert response.RetrieveURL.endswith(f"/studies/{study}")
    assert find_instances(pacs, study) == {ds.SOPInstanceUID for ds in volume}
    for ds in (volume[0], volume[-1]):
        assert_same(ds, retrieve(pacs, ds), pacs)
    # and the gateway's own QIDO-RS finds them, and its WADO-RS gives them back as they were sent
    found = {r["00080018"]["Value"][0] for r in client.search_for_instances(study)}
    assert found == {ds.SOPInstanceUID for ds in volume}
    through_gateway = client.retrieve_study(study, media_types=(("application/dicom", "*"),))
    assert {ds.SOPInstanceUID for ds in through_gateway} == found
    for ds in through_gateway:
        assert_same(next(sent for sent in volume if sent.SOPInstanceUID == ds.SOPInstanceUID), ds, pacs)


def test_storing_into_a_cached_series_refreshes_its_metadata(client: DICOMwebClient) -> None:
    first, second = iter_ct_volume(2, rows=16, columns=16, seed=8)
    client.store_instances([first])
    study, series = first.StudyInstanceUID, first.SeriesInstanceUID
    (cached,) = client.retrieve_series_metadata(study, series)  # the series is now in the gateway's cache
    assert cached["00080018"]["Value"] == [first.SOPInstanceUID]
    client.store_instances([second], study_instance_uid=study)
    refreshed = client.retrieve_series_metadata(study, series)
    assert {m["00080018"]["Value"][0] for m in refreshed} == {first.SOPInstanceUID, second.SOPInstanceUID}


def test_mixed_sop_classes_in_one_request(pacs: LocalPacs, client: DICOMwebClient) -> None:
    datasets = list(iter_sample_datasets(generate_sample_studies(6, seed=7)))
    response = client.store_instances(datasets)
    assert len(response.ReferencedSOPSequence) == len(datasets)
    assert "RetrieveURL" not in response or not response.RetrieveURL  # several studies: Type 2, empty
    for study in {ds.StudyInstanceUID for ds in datasets}:
        assert find_instances(pacs, study) == {ds.SOPInstanceUID for ds in datasets if ds.StudyInstanceUID == study}


def test_wrong_study_is_409_and_nothing_reaches_the_pacs(pacs: LocalPacs, client: DICOMwebClient) -> None:
    (ds,) = iter_ct_volume(1, rows=16, columns=16, seed=5)
    with pytest.raises(HTTPError) as raised:
        client.store_instances([ds], study_instance_uid="1.2.826.0.1.999")
    assert raised.value.response.status_code == 409
    body: dict[str, Any] = raised.value.response.json()
    assert body["00081198"]["Value"][0]["00081197"]["Value"] == [0xC409]
    assert find_instances(pacs, ds.StudyInstanceUID) == set()


def test_oversize_body_is_413(pacs: LocalPacs) -> None:
    settings = load_settings(None, upstream=pacs.upstream)
    with live_gateway(replace(settings, max_upload_bytes=10_000)) as root:
        volume = list(iter_ct_volume(2, rows=64, columns=64, seed=6))
        with pytest.raises(HTTPError) as raised:
            DICOMwebClient(url=root).store_instances(volume)
    assert raised.value.response.status_code == 413
    with contextlib.suppress(Exception):
        assert find_instances(pacs, volume[0].StudyInstanceUID) == set()


def test_pt_series_stored_into_a_ct_study_shows_in_the_very_next_search(
    pacs: LocalPacs, client: DICOMwebClient
) -> None:
    """Requirement G5: ModalitiesInStudy and the counts follow the series the PACS holds now."""
    study = next(s for s in generate_sample_studies(30, seed=12) if s.modalities == ("CT", "PT"))
    datasets = list(iter_sample_datasets([study]))
    ct = [ds for ds in datasets if ds.Modality == "CT"]
    pt = [ds for ds in datasets if ds.Modality == "PT"]
    client.store_instances(ct)
    assert study.study_uid not in {r["0020000D"]["Value"][0] for r in pet_studies(client)}

    client.store_instances(pt, study_instance_uid=study.study_uid)
    gateways = [client]
    with contextlib.ExitStack() as stack:
        if isinstance(pacs, OrthancPacs):
            # Orthanc's profile trusts its aggregates (it computes them at query time): also fresh.
            settings = load_settings(None, upstream=pacs.upstream)
            trusted = replace(settings.default_upstream, profile="orthanc")
            gateways.append(
                DICOMwebClient(url=stack.enter_context(live_gateway(replace(settings, upstreams=(trusted,)))))
            )
        for gateway in gateways:
            (found,) = [r for r in pet_studies(gateway) if r["0020000D"]["Value"][0] == study.study_uid]
            assert found["00080061"]["Value"] == ["CT", "PT"]
            assert found["00201206"]["Value"] == [len(study.series)]
            assert found["00201208"]["Value"] == [len(datasets)]
            series = gateway.search_for_series(study.study_uid)
            counts = {r["0020000E"]["Value"][0]: r["00201209"]["Value"][0] for r in series}
            assert counts == {se.series_uid: se.instance_count for se in study.series}


def pet_studies(client: DICOMwebClient) -> list[dict[str, Any]]:
    return client.search_for_studies(search_filters={"ModalitiesInStudy": "PT"})

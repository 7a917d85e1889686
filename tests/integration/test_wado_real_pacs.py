"""WADO-RS through the gateway in front of real PACS, by C-GET and by C-MOVE, driven by dicomweb-client.

Orthanc (capable) and dcmtk's dcmqrscp (strict legacy) hold the same sample studies. Whatever the
PACS and the retrieve method, what comes back through the gateway must be what was loaded: the
same instances, attributes and pixel data, and what Orthanc's own DICOMweb answers.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import httpx
import numpy as np
import pytest
from dicomweb_client.api import DICOMwebClient
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames
from pydicom.uid import RLELossless, generate_uid

from gateway.demo.pacs import DcmqrscpPacs, LocalPacs, OrthancPacs, free_port
from gateway.demo.samples import generate_sample_studies, iter_sample_datasets
from gateway.settings import load_settings
from tests.conftest import live_gateway
from tests.images import compressed, image, jpeg_baseline, ramp

pytestmark = pytest.mark.upstream

STUDIES = generate_sample_studies(6, seed=3)


def pixel_study() -> list[Dataset]:
    """One series of images whose frames the tests check: multi-frame native, RLE, JPEG baseline."""
    study, series = generate_uid(), generate_uid()
    instances = [
        image(ramp(64, 48, frames=3)),
        compressed(image(ramp(32, 32)), RLELossless),
        jpeg_baseline(np.linspace(0, 255, 40 * 40).reshape(40, 40).astype(np.uint8)),
    ]
    for number, ds in enumerate(instances, start=1):
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = study, series, generate_uid()
        ds.PatientID, ds.InstanceNumber, ds.SeriesNumber = "PIXELS", number, 1
        ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = (
            ds.SOPClassUID,
            ds.SOPInstanceUID,
        )
    return instances


PIXELS = pixel_study()
LOADED = {str(ds.SOPInstanceUID): ds for ds in [*iter_sample_datasets(STUDIES), *PIXELS]}
STORE_PORT = free_port()
AS_STORED = (("application/dicom", "*"),)


@pytest.fixture(scope="module")
def pacs_pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, LocalPacs]]:
    """Orthanc and dcmqrscp, each holding the sample studies and knowing the gateway's storage SCP.

    dcmqrscp takes one compressed transfer syntax at most (its ``+x`` preference), so it gets the
    uncompressed image of the pixel study only.
    """
    destinations = {"GATEWAY": ("127.0.0.1", STORE_PORT)}
    with contextlib.ExitStack() as stack:
        started: dict[str, LocalPacs] = {}
        for kind, factory in (("orthanc", OrthancPacs), ("dcmqrscp", DcmqrscpPacs)):
            pacs = stack.enter_context(factory(Path(tmp_path_factory.mktemp(kind)), move_destinations=destinations))
            pacs.store(ds for ds in LOADED.values() if kind == "orthanc" or ds not in PIXELS[1:])
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
        client.pixels = PIXELS if kind == "orthanc" else PIXELS[:1]  # type: ignore[attr-defined]
        yield client


def assert_as_loaded(retrieved: Dataset) -> None:
    """Every attribute that was loaded comes back with the same value, pixel data byte for byte."""
    loaded = LOADED[str(retrieved.SOPInstanceUID)]
    assert retrieved.preamble is not None and retrieved.file_meta.MediaStorageSOPInstanceUID == loaded.SOPInstanceUID
    for element in loaded:
        assert element.tag in retrieved, element.keyword
        if element.tag != 0x7FE00010 or retrieved.file_meta.TransferSyntaxUID == loaded.file_meta.TransferSyntaxUID:
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


def test_a_series_under_another_study_is_a_404_as_on_orthanc_native(
    gateway: DICOMwebClient, pacs_pool: dict[str, LocalPacs]
) -> None:
    root = gateway.root  # type: ignore[attr-defined]
    mine, other = STUDIES[1], STUDIES[2]
    series = mine.series[0]
    wrong = f"/studies/{other.study_uid}/series/{series.series_uid}"
    native = httpx.get(f"{pacs_pool['orthanc'].dicomweb_url}{wrong}/metadata", timeout=30)
    assert native.status_code == 404
    for path in (f"{wrong}/metadata", wrong, f"{wrong}/instances/{series.instance_uid(1)}/metadata"):
        response = httpx.get(root + path, timeout=30)
        assert response.status_code == 404, (path, response.status_code)
    right = httpx.get(f"{root}/studies/{mine.study_uid}/series/{series.series_uid}/metadata", timeout=30)
    assert right.status_code == 200 and len(right.json()) == series.instance_count


def frames_of(ds: Dataset) -> list[bytes]:
    """The frames of a loaded instance as stored: native frames cut out, or the encapsulated ones."""
    if ds.file_meta.TransferSyntaxUID.is_encapsulated:
        return list(generate_frames(ds.PixelData, number_of_frames=int(ds.get("NumberOfFrames", 1))))
    data = ds.PixelData
    count = int(ds.get("NumberOfFrames", 1))
    size = len(data) // count
    return [data[i * size : (i + 1) * size] for i in range(count)]


def decoded_frames(ds: Dataset) -> list[bytes]:
    """The frames of a loaded instance decoded, as Explicit VR Little Endian carries them."""
    array = ds.pixel_array
    return [frame.tobytes() for frame in (array if int(ds.get("NumberOfFrames", 1)) > 1 else [array])]


def assert_same_pixels(got: bytes, expected: bytes, *, lossy: bool) -> None:
    """Equal bytes; for lossy data, decoders may round differently (Orthanc's and pylibjpeg's)."""
    if not lossy:
        assert got == expected
        return
    difference = np.abs(np.frombuffer(got, np.uint8).astype(int) - np.frombuffer(expected, np.uint8).astype(int))
    assert len(got) == len(expected) and difference.max() <= 3


def test_series_metadata_with_bulk_data_uris_that_resolve(gateway: DICOMwebClient) -> None:
    multiframe = PIXELS[0]
    metadata = gateway.retrieve_series_metadata(multiframe.StudyInstanceUID, multiframe.SeriesInstanceUID)
    pixels = gateway.pixels  # type: ignore[attr-defined]
    assert sorted(m["00080018"]["Value"][0] for m in metadata) == sorted(str(ds.SOPInstanceUID) for ds in pixels)
    for document in metadata:
        loaded = LOADED[document["00080018"]["Value"][0]]
        assert document["00100020"]["Value"] == ["PIXELS"]
        assert document["00280010"]["Value"] == [loaded.Rows] and document["00280011"]["Value"] == [loaded.Columns]
        assert "BulkDataURI" in document["7FE00010"] and "Value" not in document["7FE00010"]
    native = next(m for m in metadata if m["00080018"]["Value"][0] == multiframe.SOPInstanceUID)
    (value,) = gateway.retrieve_bulkdata(native["7FE00010"]["BulkDataURI"])
    assert value == multiframe.PixelData


def test_study_and_instance_metadata_match_orthanc_native(
    gateway: DICOMwebClient, pacs_pool: dict[str, LocalPacs]
) -> None:
    orthanc = pacs_pool["orthanc"]
    assert isinstance(orthanc, OrthancPacs)
    study = STUDIES[0]
    ours = gateway.retrieve_study_metadata(study.study_uid)
    theirs = DICOMwebClient(url=orthanc.dicomweb_url).retrieve_study_metadata(study.study_uid)
    by_uid = {t["00080018"]["Value"][0]: t for t in theirs}
    assert sorted(by_uid) == sorted(o["00080018"]["Value"][0] for o in ours)
    for document in ours:
        native = by_uid[document["00080018"]["Value"][0]]
        for tag, element in native.items():
            if "Value" in element and tag != "00080005":  # Orthanc restates the character set
                assert document[tag].get("Value") == element["Value"], tag
    one = ours[0]
    instance = gateway.retrieve_instance_metadata(
        study.study_uid, one["0020000E"]["Value"][0], one["00080018"]["Value"][0]
    )
    assert instance == one


def test_frames_as_a_viewer_asks_for_them(gateway: DICOMwebClient) -> None:
    for ds in gateway.pixels:  # type: ignore[attr-defined]
        uids = (str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID))
        count = int(ds.get("NumberOfFrames", 1))
        # Uncompressed (dicomweb-client's default): decoded when stored compressed.
        frames = gateway.retrieve_instance_frames(*uids, frame_numbers=list(range(1, count + 1)))
        for frame, expected in zip(frames, decoded_frames(ds), strict=True):
            assert_same_pixels(frame, expected, lossy=ds.get("LossyImageCompression") == "01")
        # As stored, the way OHIF asks; the part says which syntax it is in.
        url = f"{gateway.root}/studies/{uids[0]}/series/{uids[1]}/instances/{uids[2]}/frames/{count}"  # type: ignore[attr-defined]
        response = httpx.get(
            url, headers={"Accept": "multipart/related; type=application/octet-stream; transfer-syntax=*"}
        )
        assert response.status_code == 200
        part = response.content.split(b"\r\n\r\n", 1)[1].rsplit(b"\r\n--", 1)[0]
        syntax = response.content.split(b"transfer-syntax=", 1)[1].split(b"\r\n", 1)[0].decode()
        if syntax == ds.file_meta.TransferSyntaxUID:
            assert part == frames_of(ds)[count - 1]
        else:
            assert_same_pixels(part, decoded_frames(ds)[count - 1], lossy=ds.get("LossyImageCompression") == "01")
    past_the_end = f"{gateway.root}/studies/{uids[0]}/series/{uids[1]}/instances/{uids[2]}/frames/9"  # type: ignore[attr-defined]
    assert httpx.get(past_the_end).status_code == 400


def test_rendered_and_thumbnails(gateway: DICOMwebClient) -> None:
    multiframe = PIXELS[0]
    uids = (str(multiframe.StudyInstanceUID), str(multiframe.SeriesInstanceUID), str(multiframe.SOPInstanceUID))
    jpeg = gateway.retrieve_instance_frames_rendered(*uids, frame_numbers=[2], media_types=("image/jpeg",))
    assert Image.open(io.BytesIO(jpeg)).size == (48, 64)
    root = f"{gateway.root}/studies/{uids[0]}"  # type: ignore[attr-defined]
    png = httpx.get(
        f"{root}/series/{uids[1]}/instances/{uids[2]}/frames/1/rendered?window=2000,4000&viewport=24,32",
        headers={"Accept": "image/png"},
    )
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(png.content)).size == (24, 32)
    for url in (
        f"{root}/thumbnail",
        f"{root}/series/{uids[1]}/thumbnail",
        f"{root}/series/{uids[1]}/instances/{uids[2]}/thumbnail",
    ):
        response = httpx.get(url)
        assert response.status_code == 200 and response.headers["content-type"] == "image/jpeg", url
        assert max(Image.open(io.BytesIO(response.content)).size) <= 128
    series = httpx.get(f"{root}/series/{uids[1]}/rendered")
    pixels = gateway.pixels  # type: ignore[attr-defined]
    assert series.status_code == 200 and series.content.count(b"Content-Type: image/jpeg") == len(pixels)
    assert httpx.get(f"{root}/series/{uids[1]}/rendered?window=abc").status_code == 400


def test_viewer_pass_is_served_from_the_cache_the_second_time(gateway: DICOMwebClient) -> None:
    study = STUDIES[5]
    series = study.series[0]
    health = gateway.root.rsplit("/", 1)[0] + "/health"  # type: ignore[attr-defined]

    def viewer_pass() -> None:
        for document in gateway.retrieve_series_metadata(study.study_uid, series.series_uid):
            if "7FE00010" in document:
                gateway.retrieve_instance_frames(
                    study.study_uid, series.series_uid, document["00080018"]["Value"][0], frame_numbers=[1]
                )

    viewer_pass()
    before = httpx.get(health).json()["caches"]["default"]
    viewer_pass()
    after = httpx.get(health).json()["caches"]["default"]
    assert after["misses"] == before["misses"] and after["admitted"] == before["admitted"]
    assert after["hits"] > before["hits"]

"""STOW-RS against an in-process storage SCP that warns, refuses, rejects and aborts on demand.

Each test checks the standard's answer (status, FailedSOPSequence, WarningReason) and that nothing
is reported stored that the PACS did not acknowledge.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

import httpx
import numpy as np
import pytest
from pydicom import dcmwrite
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEGBaseline8Bit, RLELossless

from gateway.settings import load_settings
from tests.conftest import free_port, live_gateway
from tests.fakestorage import CT_IMAGE_STORAGE, FakeStoragePacs
from tests.images import compressed, image, ramp

STUDY = "1.2.826.0.1.77"
MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"


def ct(
    number: int, *, study: str = STUDY, sop_class: str = CT_IMAGE_STORAGE, syntax: str = ExplicitVRLittleEndian
) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = f"{study}.1.{number}"
    ds.file_meta.TransferSyntaxUID = syntax
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = f"{study}.1.{number}"
    ds.StudyInstanceUID = study
    ds.SeriesInstanceUID = f"{study}.1"
    ds.PatientID = "P1"
    ds.Modality = "CT"
    ds.InstanceNumber = number
    if syntax != JPEGBaseline8Bit:
        ds.Rows = ds.Columns = 8
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.PixelData = bytes([number]) * 128
    return ds


def part10(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


def multipart(parts: list[bytes], boundary: str = "gateway-test") -> tuple[bytes, dict[str, str]]:
    body = b"".join(b"--%s\r\nContent-Type: application/dicom\r\n\r\n%s\r\n" % (boundary.encode(), p) for p in parts)
    body += b"--%s--\r\n" % boundary.encode()
    return body, {"Content-Type": f'multipart/related; type="application/dicom"; boundary="{boundary}"'}


def store(root: str, datasets: list[Dataset], path: str = "/studies", **kwargs: Any) -> httpx.Response:
    body, headers = multipart([part10(ds) for ds in datasets])
    return httpx.post(f"{root}{path}", content=body, headers=headers, timeout=30, **kwargs)


@contextmanager
def gateway(upstream: str, **options: Any) -> Iterator[str]:
    settings = load_settings(None, upstream=upstream)
    gateway_options = {k: options.pop(k) for k in ("max_upload_bytes",) if k in options}
    settings = replace(settings, upstreams=(replace(settings.default_upstream, **options),), **gateway_options)
    with live_gateway(settings) as root:
        yield root


def values(body: dict[str, Any], sequence: str, tag: str) -> list[Any]:
    return [
        item[tag]["Value"][0] if "Value" in item.get(tag, {}) else None
        for item in body.get(sequence, {}).get("Value", [])
    ]


def test_all_stored_is_200_with_retrieve_urls_and_the_pacs_has_the_same_data() -> None:
    datasets = [ct(n) for n in (1, 2, 3)]
    with FakeStoragePacs() as pacs, gateway(pacs.upstream) as root:
        response = store(root, datasets)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/dicom+json"
    body = response.json()
    assert body["00081190"]["Value"] == [f"{root}/studies/{STUDY}"]
    assert values(body, "00081199", "00081155") == [ds.SOPInstanceUID for ds in datasets]
    assert values(body, "00081199", "00081190") == [
        f"{root}/studies/{STUDY}/series/{STUDY}.1/instances/{ds.SOPInstanceUID}" for ds in datasets
    ]
    assert "00081198" not in body
    for ds in datasets:
        assert pacs.stored[ds.SOPInstanceUID].PixelData == ds.PixelData


def test_warnings_are_reported_as_warnings_not_success() -> None:
    datasets = [ct(n) for n in (1, 2, 3)]
    statuses = {datasets[1].SOPInstanceUID: 0xB000, datasets[2].SOPInstanceUID: 0xB007}
    with FakeStoragePacs(statuses=statuses) as pacs, gateway(pacs.upstream) as root:
        response = store(root, datasets)
    assert response.status_code == 202
    assert values(response.json(), "00081199", "00081196") == [None, 0xB000, 0xB007]
    assert len(pacs.stored) == 3


def test_out_of_resources_fails_that_instance_and_all_refused_is_409() -> None:
    datasets = [ct(n) for n in (1, 2)]
    with FakeStoragePacs(statuses={datasets[0].SOPInstanceUID: 0xA700}) as pacs, gateway(pacs.upstream) as root:
        some = store(root, datasets)
        pacs.statuses[datasets[1].SOPInstanceUID] = 0xA701
        none = store(root, datasets)
    assert some.status_code == 202
    assert values(some.json(), "00081198", "00081155") == [datasets[0].SOPInstanceUID]
    assert values(some.json(), "00081198", "00081197") == [0xA700]
    assert values(some.json(), "00081199", "00081155") == [datasets[1].SOPInstanceUID]
    assert none.status_code == 409
    assert values(none.json(), "00081198", "00081197") == [0xA700, 0xA701]
    assert "00081199" not in none.json()


def test_instance_of_another_study_is_not_stored() -> None:
    mine, other = ct(1), ct(2, study="1.2.826.0.1.78")
    with FakeStoragePacs() as pacs, gateway(pacs.upstream) as root:
        mixed = store(root, [mine, other], path=f"/studies/{STUDY}")
        wrong = store(root, [other], path=f"/studies/{STUDY}")
    assert mixed.status_code == 202 and wrong.status_code == 409
    assert values(mixed.json(), "00081198", "00081197") == [0xC409]
    assert values(mixed.json(), "00081199", "00081155") == [mine.SOPInstanceUID]
    assert mixed.json()["00081190"]["Value"] == [f"{root}/studies/{STUDY}"]
    assert pacs.received == [mine.SOPInstanceUID]


def test_a_part_that_is_not_dicom_is_reported_not_stored() -> None:
    good = ct(1)
    with FakeStoragePacs() as pacs, gateway(pacs.upstream) as root:
        body, headers = multipart([b"%PDF-1.4 not dicom", part10(good)])
        response = httpx.post(f"{root}/studies", content=body, headers=headers, timeout=30)
        body, headers = multipart([b"just text"])
        nothing = httpx.post(f"{root}/studies", content=body, headers=headers, timeout=30)
    assert response.status_code == 202
    assert response.json()["0008119A"]["Value"] == [{"00081197": {"vr": "US", "Value": [0xC000]}}]
    assert values(response.json(), "00081199", "00081155") == [good.SOPInstanceUID]
    assert nothing.status_code == 409 and pacs.received == [good.SOPInstanceUID]


def test_association_dropped_mid_upload_fails_only_the_unacknowledged_instance() -> None:
    datasets = [ct(n) for n in (1, 2, 3, 4)]
    with FakeStoragePacs(abort_on={datasets[1].SOPInstanceUID: -1}) as pacs, gateway(pacs.upstream) as root:
        response = store(root, datasets)
    assert response.status_code == 202
    body = response.json()
    assert values(body, "00081198", "00081155") == [datasets[1].SOPInstanceUID]
    assert values(body, "00081198", "00081197") == [0x0110]
    assert values(body, "00081199", "00081155") == [datasets[n].SOPInstanceUID for n in (0, 2, 3)]
    assert set(pacs.stored) == {datasets[n].SOPInstanceUID for n in (0, 2, 3)}
    assert pacs.associations >= 2  # the rest went on over a new association


def test_association_dropped_once_is_sent_again_and_nothing_is_lost() -> None:
    datasets = [ct(n) for n in (1, 2, 3)]
    with FakeStoragePacs(abort_on={datasets[1].SOPInstanceUID: 1}) as pacs, gateway(pacs.upstream) as root:
        response = store(root, datasets)
    assert response.status_code == 200
    assert pacs.received.count(datasets[1].SOPInstanceUID) == 2
    assert set(pacs.stored) == {ds.SOPInstanceUID for ds in datasets}


def test_rejected_association_is_a_502_and_unreachable_pacs_too() -> None:
    with FakeStoragePacs() as pacs:
        pacs._ae.require_called_aet = True
        with gateway(f"WRONGAET@127.0.0.1:{pacs.port}") as root:
            rejected = store(root, [ct(1)])
    assert rejected.status_code == 502 and "rejected" in rejected.json()["detail"]
    with gateway(f"NOBODY@127.0.0.1:{free_port()}", connect_timeout=1.0) as root:
        unreachable = store(root, [ct(1)])
    assert unreachable.status_code == 502


def test_sop_class_and_lossy_syntax_the_pacs_refuses_fail_with_their_reasons() -> None:
    mr = ct(1, sop_class=MR_IMAGE_STORAGE)
    lossy = ct(2, syntax=JPEGBaseline8Bit)
    fine = ct(3)
    with FakeStoragePacs() as pacs, gateway(pacs.upstream) as root:
        response = store(root, [mr, lossy, fine])
    assert response.status_code == 202
    assert values(response.json(), "00081198", "00081197") == [0x0122, 0xC122]
    assert pacs.received == [fine.SOPInstanceUID]


def test_lossless_compressed_data_is_decoded_when_the_pacs_takes_only_uncompressed() -> None:
    rle = compressed(image(ramp(16, 16)), RLELossless)
    rle.StudyInstanceUID = STUDY
    expected = rle.pixel_array.copy()
    with (
        FakeStoragePacs(sop_classes=(rle.SOPClassUID,), transfer_syntaxes=(ExplicitVRLittleEndian,)) as pacs,
        gateway(pacs.upstream) as root,
    ):
        response = store(root, [rle])
    assert response.status_code == 200
    # The same instance, only decoded: same SOP Instance UID, same pixels.
    received = pacs.stored[rle.SOPInstanceUID]
    assert received.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert np.array_equal(received.pixel_array, expected)


def test_uncompressed_data_is_converted_losslessly_when_the_pacs_wants_another_syntax() -> None:
    explicit = ct(1)
    with (
        FakeStoragePacs(transfer_syntaxes=(ImplicitVRLittleEndian,)) as pacs,
        gateway(pacs.upstream) as root,
    ):
        response = store(root, [explicit])
    assert response.status_code == 200
    received = pacs.stored[explicit.SOPInstanceUID]
    assert received.file_meta.TransferSyntaxUID == ImplicitVRLittleEndian
    assert received.PixelData == explicit.PixelData


def test_parallel_stores_stay_within_the_storage_pool() -> None:
    datasets = [ct(n) for n in range(1, 13)]
    with (
        FakeStoragePacs() as pacs,
        gateway(pacs.upstream, store_concurrency=3, max_store_associations=3) as root,
    ):
        first = store(root, datasets[:6])
        second = store(root, datasets[6:])
        health = httpx.get(f"{root.rsplit('/', 1)[0]}/health", timeout=10).json()
        pools = [pool for pool in health["pools"] if pool["kind"] == "store"]
    assert first.status_code == second.status_code == 200
    assert len(pacs.stored) == 12
    assert pacs.associations <= 3 + 1  # reused by the second request; +1: the C-GET pool's attempt to warm up
    assert pools[0]["in_use"] == 0 and pools[0]["total"] <= 3


def test_bodies_too_large_are_413_before_anything_is_stored() -> None:
    datasets = [ct(n) for n in (1, 2)]
    body, headers = multipart([part10(ds) for ds in datasets])

    def chunked() -> Iterator[bytes]:
        yield body[:100]
        yield body[100:]

    with FakeStoragePacs() as pacs, gateway(pacs.upstream, max_upload_bytes=len(body) - 1) as root:
        declared = httpx.post(f"{root}/studies", content=body, headers=headers, timeout=30)
        streamed = httpx.post(f"{root}/studies", content=chunked(), headers=headers, timeout=30)
    assert declared.status_code == streamed.status_code == 413
    assert "max_upload_bytes" in declared.json()["detail"]
    assert pacs.received == []


@pytest.mark.parametrize(
    ("content", "content_type", "status"),
    [
        (b"--b\r\n\r\nnever closed", 'multipart/related; type="application/dicom"; boundary=b', 400),
        (b"--b--", 'multipart/related; type="application/dicom"; boundary=b', 400),
        (b"{}", "application/json", 415),
        (b"--b--", 'multipart/related; type="application/dicom+json"; boundary=b', 415),
    ],
)
def test_bad_bodies(content: bytes, content_type: str, status: int) -> None:
    with FakeStoragePacs() as pacs, gateway(pacs.upstream) as root:
        response = httpx.post(f"{root}/studies", content=content, headers={"Content-Type": content_type}, timeout=30)
    assert response.status_code == status
    assert response.json()["detail"]
    assert pacs.received == []


def test_body_cut_short_after_stored_parts_reports_them() -> None:
    good = ct(1)
    body, headers = multipart([part10(good)])
    truncated = (
        body.removesuffix(b"--gateway-test--\r\n") + b"--gateway-test\r\nContent-Type: application/dicom\r\n\r\nDI"
    )
    with FakeStoragePacs() as pacs, gateway(pacs.upstream) as root:
        response = httpx.post(f"{root}/studies", content=truncated, headers=headers, timeout=30)
    assert response.status_code == 202
    assert values(response.json(), "00081199", "00081155") == [good.SOPInstanceUID]
    assert response.json()["0008119A"]["Value"] == [{"00081197": {"vr": "US", "Value": [0xC000]}}]


def test_single_instance_as_application_dicom() -> None:
    good = ct(1)
    with FakeStoragePacs() as pacs, gateway(pacs.upstream) as root:
        response = httpx.post(
            f"{root}/studies", content=part10(good), headers={"Content-Type": "application/dicom"}, timeout=30
        )
    assert response.status_code == 200 and list(pacs.stored) == [good.SOPInstanceUID]


def test_a_new_kind_of_instance_gets_an_association_that_proposes_it_once() -> None:
    nm = "1.2.840.10008.5.1.4.1.1.20"  # NM Image Storage: not among the default contexts
    with FakeStoragePacs(sop_classes=(CT_IMAGE_STORAGE, nm)) as pacs, gateway(pacs.upstream) as root:
        assert store(root, [ct(1)]).status_code == 200
        first = pacs.associations
        assert store(root, [ct(2, sop_class=nm), ct(3)]).status_code == 200
        assert pacs.associations == first + 1  # the CT association could not carry NM
        assert store(root, [ct(4, sop_class=nm), ct(5)]).status_code == 200
        assert pacs.associations == first + 1  # and the new one carries both from now on
    assert len(pacs.stored) == 5

"""WADO-RS retrieve faults a real PACS won't produce on demand, against the in-process fake PACS.

Whatever goes wrong, the client gets a prompt and precise answer (never a short answer that looks
complete), nothing hangs, and the retrieve pool is intact afterwards.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace

import httpx
import pytest
from pydicom.dataset import Dataset

from tests.conftest import live_gateway
from tests.fakepacs import FakePacs, Fault
from tests.integration.test_faults import instance, settings_for

STUDY = "1.2.826.0.1.1"
CT = [instance(1, 1, n, "CT") for n in range(1, 5)]
ACCEPT = {"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'}


def mr(number: int) -> Dataset:
    """An instance of a SOP class the fake PACS cannot send (its sub-operation fails)."""
    ds = instance(1, 1, number, "MR")
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.4"
    return ds


@contextmanager
def gateway(pacs: FakePacs, **upstream_options: object) -> Iterator[str]:
    settings = settings_for(pacs.upstream, **upstream_options)
    with live_gateway(replace(settings, cache_max_bytes=10_000_000)) as root:
        yield root


def retrieve_pool(root: str) -> dict[str, int]:
    pools = httpx.get(f"{root.rsplit('/', 1)[0]}/health", timeout=10).json()["pools"]
    (pool,) = [p for p in pools if p["kind"] == "retrieve"]
    return dict(pool)


def part_count(body: bytes) -> int:
    return body.count(b"\r\nContent-Type: application/dicom")


def test_abort_mid_retrieve_breaks_the_answer_and_the_pool_recovers() -> None:
    with FakePacs(CT, fault=Fault("abort", after=2)) as pacs, gateway(pacs) as root:
        with pytest.raises(httpx.RemoteProtocolError):
            httpx.get(f"{root}/studies/{STUDY}", headers=ACCEPT, timeout=10)
        pacs.fault = None
        response = httpx.get(f"{root}/studies/{STUDY}", headers=ACCEPT, timeout=10)
        assert response.status_code == 200 and part_count(response.content) == 4
        assert retrieve_pool(root)["in_use"] == 0


def test_a_pacs_that_hangs_is_a_prompt_504() -> None:
    with FakePacs(CT, fault=Fault("hang", after=0, seconds=4)) as pacs, gateway(pacs, dimse_timeout=1.0) as root:
        started = time.monotonic()
        response = httpx.get(f"{root}/studies/{STUDY}", headers=ACCEPT, timeout=10)
        assert response.status_code == 504 and time.monotonic() - started < 4
        assert retrieve_pool(root)["in_use"] == 0


def test_failure_status_before_any_instance_is_a_502_with_the_status() -> None:
    with FakePacs(CT, fault=Fault("status", after=0, status=0xA702)) as pacs, gateway(pacs) as root:
        response = httpx.get(f"{root}/studies/{STUDY}", headers=ACCEPT, timeout=10)
    assert response.status_code == 502
    assert response.json()["dimseStatus"] == "0xA702"


def test_failed_sub_operation_before_the_first_instance_is_a_206_with_a_warning() -> None:
    with FakePacs([mr(9), *CT]) as pacs, gateway(pacs) as root:
        response = httpx.get(f"{root}/studies/{STUDY}", headers=ACCEPT, timeout=10)
    assert response.status_code == 206
    assert "could not be retrieved" in response.headers["warning"]
    assert part_count(response.content) == 4


def test_failed_sub_operation_after_the_answer_started_breaks_it() -> None:
    with FakePacs([*CT, mr(9)]) as pacs, gateway(pacs) as root:
        with pytest.raises(httpx.RemoteProtocolError):
            httpx.get(f"{root}/studies/{STUDY}", headers=ACCEPT, timeout=10)


def test_nothing_retrievable_is_a_404() -> None:
    with FakePacs(CT) as pacs, gateway(pacs) as root:
        response = httpx.get(f"{root}/studies/1.2.826.0.1.77", headers=ACCEPT, timeout=10)
    assert response.status_code == 404


def test_client_hanging_up_cancels_the_retrieve_and_frees_the_association() -> None:
    many = [instance(1, 1, n, "CT") for n in range(1, 41)]
    with FakePacs(many, delay=0.05) as pacs, gateway(pacs) as root:
        with httpx.stream("GET", f"{root}/studies/{STUDY}", headers=ACCEPT, timeout=10) as response:
            assert response.status_code == 200
            next(response.iter_raw())
        deadline = time.monotonic() + 5
        while (pacs.cancels == 0 or retrieve_pool(root)["in_use"]) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert pacs.cancels == 1
        assert retrieve_pool(root)["in_use"] == 0
        response = httpx.get(f"{root}/studies/{STUDY}/series/{STUDY}.1/instances/{STUDY}.1.3", headers=ACCEPT)
        assert response.status_code == 200 and part_count(response.content) == 1

"""Faults a real PACS won't produce on demand, against the in-process fake PACS.

Each test checks that the client gets a prompt, precise error, and that the gateway recovers.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import replace

import httpx
import orjson
import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE

from gateway.settings import Settings, load_settings
from tests.conftest import free_port, live_gateway
from tests.fakepacs import FakePacs, Fault


def instance(study: int, series: int, number: int, modality: str) -> Dataset:
    ds = Dataset()
    ds.StudyInstanceUID = f"1.2.826.0.1.{study}"
    ds.SeriesInstanceUID = f"1.2.826.0.1.{study}.{series}"
    ds.SOPInstanceUID = f"1.2.826.0.1.{study}.{series}.{number}"
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.Modality = modality
    ds.PatientName = f"Patient^{study}"
    ds.PatientID = f"P{study}"
    ds.StudyDate = f"2020{study % 12 + 1:02d}01"
    ds.SeriesNumber = series
    ds.InstanceNumber = number
    return ds


INSTANCES = [instance(st, se, n, "CT" if se == 1 else "PT") for st in range(1, 9) for se in (1, 2) for n in (1, 2)]


def settings_for(upstream: str, **upstream_options: object) -> Settings:
    settings = load_settings(None, upstream=upstream)
    tuned = replace(settings.default_upstream, **{"profile": "legacy", **upstream_options})
    return replace(settings, upstreams=(tuned,))


@contextmanager
def gateway(pacs: FakePacs, **upstream_options: object) -> Iterator[str]:
    with live_gateway(settings_for(pacs.upstream, **upstream_options)) as root:
        yield root


def test_failure_status_after_some_results_is_a_502_not_a_short_answer() -> None:
    with FakePacs(INSTANCES, fault=Fault("status", after=3, status=0xA700)) as pacs, gateway(pacs) as root:
        response = httpx.get(f"{root}/studies", timeout=10)
    assert response.status_code == 502
    body = response.json()
    assert body["dimseStatus"] == "0xA700" and "out of resources" in body["detail"]


def test_hanging_pacs_is_a_prompt_504() -> None:
    with FakePacs(INSTANCES, fault=Fault("hang", after=1, seconds=4)) as pacs, gateway(pacs, dimse_timeout=1.0) as root:
        started = time.monotonic()
        response = httpx.get(f"{root}/studies", timeout=10)
        elapsed = time.monotonic() - started
    assert response.status_code == 504
    assert elapsed < 3


def test_aborting_pacs_is_a_502() -> None:
    with FakePacs(INSTANCES, fault=Fault("abort", after=2)) as pacs, gateway(pacs) as root:
        response = httpx.get(f"{root}/studies", timeout=10)
    assert response.status_code == 502
    assert "aborted" in response.json()["detail"]


def test_unreachable_pacs_is_a_prompt_502_and_the_gateway_recovers_when_it_comes_back() -> None:
    port = free_port()
    upstream = f"FAKEPACS@127.0.0.1:{port}"
    with live_gateway(settings_for(upstream, connect_timeout=1.0)) as root:
        started = time.monotonic()
        response = httpx.get(f"{root}/studies", timeout=10)
        assert response.status_code == 502 and time.monotonic() - started < 3
        assert "cannot open an association" in response.json()["detail"]
        assert httpx.get(f"{root.rsplit('/', 1)[0]}/ready", timeout=10).status_code == 503
        with FakePacs(INSTANCES, port=port):
            response = httpx.get(f"{root}/studies", timeout=10)
            assert response.status_code == 200 and len(response.json()) == 8
            assert httpx.get(f"{root.rsplit('/', 1)[0]}/ready", timeout=10).status_code == 200


def test_rejected_association_is_a_502_naming_the_ae_titles() -> None:
    with FakePacs(INSTANCES) as pacs:
        pacs._ae.require_called_aet = True
        with live_gateway(settings_for(f"WRONGAET@127.0.0.1:{pacs.port}")) as root:
            response = httpx.get(f"{root}/studies", timeout=10)
    assert response.status_code == 502 and "rejected" in response.json()["detail"]


def test_busy_pool_is_a_503_with_retry_after() -> None:
    fault = Fault("hang", after=0, seconds=3)
    with (
        FakePacs(INSTANCES, fault=fault) as pacs,
        gateway(pacs, max_associations=1, acquire_timeout=0.5, dimse_timeout=2.5) as root,
    ):
        with ThreadPoolExecutor(2) as executor:
            slow = executor.submit(httpx.get, f"{root}/studies", timeout=10)
            time.sleep(0.5)
            busy = httpx.get(f"{root}/studies?PatientID=P1", timeout=10)
            assert slow.result().status_code == 504
    assert busy.status_code == 503
    assert busy.headers["Retry-After"] == "1"


def test_pool_reuses_associations_and_never_exceeds_its_size() -> None:
    # Sixteen fan-outs of up to four C-FINDs each may queue 64 acquires: let them all wait, this is
    # about deadlocks, not overload (tests/integration/test_overload.py).
    with FakePacs(INSTANCES) as pacs, gateway(pacs, max_associations=2, max_waiting=64) as root:
        for _ in range(10):
            assert httpx.get(f"{root}/studies/1.2.826.0.1.1/series", timeout=10).status_code == 200
        # Series counts are computed on a second association; one more is the C-GET association
        # the gateway opens ahead of need (WADO-RS).
        assert pacs.associations <= 2 + 1
        with ThreadPoolExecutor(16) as executor:
            # Fan-out queries nest C-FINDs (studies -> series -> instance counts): with only two
            # associations for sixteen concurrent requests, this deadlocks if anything holds an
            # association while it waits for another.
            futures = [executor.submit(httpx.get, f"{root}/series?Modality=PT", timeout=30) for _ in range(16)]
            responses = [f.result() for f in futures]
        assert all(r.status_code == 200 and len(r.json()) == 8 for r in responses)
        health = httpx.get(f"{root.rsplit('/', 1)[0]}/health", timeout=10).json()
    (pool,) = [p for p in health["pools"] if p["kind"] == "query"]
    assert pool["total"] <= 2 and pool["in_use"] == 0
    assert pacs.associations <= 2 + 1 + pool["destroyed"]


def test_limit_cancels_the_upstream_query() -> None:
    many = [instance(st, 1, 1, "CT") for st in range(1, 200)]
    with FakePacs(many) as pacs, gateway(pacs) as root:
        response = httpx.get(f"{root}/studies?limit=3&offset=2", timeout=10)
        assert [s["00100020"]["Value"][0] for s in response.json()] == ["P3", "P4", "P5"]
        # the association is healthy and reused after the C-CANCEL
        assert httpx.get(f"{root}/studies?PatientID=P7", timeout=10).json()[0]["00100020"]["Value"] == ["P7"]


@pytest.mark.parametrize(
    ("query", "status"),
    [
        ("/studies?StudyDate=2020-13-01", 400),
        ("/studies?NoSuchKey=1", 400),
        ("/studies?limit=-5", 400),
        ("/studies/not.a.uid!/series", 400),
        ("/studies?PatientName=a%5Cb", 400),
        ("/nothing-here", 404),
    ],
)
def test_bad_requests_never_reach_the_pacs(query: str, status: int) -> None:
    with FakePacs(INSTANCES) as pacs, gateway(pacs) as root:
        response = httpx.get(f"{root}{query}", timeout=10)
    assert response.status_code == status
    assert response.headers["content-type"].startswith("application/json")
    assert response.json()["detail"]
    assert pacs.received == []


def test_xml_only_client_gets_406() -> None:
    with FakePacs(INSTANCES) as pacs, gateway(pacs) as root:
        response = httpx.get(f"{root}/studies", headers={"Accept": 'multipart/related; type="application/dicom+xml"'})
    assert response.status_code == 406


def test_failure_after_the_status_line_breaks_the_body_instead_of_shortening_it() -> None:
    settings = settings_for("unused@127.0.0.1:1")
    # Results are completed and matched 50 at a time: the first 50 go out before the failure.
    studies = [instance(number, 1, 1, "CT") for number in range(1, 61)]
    with FakePacs(studies, fault=Fault("status", after=55)) as pacs:
        upstream = replace(settings.default_upstream, host="127.0.0.1", port=pacs.port, ae_title=pacs.ae_title)
        with live_gateway(replace(settings, upstreams=(upstream,), prefetch_results=2)) as root:
            with pytest.raises(httpx.HTTPError):
                httpx.get(f"{root}/studies", timeout=10).json()


def test_max_results_caps_the_answer_with_a_warning() -> None:
    settings = settings_for("unused@127.0.0.1:1")
    with FakePacs(INSTANCES) as pacs:
        upstream = replace(settings.default_upstream, host="127.0.0.1", port=pacs.port, ae_title=pacs.ae_title)
        with live_gateway(replace(settings, upstreams=(upstream,), max_results=5)) as root:
            capped = httpx.get(f"{root}/studies", timeout=10)
            smaller = httpx.get(f"{root}/studies?limit=3", timeout=10)
    assert len(capped.json()) == 5
    assert "The number of results exceeded the maximum" in capped.headers["Warning"]
    assert len(smaller.json()) == 3 and "Warning" not in smaller.headers


def test_large_answers_are_streamed_in_pacs_order() -> None:
    studies = []
    for number in range(1, 2501):
        ds = instance(number, 1, 1, "CT")
        ds.ModalitiesInStudy = "CT"
        ds.NumberOfStudyRelatedSeries = 1
        ds.NumberOfStudyRelatedInstances = 1
        studies.append(ds)
    with FakePacs(studies) as pacs, gateway(pacs, profile="orthanc") as root:
        with httpx.stream("GET", f"{root}/studies", timeout=60) as response:
            assert response.headers.get("transfer-encoding") == "chunked"
            chunks = list(response.iter_raw())
    assert len(chunks) > 1
    results = orjson.loads(b"".join(chunks))
    assert [r["00100020"]["Value"][0] for r in results] == [f"P{n}" for n in range(1, 2501)]


def test_pacs_at_its_association_limit_is_a_503() -> None:
    with FakePacs(INSTANCES) as pacs:
        pacs._ae.maximum_associations = 1
        blocker = AE("BLOCKER")
        blocker.add_requested_context("1.2.840.10008.1.1")
        held = blocker.associate("127.0.0.1", pacs.port, ae_title=pacs.ae_title)
        try:
            with gateway(pacs) as root:
                response = httpx.get(f"{root}/studies", timeout=10)
        finally:
            held.release()
    assert response.status_code == 503
    assert "Local limit exceeded" in response.json()["detail"]


def test_client_going_away_cancels_the_upstream_query_and_frees_the_association() -> None:
    studies = []
    for number in range(1, 1001):
        ds = instance(number, 1, 1, "CT")
        ds.ModalitiesInStudy = "CT"
        ds.NumberOfStudyRelatedSeries = 1
        ds.NumberOfStudyRelatedInstances = 1
        studies.append(ds)
    with FakePacs(studies, delay=0.005) as pacs, gateway(pacs, profile="orthanc") as root:
        with httpx.stream("GET", f"{root}/studies", timeout=30) as response:
            assert response.status_code == 200
            next(response.iter_raw())  # the answer has started; now hang up
        deadline = time.monotonic() + 10
        while pacs.cancels == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert pacs.cancels == 1
        pools = httpx.get(f"{root.rsplit('/', 1)[0]}/health", timeout=10).json()["pools"]
        (pool,) = [p for p in pools if p["kind"] == "query"]
        assert pool["in_use"] == 0
        # and the gateway still answers
        assert httpx.get(f"{root}/studies?PatientID=P7", timeout=10).status_code == 200

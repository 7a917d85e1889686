"""A PACS that keeps the connection open but stops reading: every wait ends within its timeout.

Orthanc sits behind a proxy (:mod:`tests.stallproxy`) that forwards a few PDUs of each connection
and then reads nothing more. A C-STORE of a 32 MB instance then fills the socket buffers and the
gateway's send blocks; a C-FIND or C-GET request is never read. Each must end as documented (the
instance fails with 0x0110, the request is a 504), within ``dimse_timeout`` and a margin, and free
its association slot and worker; uploads to a healthy PACS meanwhile go through.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import httpx
import numpy as np
import pytest
from pydicom.uid import generate_uid

from gateway.demo.pacs import OrthancPacs
from gateway.settings import Settings, load_settings, parse_upstream_address
from tests.conftest import live_gateway
from tests.images import image, write
from tests.stallproxy import StallingProxy

pytestmark = pytest.mark.upstream

DIMSE_TIMEOUT = 2.0
BOUND = DIMSE_TIMEOUT * 2 + 8  # the timeout, the abort that follows it, and a loaded machine's margin
STOW_TYPE = 'multipart/related; type="application/dicom"; boundary=B'


def stow_body(directory: Path, megabytes: int, name: str) -> bytes:
    side = int((megabytes * 1024 * 1024 / 2) ** 0.5)
    ds = image(np.zeros((side, side), dtype=np.uint16))
    ds.SOPInstanceUID, ds.PatientID = generate_uid(), "STALL"
    part = write(ds, directory, name).read_bytes()
    return b"--B\r\nContent-Type: application/dicom\r\n\r\n" + part + b"\r\n--B--\r\n"


def post(url: str, body: bytes) -> tuple[httpx.Response, float, float]:
    """The response, when it came (monotonic), and how long it took."""
    started = time.monotonic()
    response = httpx.post(
        url, content=body, headers={"Content-Type": STOW_TYPE, "Accept": "application/dicom+json"}, timeout=120
    )
    return response, time.monotonic(), time.monotonic() - started


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OrthancPacs]:
    """The PACS that will stop reading (behind the proxy)."""
    with OrthancPacs(Path(tmp_path_factory.mktemp("orthanc"))) as pacs:
        yield pacs


@pytest.fixture(scope="module")
def healthy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OrthancPacs]:
    """Another PACS, reached directly: Orthanc's few DICOM threads are all held by the stalled ones."""
    with OrthancPacs(Path(tmp_path_factory.mktemp("healthy")), ae_title="HEALTHY") as pacs:
        yield pacs


def gateway_settings(proxy: StallingProxy, healthy: OrthancPacs | None = None) -> Settings:
    """The default upstream `stalled`, behind the proxy; and `healthy`, reached directly."""
    # A short ACSE timeout too: releasing idle associations at shutdown gets no answer either.
    options = {"profile": "orthanc", "dimse_timeout": DIMSE_TIMEOUT, "acse_timeout": DIMSE_TIMEOUT}
    upstreams = [parse_upstream_address(f"stalled=ORTHANC@{proxy.address}", **options)]
    if healthy is not None:
        upstreams.append(parse_upstream_address(f"healthy={healthy.upstream}", **options))
    settings = load_settings(None, upstream=upstreams[0].address)
    return replace(settings, upstreams=tuple(upstreams))


def pools(root: str, upstream: str, kind: str) -> dict[str, int]:
    health = httpx.get(f"{root.rsplit('/', 1)[0]}/health", timeout=10).json()
    found: dict[str, int] = next(p for p in health["pools"] if p["upstream"] == upstream and p["kind"] == kind)
    return found


def test_uploads_to_a_pacs_that_stops_reading_fail_in_time_and_do_not_block_others(
    orthanc: OrthancPacs, healthy: OrthancPacs, tmp_path: Path
) -> None:
    big = stow_body(tmp_path, 32, "big.dcm")
    small = stow_body(tmp_path, 1, "small.dcm")
    # Association request, then the C-STORE command and two fragments of its data set: mid-C-STORE.
    with StallingProxy((orthanc.host, orthanc.port), stall_after=4) as proxy:
        with live_gateway(gateway_settings(proxy, healthy)) as root:
            with ThreadPoolExecutor(5) as clients:
                stalled = [clients.submit(post, f"{root}/studies", big) for _ in range(4)]
                while proxy.stalled < 4:
                    time.sleep(0.05)  # every one of them is stuck mid-C-STORE
                healthy = clients.submit(post, f"{root}/upstreams/healthy/studies", small)
                healthy_response, healthy_done, _ = healthy.result(timeout=60)
                answers = [future.result(timeout=120) for future in stalled]
            store_pool = pools(root, "stalled", "store")
            # The slots and workers are free again: the next upload to the stalled PACS fails just as fast.
            again, _, again_elapsed = post(f"{root}/studies", big)

    assert healthy_response.status_code == 200, healthy_response.text
    assert all(healthy_done < done for _, done, _ in answers)  # it did not wait for the stalled ones
    for response, _, elapsed in [*answers, (again, 0.0, again_elapsed)]:
        assert response.status_code == 409, response.text
        failed = response.json()["00081198"]["Value"][0]
        assert failed["00081197"]["Value"] == [0x0110]
        assert elapsed < BOUND, elapsed
    assert store_pool["in_use"] == 0 and store_pool["destroyed"] >= 4


@pytest.mark.parametrize("path", ["/studies?PatientID=STALL", "/studies/1.2.3.4/series/1.2.3.4.5"])
def test_requests_a_pacs_never_reads_are_a_504_in_time(orthanc: OrthancPacs, path: str) -> None:
    """C-FIND (search) and C-GET (retrieve): the PACS reads the association request, then nothing."""
    with StallingProxy((orthanc.host, orthanc.port), stall_after=1) as proxy:
        with live_gateway(gateway_settings(proxy)) as root:
            started = time.monotonic()
            response = httpx.get(f"{root}{path}", timeout=120)
            elapsed = time.monotonic() - started
            kind = "query" if path.startswith("/studies?") else "retrieve"
            pool = pools(root, "stalled", kind)
    assert response.status_code == 504, response.text
    assert elapsed < BOUND, elapsed
    assert pool["in_use"] == 0

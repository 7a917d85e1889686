"""DICOM TLS between the gateway and the PACS, both ways: its associations, and the C-MOVE storage SCP.

Orthanc with DICOM TLS on (and client certificates required) is the real PACS: QIDO-RS, WADO-RS by
C-GET and by C-MOVE (Orthanc connects back to the gateway's storage SCP over TLS, presenting its
certificate), STOW-RS. The failures come against Orthanc where it produces them (an untrusted
certificate, a missing client certificate) and against pynetdicom's TLS server or a bare socket
where it does not (a certificate for another name, a PACS without TLS, a listener that never
completes the handshake). Every failure is a prompt 502 or 504 whose JSON body says why.
"""

from __future__ import annotations

import contextlib
import json
import socket
import ssl
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import httpx
import pytest
from dicomweb_client.api import DICOMwebClient
from requests.exceptions import HTTPError

from gateway.demo.pacs import OrthancPacs, OrthancTls, free_port
from gateway.demo.samples import generate_sample_studies, iter_ct_volume, iter_sample_datasets
from gateway.settings import Settings, load_settings
from tests.conftest import live_gateway
from tests.fakepacs import FakePacs
from tests.integration.test_faults import INSTANCES
from tests.tlscerts import Pki, make_pki

STUDIES = generate_sample_studies(3, seed=9)
LOADED = {str(ds.SOPInstanceUID): ds for ds in iter_sample_datasets(STUDIES)}
STORE_PORT = free_port()


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def tls_settings(upstream: str, pki: Pki, *, retrieve: str = "get", **options: object) -> Settings:
    """The gateway in front of `upstream` over TLS, trusting the test CA, with its client certificate."""
    settings = load_settings(None, upstream=upstream, retrieve=retrieve, store_port=STORE_PORT)
    tls: dict[str, object] = {
        "tls": True,
        "tls_ca": str(pki.ca),
        "tls_cert": str(pki.client.cert),
        "tls_key": str(pki.client.key),
        "connect_timeout": 3.0,
        **options,
    }
    tuned = replace(settings.default_upstream, profile="orthanc", **tls)  # type: ignore[arg-type]
    return replace(settings, upstreams=(tuned,))


def with_tls_storage_scp(settings: Settings, pki: Pki) -> Settings:
    return replace(
        settings,
        store_tls=True,
        store_tls_cert=str(pki.server.cert),
        store_tls_key=str(pki.server.key),
        store_tls_ca=str(pki.ca),
    )


def assert_tls_failure(response: httpx.Response, *reason: str) -> None:
    assert response.status_code == 502, response.text
    body = response.json()
    assert body["title"] == "Upstream PACS TLS failure"
    assert body["detail"].startswith("TLS with "), body
    for words in reason:
        assert words in body["detail"], body["detail"]


# --- Against Orthanc with DICOM TLS ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def orthanc(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OrthancPacs]:
    """Orthanc speaking DICOM TLS only, requiring client certificates, its C-MOVEs to the gateway over TLS."""
    tls = OrthancTls(certificate=pki.server.cert, private_key=pki.server.key, trusted_certificates=pki.ca)
    destinations = {"GATEWAY": ("127.0.0.1", STORE_PORT)}
    workdir = Path(tmp_path_factory.mktemp("orthanc-tls"))
    with OrthancPacs(workdir, tls=tls, move_destinations=destinations) as pacs:
        pacs.store(LOADED.values())
        yield pacs


@pytest.fixture(scope="module", params=["get", "move"])
def client(request: pytest.FixtureRequest, orthanc: OrthancPacs, pki: Pki) -> Iterator[DICOMwebClient]:
    settings = with_tls_storage_scp(tls_settings(orthanc.upstream, pki, retrieve=request.param), pki)
    with live_gateway(settings) as root:
        client = DICOMwebClient(url=root)
        client.root = root  # type: ignore[attr-defined]
        client.method = request.param  # type: ignore[attr-defined]
        yield client


@pytest.mark.upstream("orthanc")
def test_qido_rs_over_tls(client: DICOMwebClient) -> None:
    found = client.search_for_studies(search_filters={"PatientID": STUDIES[0].patient_id})
    assert [study["0020000D"]["Value"][0] for study in found] == [STUDIES[0].study_uid]
    series = client.search_for_series(STUDIES[1].study_uid)
    assert sorted(s["0020000E"]["Value"][0] for s in series) == sorted(s.series_uid for s in STUDIES[1].series)


@pytest.mark.upstream("orthanc")
def test_wado_rs_over_tls_by_c_get_and_by_c_move_to_the_tls_storage_scp(client: DICOMwebClient) -> None:
    """By C-MOVE with a silent peer connected to the storage SCP all along.

    pynetdicom shakes hands in its accept loop, without a timeout: one peer that connects and says
    nothing would keep every C-MOVE's instances out.
    """
    with contextlib.ExitStack() as stack:
        if client.method == "move":  # type: ignore[attr-defined]
            stack.enter_context(socket.create_connection(("127.0.0.1", STORE_PORT), timeout=5))
        for study in STUDIES:
            retrieved = client.retrieve_study(study.study_uid)
            expected = sorted(s.instance_uid(n) for s in study.series for n in range(1, s.instance_count + 1))
            assert sorted(str(ds.SOPInstanceUID) for ds in retrieved) == expected
            for ds in retrieved:
                loaded = LOADED[str(ds.SOPInstanceUID)]
                assert ds.PatientID == loaded.PatientID and ds.PixelData == loaded.PixelData


@pytest.mark.upstream("orthanc")
def test_stow_rs_over_tls(client: DICOMwebClient, orthanc: OrthancPacs) -> None:
    volume = list(iter_ct_volume(3, rows=32, columns=32, seed=11))
    response = client.store_instances(volume)
    assert len(response.ReferencedSOPSequence) == 3 and "FailedSOPSequence" not in response
    study = str(volume[0].StudyInstanceUID)
    with urllib.request.urlopen(f"{orthanc.http_url}/tools/lookup", data=study.encode(), timeout=10) as answer:
        assert [hit["Type"] for hit in json.load(answer)] == ["Study"]
    retrieved = client.retrieve_study(study)
    assert sorted(ds.SOPInstanceUID for ds in retrieved) == sorted(ds.SOPInstanceUID for ds in volume)


@pytest.mark.upstream("orthanc")
def test_ready_over_tls(client: DICOMwebClient) -> None:
    response = httpx.get(client.root.replace("/dicom-web", "/ready"), timeout=10)  # type: ignore[attr-defined]
    assert response.status_code == 200 and response.json()["upstreams"] == {"default": "ok"}


@pytest.mark.upstream("orthanc")
def test_orthanc_certificate_from_another_ca_is_a_prompt_502(orthanc: OrthancPacs, pki: Pki) -> None:
    settings = tls_settings(orthanc.upstream, pki, tls_ca=str(pki.other_ca))
    with live_gateway(settings) as root:
        started = time.monotonic()
        response = httpx.get(f"{root}/studies", timeout=30)
        assert time.monotonic() - started < 5
        assert_tls_failure(response, "the PACS certificate was not accepted", "is it signed by a CA in tls_ca?")
        ready = httpx.get(root.replace("/dicom-web", "/ready"), timeout=30)
        stow = DICOMwebClient(url=root)
        with pytest.raises(HTTPError) as refused:
            stow.store_instances(list(iter_ct_volume(1, rows=16, columns=16, seed=12)))
    assert ready.status_code == 503 and "the PACS certificate was not accepted" in ready.json()["upstreams"]["default"]
    assert refused.value.response.status_code == 502
    assert refused.value.response.json()["title"] == "Upstream PACS TLS failure"


@pytest.mark.upstream("orthanc")
def test_orthanc_requiring_a_client_certificate_the_gateway_lacks_is_a_prompt_502(
    orthanc: OrthancPacs, pki: Pki
) -> None:
    settings = tls_settings(orthanc.upstream, pki, tls_cert="", tls_key="")
    with live_gateway(settings) as root:
        started = time.monotonic()
        response = httpx.get(f"{root}/studies/{STUDIES[0].study_uid}", timeout=30)
        assert time.monotonic() - started < 5
    assert_tls_failure(response, "client certificate")


@pytest.mark.upstream("orthanc")
def test_a_client_certificate_orthanc_does_not_trust_is_a_502(orthanc: OrthancPacs, pki: Pki) -> None:
    other = pki.other_server
    with live_gateway(tls_settings(orthanc.upstream, pki, tls_cert=str(other.cert), tls_key=str(other.key))) as root:
        response = httpx.get(f"{root}/studies", timeout=30)
    assert_tls_failure(response, "client certificate")


# --- Against pynetdicom's TLS server and bare sockets ----------------------------------------------------------


def server_context(pair_cert: Path, pair_key: Path, *, client_ca: Path | None = None) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pair_cert, pair_key)
    if client_ca is not None:
        context.load_verify_locations(client_ca)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def test_fake_pacs_over_tls_query_and_c_get(pki: Pki) -> None:
    context = server_context(pki.server.cert, pki.server.key, client_ca=pki.ca)
    with FakePacs(INSTANCES, ssl_context=context) as pacs, live_gateway(tls_settings(pacs.upstream, pki)) as root:
        studies = httpx.get(f"{root}/studies", timeout=10)
        assert studies.status_code == 200 and len(studies.json()) == 8
        retrieved = httpx.get(f"{root}/studies/1.2.826.0.1.3", timeout=10)
    assert retrieved.status_code == 200
    assert retrieved.content.count(b"\r\nContent-Type: application/dicom") == 4


def test_hostname_mismatch_is_a_502_and_tls_server_name_fixes_it(pki: Pki) -> None:
    context = server_context(pki.localhost_only.cert, pki.localhost_only.key)
    with FakePacs(INSTANCES, ssl_context=context) as pacs:
        with live_gateway(tls_settings(pacs.upstream, pki)) as root:
            response = httpx.get(f"{root}/studies", timeout=10)
        assert_tls_failure(response, "the PACS certificate does not name the host", "tls_server_name")
        with live_gateway(tls_settings(pacs.upstream, pki, tls_server_name="localhost")) as root:
            assert httpx.get(f"{root}/studies", timeout=10).status_code == 200


def test_a_pacs_without_tls_is_a_502(pki: Pki) -> None:
    with FakePacs(INSTANCES) as pacs, live_gateway(tls_settings(pacs.upstream, pki)) as root:
        started = time.monotonic()
        response = httpx.get(f"{root}/studies", timeout=10)
        assert time.monotonic() - started < 5
    assert_tls_failure(response)


def test_a_listener_that_never_completes_the_handshake_is_a_prompt_504(pki: Pki) -> None:
    with socket.create_server(("127.0.0.1", 0)) as silent:  # the kernel accepts; nobody ever answers
        port = silent.getsockname()[1]
        settings = tls_settings(f"SILENT@127.0.0.1:{port}", pki, connect_timeout=1.0)
        with live_gateway(settings) as root:
            started = time.monotonic()
            response = httpx.get(f"{root}/studies", timeout=30)
            elapsed = time.monotonic() - started
            retrieve = httpx.get(f"{root}/studies/1.2.826.0.1.3", timeout=30)
    assert response.status_code == 504, response.text
    assert "TLS handshake with SILENT@127.0.0.1" in response.json()["detail"]
    assert elapsed < 5
    assert retrieve.status_code == 504


def test_storage_scp_over_tls_refuses_a_client_without_a_trusted_certificate(pki: Pki) -> None:
    """The storage SCP with store_tls_ca: no certificate, or one from another CA, and no association."""
    port = free_port()  # not STORE_PORT: a gateway in front of Orthanc may still hold it
    settings = replace(
        with_tls_storage_scp(tls_settings("PACS@127.0.0.1:1", pki, retrieve="move"), pki), store_port=port
    )
    untrusted = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    untrusted.load_verify_locations(pki.ca)
    untrusted.load_cert_chain(pki.other_server.cert, pki.other_server.key)
    anonymous = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    anonymous.load_verify_locations(pki.ca)
    trusted = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    trusted.load_verify_locations(pki.ca)
    trusted.load_cert_chain(pki.server.cert, pki.server.key)
    with live_gateway(settings):
        for context in (untrusted, anonymous):
            with pytest.raises(ssl.SSLError):
                with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
                    with context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
                        tls.sendall(b"\x01")  # TLS 1.3: the verdict on our certificate comes after the handshake
                        tls.recv(1)
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
            with trusted.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
                assert tls.version() in ("TLSv1.2", "TLSv1.3")
                assert tls.cipher()[0].startswith(("TLS_AES", "TLS_CHACHA20", "ECDHE"))


def test_a_rejection_over_tls_is_a_rejection_not_a_tls_failure(pki: Pki) -> None:
    context = server_context(pki.server.cert, pki.server.key)
    with FakePacs(INSTANCES, ssl_context=context) as pacs:
        pacs._ae.require_called_aet = True
        with live_gateway(tls_settings(f"WRONGAET@127.0.0.1:{pacs.port}", pki)) as root:
            response = httpx.get(f"{root}/studies", timeout=10)
    assert response.status_code == 502 and response.json()["title"] == "Upstream PACS unavailable"
    assert "rejected the association" in response.json()["detail"]


def test_storage_scp_closes_a_peer_that_never_completes_the_handshake(pki: Pki) -> None:
    port = free_port()
    settings = with_tls_storage_scp(tls_settings("PACS@127.0.0.1:1", pki, retrieve="move", acse_timeout=1.0), pki)
    with live_gateway(replace(settings, store_port=port)):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as silent:
            started = time.monotonic()
            assert silent.recv(1) == b""  # closed by the gateway, not by our timeout
            assert time.monotonic() - started < 5

"""Access control through a live gateway: a real HTTP token issuer on 127.0.0.1 and the in-process fake PACS.

The fake PACS records every identifier it receives and counts C-GETs, so the tests can check that
a denied request never reached it, and that a patient-bound WADO-RS request for another patient's
study is refused before any C-GET.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest

import tests.fakepacs
from gateway.demo.issuer import AUDIENCE, LocalIssuer, SigningKey
from gateway.settings import AuthSettings, Settings
from tests.conftest import live_gateway
from tests.fakepacs import FakePacs
from tests.integration.test_faults import INSTANCES, settings_for

STUDY_3 = "1.2.826.0.1.3"
STUDY_4 = "1.2.826.0.1.4"
VIEWER = "https://viewer.test"

# One request of every kind of DICOMweb route, against patient P4's study.
S4 = f"/studies/{STUDY_4}/series/{STUDY_4}.1/instances/{STUDY_4}.1.1"
ROUTES = {
    "qido-studies": ("GET", "/studies"),
    "qido-series": ("GET", f"/studies/{STUDY_4}/series"),
    "qido-instances": ("GET", "/instances"),
    "retrieve-study": ("GET", f"/studies/{STUDY_4}"),
    "retrieve-series": ("GET", f"/studies/{STUDY_4}/series/{STUDY_4}.1"),
    "retrieve-instance": ("GET", S4),
    "metadata": ("GET", f"/studies/{STUDY_4}/metadata"),
    "frames": ("GET", f"{S4}/frames/1"),
    "rendered": ("GET", f"/studies/{STUDY_4}/series/{STUDY_4}.1/rendered"),
    "thumbnail": ("GET", f"/studies/{STUDY_4}/thumbnail"),
    "bulkdata": ("GET", f"{S4}/bulkdata/7FE00010"),
    "stow": ("POST", "/studies"),
    "stow-study": ("POST", f"/studies/{STUDY_4}"),
}
WADO = [name for name in ROUTES if not name.startswith(("qido", "stow"))]


@pytest.fixture(scope="module")
def issuer() -> Iterator[LocalIssuer]:
    with LocalIssuer() as running:
        yield running


def secured(pacs: FakePacs, issuer: LocalIssuer, **auth: Any) -> Settings:
    settings = settings_for(pacs.upstream)
    return replace(
        settings,
        cors_origins=(VIEWER,),
        auth=AuthSettings(issuers=(issuer.url,), audience=AUDIENCE, **auth),
    )


@pytest.fixture(scope="module")
def pacs() -> Iterator[FakePacs]:
    with FakePacs(INSTANCES) as running:
        yield running


@pytest.fixture(scope="module")
def audit_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("audit") / "audit.jsonl"


@pytest.fixture(scope="module")
def root(pacs: FakePacs, issuer: LocalIssuer, audit_path: Path) -> Iterator[str]:
    with live_gateway(secured(pacs, issuer, audit_log=str(audit_path))) as url:
        yield url


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def call(root: str, name: str, headers: dict[str, str]) -> httpx.Response:
    method, path = ROUTES[name]
    body = b"--b\r\nContent-Type: application/dicom\r\n\r\nnot dicom\r\n--b--\r\n" if method == "POST" else None
    if body is not None:
        headers = {**headers, "Content-Type": 'multipart/related; type="application/dicom"; boundary=b'}
    return httpx.request(method, root + path, headers=headers, content=body, timeout=10)


def audit_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.mark.parametrize("name", list(ROUTES))
def test_every_route_refuses_a_missing_invalid_expired_or_insufficient_token(
    root: str, pacs: FakePacs, issuer: LocalIssuer, name: str
) -> None:
    before = len(pacs.received)
    missing = call(root, name, {})
    assert missing.status_code == 401 and missing.json()["status"] == 401
    assert missing.headers["www-authenticate"] == 'Bearer realm="dicomweb-gateway"'
    for token in ("garbage", issuer.token(exp=int(time.time()) - 600), issuer.token(SigningKey.rsa("rsa-1"))):
        invalid = call(root, name, bearer(token))
        assert invalid.status_code == 401, token
        assert 'error="invalid_token"' in invalid.headers["www-authenticate"]
    # Read rights do not store, create rights do not read; other resource types grant nothing.
    wrong = "system/ImagingStudy.c" if ROUTES[name][0] == "GET" else "system/ImagingStudy.rs system/*.r"
    for scope in (wrong, "system/Observation.cruds openid"):
        forbidden = call(root, name, bearer(issuer.token(scope=scope)))
        assert forbidden.status_code == 403 and forbidden.json()["title"] == "Forbidden"
        assert 'error="insufficient_scope"' in forbidden.headers["www-authenticate"]
    assert len(pacs.received) == before, "a denied request reached the PACS"


def test_fhir_denials_are_operation_outcomes(root: str, issuer: LocalIssuer) -> None:
    fhir = root.replace("/dicom-web", "/fhir")
    for headers, status, code in (
        ({}, 401, "security"),
        (bearer(issuer.token(scope="system/ImagingStudy.c")), 403, "forbidden"),
    ):
        response = httpx.get(f"{fhir}/ImagingStudy?patient=P4", headers=headers, timeout=10)
        assert response.status_code == status
        assert response.headers["content-type"] == "application/fhir+json"
        outcome = response.json()
        assert outcome["resourceType"] == "OperationOutcome" and outcome["issue"][0]["code"] == code
    allowed = httpx.get(f"{fhir}/ImagingStudy", headers=bearer(issuer.token()), timeout=10)
    assert allowed.status_code == 404  # past access control; the FHIR routes are not on this branch


def test_open_paths_need_no_token(root: str) -> None:
    base = root.removesuffix("/dicom-web")
    assert httpx.get(f"{base}/health", timeout=10).status_code == 200
    assert httpx.get(f"{base}/ready", timeout=10).status_code == 200
    assert httpx.get(f"{base}/fhir/metadata", timeout=10).status_code == 404  # open, but not on this branch
    assert httpx.get(f"{base}/anything-else", timeout=10).status_code == 401


def test_smart_configuration(root: str, issuer: LocalIssuer) -> None:
    base = root.removesuffix("/dicom-web")
    document = httpx.get(f"{base}/fhir/.well-known/smart-configuration", timeout=10).json()
    assert document["issuer"] == issuer.url and document["token_endpoint"] == f"{issuer.url}/token"
    assert document["authorization_endpoint"] == f"{issuer.url}/auth"
    assert document["code_challenge_methods_supported"] == ["S256"]  # SMART forbids plain
    assert {"patient/ImagingStudy.rs", "system/ImagingStudy.c", "openid", "launch/patient"} <= set(
        document["scopes_supported"]
    )
    assert "patient/Observation.rs" not in document["scopes_supported"]
    assert "permission-v2" in document["capabilities"]
    assert [e["url"] for e in document["associated_endpoints"]] == [root]
    named = httpx.get(f"{base}/fhir/upstreams/default/.well-known/smart-configuration", timeout=10).json()
    assert [e["url"] for e in named["associated_endpoints"]] == [f"{root}/upstreams/default"]
    unknown = httpx.get(f"{base}/fhir/upstreams/nope/.well-known/smart-configuration", timeout=10)
    assert unknown.status_code == 404 and unknown.json()["resourceType"] == "OperationOutcome"


def study_uids(response: httpx.Response) -> set[str]:
    if response.status_code == 204:
        return set()
    assert response.status_code == 200, response.text
    return {r["0020000D"]["Value"][0] for r in response.json()}


def test_user_and_system_tokens_see_every_patient(root: str, issuer: LocalIssuer) -> None:
    for scope in ("user/ImagingStudy.rs", "system/*.read", "user/ImagingStudy.cruds"):
        response = httpx.get(f"{root}/studies", headers=bearer(issuer.token(scope=scope)), timeout=10)
        assert len(study_uids(response)) == 8, scope


def test_a_patient_bound_search_is_narrowed(root: str, pacs: FakePacs, issuer: LocalIssuer) -> None:
    token = bearer(issuer.token(scope="patient/ImagingStudy.rs launch/patient", patient="P3"))
    before = len(pacs.received)
    assert study_uids(httpx.get(f"{root}/studies", headers=token, timeout=10)) == {STUDY_3}
    # The STUDY-level C-FIND matches on the PatientID; the ones below it (counts) stay in that study.
    sent = pacs.received[before:]
    assert [str(i.PatientID) for i in sent if i.QueryRetrieveLevel == "STUDY"] == ["P3"]
    assert all(str(i.StudyInstanceUID) == STUDY_3 for i in sent if i.QueryRetrieveLevel != "STUDY")
    assert study_uids(httpx.get(f"{root}/studies?PatientID=P*", headers=token, timeout=10)) == {STUDY_3}
    series = httpx.get(f"{root}/series?Modality=PT", headers=token, timeout=10)
    assert {r["0020000E"]["Value"][0] for r in series.json()} == {f"{STUDY_3}.2"}
    for query in ("/studies?PatientID=P4", f"/studies/{STUDY_4}/series", f"/studies/{STUDY_4}/instances"):
        response = httpx.get(root + query, headers=token, timeout=10)
        assert response.status_code == 204, query


def test_a_patient_bound_search_drops_what_a_sloppy_pacs_matched(
    root: str, issuer: LocalIssuer, monkeypatch: pytest.MonkeyPatch
) -> None:
    matches = tests.fakepacs._matches
    monkeypatch.setattr(tests.fakepacs, "_matches", lambda k, w, i, *held: k == "PatientID" or matches(k, w, i, *held))
    token = bearer(issuer.token(scope="patient/ImagingStudy.rs", patient="P3"))
    assert study_uids(httpx.get(f"{root}/studies", headers=token, timeout=10)) == {STUDY_3}


@pytest.mark.parametrize("name", WADO)
def test_patient_bound_wado_of_another_patient_is_a_403_before_any_c_get(
    root: str, pacs: FakePacs, issuer: LocalIssuer, name: str
) -> None:
    token = bearer(issuer.token(scope="patient/ImagingStudy.read", patient="P3"))
    gets = pacs.gets
    response = call(root, name, token)
    assert response.status_code == 403, response.text
    assert "not the token's patient's" in response.json()["detail"]
    assert 'error="insufficient_scope"' in response.headers["www-authenticate"]
    assert pacs.gets == gets


def test_patient_bound_wado_of_the_patient_is_served(root: str, pacs: FakePacs, issuer: LocalIssuer) -> None:
    token = bearer(issuer.token(scope="patient/ImagingStudy.rs", patient="P3"))
    accept = {"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'}
    gets = pacs.gets
    response = httpx.get(f"{root}/studies/{STUDY_3}", headers={**token, **accept}, timeout=10)
    assert response.status_code == 200 and pacs.gets == gets + 1
    # The patient's study with another patient's series, an unknown study: 404, and still no C-GET.
    for path in (
        f"/studies/{STUDY_3}/series/{STUDY_4}.1",
        f"/studies/{STUDY_3}/series/{STUDY_3}.1/instances/{STUDY_4}.1.1",
        "/studies/1.2.9",
    ):
        assert httpx.get(root + path, headers={**token, **accept}, timeout=10).status_code == 404, path
    assert pacs.gets == gets + 1


def test_a_patient_scope_without_a_usable_patient_is_refused(root: str, issuer: LocalIssuer) -> None:
    for claims in ({}, {"patient": "*"}, {"patient": "P\\3"}):
        token = bearer(issuer.token(scope="patient/ImagingStudy.rs", **claims))
        assert httpx.get(f"{root}/studies", headers=token, timeout=10).status_code == 403, claims


def test_cors_preflight_and_resource_policy(root: str, issuer: LocalIssuer) -> None:
    preflight = httpx.options(
        f"{root}/studies/{STUDY_3}/rendered",
        headers={
            "Origin": VIEWER,
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "authorization",
        },
        timeout=10,
    )
    assert preflight.status_code == 200
    assert "authorization" in preflight.headers["access-control-allow-headers"].lower()
    assert preflight.headers["access-control-allow-origin"] == VIEWER
    assert preflight.headers["access-control-max-age"] == "600"
    assert "access-control-allow-credentials" not in preflight.headers
    denied = httpx.get(f"{root}/studies", headers={"Origin": VIEWER}, timeout=10)
    assert denied.status_code == 401 and denied.headers["access-control-allow-origin"] == VIEWER
    assert "WWW-Authenticate" in denied.headers["access-control-expose-headers"]
    rendered = httpx.get(f"{root}/studies/{STUDY_3}/metadata", headers=bearer(issuer.token()), timeout=10)
    assert rendered.status_code == 200 and rendered.headers["cross-origin-resource-policy"] == "same-origin"
    search = httpx.get(f"{root}/studies", headers=bearer(issuer.token()), timeout=10)
    assert "cross-origin-resource-policy" not in search.headers


def test_the_audit_trail(root: str, issuer: LocalIssuer, audit_path: Path) -> None:
    token = issuer.token(scope="patient/ImagingStudy.rs", patient="P3", sub="bob", client_id="app-7")
    httpx.get(f"{root}/studies/{STUDY_3}/metadata", headers=bearer(token), timeout=10)
    httpx.get(f"{root}/studies/{STUDY_4}/metadata", headers=bearer(token), timeout=10)
    httpx.get(f"{root}/studies?PatientID=P5", headers=bearer(issuer.token(scope="user/ImagingStudy.rs")), timeout=10)
    httpx.get(f"{root}/studies?limit=1", headers=bearer("forged.token.here"), timeout=10)
    httpx.get(f"{root.removesuffix('/dicom-web')}/health", timeout=10)
    time.sleep(0.2)  # the line is written after the last body chunk went out
    text = audit_path.read_text(encoding="utf-8")
    assert token not in text and "forged.token.here" not in text
    lines = audit_lines(audit_path)
    assert not [line for line in lines if line["path"].endswith("/health")]
    served, refused, searched, forged = lines[-4:]
    assert (searched["transaction"], searched["patient_id"], searched["status"]) == ("QIDO", "P5", 200)
    assert served["transaction"] == "WADO" and served["outcome"] == "success" and served["status"] == 200
    assert (served["subject"], served["client_id"], served["issuer"]) == ("bob", "app-7", issuer.url)
    assert (served["patient_id"], served["studies"], served["source"]) == ("P3", [STUDY_3], "127.0.0.1")
    assert refused["status"] == 403 and refused["outcome"] == "denied" and refused["studies"] == [STUDY_4]
    assert forged["status"] == 401 and forged["transaction"] == "QIDO" and forged["subject"] is None
    assert forged["detail"].startswith("malformed token")
    assert served["time"].endswith("Z")


def test_an_unreachable_issuer_is_a_503(pacs: FakePacs) -> None:
    with LocalIssuer(down=True) as issuer, live_gateway(secured(pacs, issuer)) as root:
        response = httpx.get(f"{root}/studies", headers=bearer(issuer.token()), timeout=10)
        assert response.status_code == 503 and response.headers["retry-after"]
        smart = httpx.get(root.replace("/dicom-web", "/fhir/.well-known/smart-configuration"), timeout=10)
        assert smart.status_code == 503 and smart.json()["resourceType"] == "OperationOutcome"


def test_anonymous_on_another_address_is_logged_as_a_warning(pacs: FakePacs, caplog: pytest.LogCaptureFixture) -> None:
    settings = replace(settings_for(pacs.upstream), host="0.0.0.0", auth=AuthSettings(allow_anonymous=True))
    with caplog.at_level(logging.WARNING, logger="gateway"), live_gateway(settings) as root:
        assert httpx.get(f"{root}/studies", timeout=10).status_code == 200
    assert any("ANONYMOUSLY" in record.message for record in caplog.records)


def test_answers_stay_streamed_through_access_control(issuer: LocalIssuer) -> None:
    """The middleware is pure ASGI: the first instance reaches the client while the PACS still sends."""
    study = [i for i in INSTANCES if i.StudyInstanceUID == STUDY_3]
    with FakePacs(study, delay=1.0) as slow, live_gateway(secured(slow, issuer)) as url:
        token = bearer(issuer.token(scope="patient/ImagingStudy.rs", patient="P3"))
        accept = {"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'}
        with httpx.stream("GET", f"{url}/studies/{STUDY_3}", headers={**token, **accept}, timeout=30) as response:
            assert response.status_code == 200
            chunks = response.iter_raw()
            next(chunks)
            sent_when_first_part_arrived = slow.sent
            rest = b"".join(chunks)
        assert sent_when_first_part_arrived < len(study) and rest.endswith(b"--\r\n")

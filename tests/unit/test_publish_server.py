"""The FHIR server client (respx): what is sent, how each failure is classified, and the OAuth2 token."""

from __future__ import annotations

import base64
import json
from urllib.parse import parse_qs

import httpx
import pytest
import respx

from gateway.fhir.publish.auth import ClientCredentials, NoCredentials, StaticBearer, credentials_for
from gateway.fhir.publish.server import FhirServer, PublishFailure
from gateway.settings import FhirPublishSettings
from tests.conftest import free_port

BASE = "https://fhir.test/fhir"
TOKEN_URL = "https://auth.test/token"
UID = "1.2.826.0.1.3680043.8.498.1"
STUDY = {"resourceType": "ImagingStudy", "id": UID, "status": "available"}
OUTCOME = {
    "resourceType": "OperationOutcome",
    "issue": [{"severity": "error", "code": "invalid", "diagnostics": "ImagingStudy.subject: required"}],
}

pytestmark = pytest.mark.anyio


def oauth_settings(**changes: object) -> FhirPublishSettings:
    values: dict[str, object] = {
        "publish_url": BASE,
        "token_url": TOKEN_URL,
        "client_id": "gateway",
        "client_secret": "s3cret+/=",
        "token_scope": "system/ImagingStudy.write",
    }
    return FhirPublishSettings(**{**values, **changes})  # type: ignore[arg-type]


async def test_conditional_update_url_headers_and_body() -> None:
    with respx.mock(base_url=BASE) as fhir:
        route = fhir.put("/ImagingStudy").respond(201, headers={"Location": f"{BASE}/ImagingStudy/{UID}/_history/1"})
        async with FhirServer(FhirPublishSettings(BASE), StaticBearer("abc")) as server:
            response = await server.upsert_imaging_study(STUDY, UID)
    assert response.status_code == 201
    request = route.calls.last.request
    # the token urn:dicom:uid|urn:oid:UID, percent-encoded as a whole
    assert request.url.raw_path.decode() == f"/fhir/ImagingStudy?identifier=urn%3Adicom%3Auid%7Curn%3Aoid%3A{UID}"
    assert request.headers["content-type"] == "application/fhir+json; fhirVersion=4.0"
    assert request.headers["accept"] == "application/fhir+json; fhirVersion=4.0"
    assert request.headers["authorization"] == "Bearer abc"
    assert json.loads(request.content) == STUDY


async def test_endpoint_update_and_r5_media_type() -> None:
    endpoint = {"resourceType": "Endpoint", "id": "dicomweb-wado-rs", "status": "active"}
    with respx.mock(base_url=BASE) as fhir:
        route = fhir.put("/Endpoint/dicomweb-wado-rs").respond(200)
        async with FhirServer(FhirPublishSettings(BASE, publish_version="R5"), NoCredentials()) as server:
            await server.update_endpoint(endpoint)
    request = route.calls.last.request
    assert request.headers["content-type"] == "application/fhir+json; fhirVersion=5.0"
    assert "authorization" not in request.headers
    assert json.loads(request.content) == endpoint


@pytest.mark.parametrize("status", [500, 502, 503, 504, 429, 408])
async def test_server_errors_throttling_and_request_timeout_are_transient(status: int) -> None:
    with respx.mock(base_url=BASE) as fhir:
        fhir.put("/ImagingStudy").respond(status, headers={"Retry-After": "7"}, json=OUTCOME)
        async with FhirServer(FhirPublishSettings(BASE), NoCredentials()) as server:
            with pytest.raises(PublishFailure) as failure:
                await server.upsert_imaging_study(STUDY, UID)
    assert failure.value.transient and failure.value.retry_after == 7.0
    assert str(status) in failure.value.detail


async def test_retry_after_as_a_date() -> None:
    with respx.mock(base_url=BASE) as fhir:
        fhir.put("/ImagingStudy").respond(429, headers={"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"})
        async with FhirServer(FhirPublishSettings(BASE), NoCredentials()) as server:
            with pytest.raises(PublishFailure) as failure:
                await server.upsert_imaging_study(STUDY, UID)
    assert failure.value.transient and failure.value.retry_after == 0.0  # long past


@pytest.mark.parametrize("status", [400, 403, 404, 409, 412, 422])
async def test_client_errors_are_permanent_with_the_operation_outcome(status: int) -> None:
    with respx.mock(base_url=BASE) as fhir:
        fhir.put("/ImagingStudy").respond(status, json=OUTCOME)
        async with FhirServer(FhirPublishSettings(BASE), NoCredentials()) as server:
            with pytest.raises(PublishFailure) as failure:
                await server.upsert_imaging_study(STUDY, UID)
    assert not failure.value.transient
    assert f"{status} error invalid: ImagingStudy.subject: required" in failure.value.detail


async def test_a_body_that_is_not_an_operation_outcome_is_quoted() -> None:
    with respx.mock(base_url=BASE) as fhir:
        fhir.put("/ImagingStudy").respond(400, text="<html>\n  Bad   thing </html>")
        async with FhirServer(FhirPublishSettings(BASE), NoCredentials()) as server:
            with pytest.raises(PublishFailure) as failure:
                await server.upsert_imaging_study(STUDY, UID)
    assert failure.value.detail.endswith("400 <html> Bad thing </html>")


@pytest.mark.parametrize(
    "error", [httpx.ReadTimeout("slow"), httpx.ConnectTimeout("slow"), httpx.ConnectError("refused")]
)
async def test_timeouts_and_refused_connections_are_transient(error: Exception) -> None:
    with respx.mock(base_url=BASE) as fhir:
        fhir.put("/ImagingStudy").mock(side_effect=error)
        async with FhirServer(FhirPublishSettings(BASE), NoCredentials()) as server:
            with pytest.raises(PublishFailure) as failure:
                await server.upsert_imaging_study(STUDY, UID)
    assert failure.value.transient and failure.value.retry_after is None


async def test_a_real_refused_connection_is_transient() -> None:
    base = f"http://127.0.0.1:{free_port()}/fhir"  # nothing listens there
    async with FhirServer(FhirPublishSettings(base), NoCredentials()) as server:
        with pytest.raises(PublishFailure) as failure:
            await server.upsert_imaging_study(STUDY, UID)
    assert failure.value.transient and "ConnectError" in failure.value.detail


async def test_static_token_rejected_is_permanent_without_a_second_try() -> None:
    with respx.mock(base_url=BASE) as fhir:
        route = fhir.put("/ImagingStudy").respond(401, json=OUTCOME)
        async with FhirServer(FhirPublishSettings(BASE), StaticBearer("expired")) as server:
            with pytest.raises(PublishFailure) as failure:
                await server.upsert_imaging_study(STUDY, UID)
    assert not failure.value.transient and route.call_count == 1


async def test_client_credentials_token_is_fetched_once_and_reused() -> None:
    with respx.mock() as mock:
        token = mock.post(TOKEN_URL).respond(json={"access_token": "t1", "token_type": "Bearer", "expires_in": 3600})
        study = mock.put(f"{BASE}/ImagingStudy").respond(201)
        credentials = ClientCredentials(oauth_settings())
        async with FhirServer(oauth_settings(), credentials) as server:
            await server.upsert_imaging_study(STUDY, UID)
            await server.upsert_imaging_study(STUDY, UID)
    assert token.call_count == 1 and study.call_count == 2
    assert all(call.request.headers["authorization"] == "Bearer t1" for call in study.calls)
    request = token.calls.last.request
    assert parse_qs(request.content.decode()) == {
        "grant_type": ["client_credentials"],
        "scope": ["system/ImagingStudy.write"],
    }
    # RFC 6749 §2.3.1: HTTP Basic of the form-urlencoded id and secret
    assert request.headers["authorization"] == "Basic " + base64.b64encode(b"gateway:s3cret%2B%2F%3D").decode()


async def test_client_secret_post_sends_the_credentials_in_the_form() -> None:
    settings = oauth_settings(token_auth_method="client_secret_post", token_scope="")
    with respx.mock() as mock:
        token = mock.post(TOKEN_URL).respond(json={"access_token": "t1", "expires_in": 60})
        mock.put(f"{BASE}/ImagingStudy").respond(200)
        async with FhirServer(settings, ClientCredentials(settings)) as server:
            await server.upsert_imaging_study(STUDY, UID)
    request = token.calls.last.request
    assert "authorization" not in request.headers
    assert parse_qs(request.content.decode()) == {
        "grant_type": ["client_credentials"],
        "client_id": ["gateway"],
        "client_secret": ["s3cret+/="],
    }


async def test_token_is_fetched_again_shortly_before_it_expires() -> None:
    now = [1000.0]
    settings = oauth_settings()
    with respx.mock() as mock:
        token = mock.post(TOKEN_URL).mock(
            side_effect=[httpx.Response(200, json={"access_token": f"t{i}", "expires_in": 300}) for i in (1, 2)]
        )
        study = mock.put(f"{BASE}/ImagingStudy").respond(201)
        async with FhirServer(settings, ClientCredentials(settings, clock=lambda: now[0])) as server:
            await server.upsert_imaging_study(STUDY, UID)
            now[0] += 265  # within its life, before the 30 s margin
            await server.upsert_imaging_study(STUDY, UID)
            now[0] += 10  # 275 s: inside the margin
            await server.upsert_imaging_study(STUDY, UID)
    assert token.call_count == 2
    assert [c.request.headers["authorization"] for c in study.calls] == ["Bearer t1", "Bearer t1", "Bearer t2"]


async def test_a_401_fetches_a_new_token_and_retries_once() -> None:
    settings = oauth_settings()
    with respx.mock() as mock:
        token = mock.post(TOKEN_URL).mock(
            side_effect=[httpx.Response(200, json={"access_token": f"t{i}", "expires_in": 3600}) for i in (1, 2)]
        )
        study = mock.put(f"{BASE}/ImagingStudy").mock(side_effect=[httpx.Response(401), httpx.Response(201)])
        async with FhirServer(settings, ClientCredentials(settings)) as server:
            response = await server.upsert_imaging_study(STUDY, UID)
    assert response.status_code == 201 and token.call_count == 2
    assert [c.request.headers["authorization"] for c in study.calls] == ["Bearer t1", "Bearer t2"]


async def test_a_second_401_is_permanent() -> None:
    settings = oauth_settings()
    with respx.mock() as mock:
        token = mock.post(TOKEN_URL).respond(json={"access_token": "t", "expires_in": 3600})
        study = mock.put(f"{BASE}/ImagingStudy").respond(401, json=OUTCOME)
        async with FhirServer(settings, ClientCredentials(settings)) as server:
            with pytest.raises(PublishFailure) as failure:
                await server.upsert_imaging_study(STUDY, UID)
    assert not failure.value.transient and "401" in failure.value.detail
    assert token.call_count == 2 and study.call_count == 2


@pytest.mark.parametrize(
    "answer",
    [
        httpx.Response(401, json={"error": "invalid_client", "error_description": "unknown client"}),
        httpx.Response(503),
        httpx.Response(200, json={"token_type": "Bearer"}),
    ],
)
async def test_no_token_is_a_transient_failure_and_the_secret_is_never_shown(answer: httpx.Response) -> None:
    settings = oauth_settings()
    with respx.mock(assert_all_called=False) as mock:
        mock.post(TOKEN_URL).mock(return_value=answer)
        study = mock.put(f"{BASE}/ImagingStudy").respond(201)
        async with FhirServer(settings, ClientCredentials(settings)) as server:
            with pytest.raises(PublishFailure) as failure:
                await server.upsert_imaging_study(STUDY, UID)
    assert failure.value.transient and TOKEN_URL in failure.value.detail
    assert "s3cret" not in failure.value.detail and study.call_count == 0


def test_credentials_from_settings_and_secrets_out_of_repr() -> None:
    assert isinstance(credentials_for(FhirPublishSettings(BASE)), NoCredentials)
    assert isinstance(credentials_for(FhirPublishSettings(BASE, bearer_token="x")), StaticBearer)
    assert isinstance(credentials_for(oauth_settings()), ClientCredentials)
    assert "s3cret" not in repr(oauth_settings()) and "hidden" not in repr(
        FhirPublishSettings(BASE, bearer_token="hidden")
    )

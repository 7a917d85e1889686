"""The FHIR server publications go to: conditional update of an ImagingStudy, update of an Endpoint.

Every failure is translated here, once, into a :class:`PublishFailure` that says whether trying
again can help:

- transient: 5xx, 429, 408, a timeout, a refused or broken connection, no token from the token
  endpoint; it carries the server's ``Retry-After`` when there is one;
- permanent: any other 4xx, and a 401 that a fresh token did not cure; it carries the text of the
  server's OperationOutcome.
"""

from __future__ import annotations

import logging
from typing import Any

import httpx
import orjson

from gateway import __version__
from gateway.fhir.publish.auth import Credentials, TokenError
from gateway.fhir.publish.retry import retry_after_seconds
from gateway.settings import FhirPublishSettings

__all__ = ["FHIR_JSON", "FhirServer", "PublishFailure", "operation_outcome_text", "study_identifier"]

logger = logging.getLogger(__name__)

FHIR_JSON = "application/fhir+json"
_FHIR_VERSIONS = {"R4": "4.0", "R5": "5.0"}  # the fhirVersion media type parameter (FHIR http.html#version-parameter)
_TRANSIENT_STATUSES = frozenset({408, 429})


class PublishFailure(Exception):
    """A publication failed; `transient` says whether a later attempt may succeed."""

    def __init__(self, detail: str, *, transient: bool, retry_after: float | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.transient = transient
        self.retry_after = retry_after


def study_identifier(study_uid: str) -> str:
    """The ImagingStudy identifier token of a study (requirement F1): ``urn:dicom:uid|urn:oid:UID``."""
    return f"urn:dicom:uid|urn:oid:{study_uid}"


def operation_outcome_text(response: httpx.Response) -> str:
    """What the server said about a failure: its OperationOutcome's issues, else the start of the body."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and body.get("resourceType") == "OperationOutcome":
        issues = [issue for issue in body.get("issue", []) if isinstance(issue, dict)]
        texts = []
        for issue in issues:
            details = issue.get("details")
            said = issue.get("diagnostics") or (details.get("text") if isinstance(details, dict) else None)
            texts.append(f"{issue.get('severity', '?')} {issue.get('code', '?')}: {said or '(no text)'}")
        if texts:
            return "; ".join(texts)
    text = " ".join(response.text.split())
    return text[:300] if text else response.reason_phrase


class FhirServer:
    """PUTs resources to one FHIR server; ``async with`` owns its HTTP client.

    Parameters
    ----------
    settings : FhirPublishSettings
        The server's base URL, FHIR version and timeout.
    credentials : Credentials
        What authorizes each request.
    """

    def __init__(self, settings: FhirPublishSettings, credentials: Credentials) -> None:
        self.base = settings.publish_url
        self._timeout = settings.publish_timeout
        self._credentials = credentials
        media = f"{FHIR_JSON}; fhirVersion={_FHIR_VERSIONS[settings.publish_version]}"
        self._headers = {"Content-Type": media, "Accept": media, "Prefer": "return=minimal"}
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(settings.publish_timeout),
            headers={"User-Agent": f"dicomweb-gateway/{__version__}"},
        )

    async def __aenter__(self) -> FhirServer:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._client.aclose()

    async def upsert_imaging_study(self, resource: dict[str, Any], study_uid: str) -> httpx.Response:
        """``PUT [base]/ImagingStudy?identifier=urn:dicom:uid|urn:oid:UID``: create it or update the one match."""
        return await self._put("ImagingStudy", resource, {"identifier": study_identifier(study_uid)})

    async def update_endpoint(self, resource: dict[str, Any]) -> httpx.Response:
        """``PUT [base]/Endpoint/{id}``: create or update the Endpoint under its own id."""
        return await self._put(f"Endpoint/{resource['id']}", resource, None)

    async def _put(self, path: str, resource: dict[str, Any], params: dict[str, str] | None) -> httpx.Response:
        what = f"PUT {path}" + (f"?identifier={params['identifier']}" if params else "")
        body = orjson.dumps(resource)
        refreshed = False
        while True:
            headers = dict(self._headers)
            try:
                authorization = await self._credentials.authorization(self._client)
            except TokenError as exc:
                raise PublishFailure(f"{what}: {exc}", transient=True) from exc
            if authorization is not None:
                headers["Authorization"] = authorization
            try:
                response = await self._client.put(f"{self.base}/{path}", params=params, content=body, headers=headers)
            except httpx.TimeoutException as exc:
                raise PublishFailure(f"{what}: no answer within {self._timeout} s", transient=True) from exc
            except httpx.TransportError as exc:  # refused, reset, DNS, protocol errors
                raise PublishFailure(
                    f"{what}: {type(exc).__name__}: {exc or 'connection failed'}", transient=True
                ) from exc
            if response.status_code == 401 and self._credentials.refreshable and not refreshed:
                logger.info("FHIR publish: %s answered 401; fetching a new token", what)
                self._credentials.invalidate()
                refreshed = True
                continue
            if response.is_success:
                return response
            status = response.status_code
            detail = f"{what}: {status} {operation_outcome_text(response)}"
            if status >= 500 or status in _TRANSIENT_STATUSES:
                retry_after = retry_after_seconds(response.headers.get("retry-after"))
                raise PublishFailure(detail, transient=True, retry_after=retry_after)
            raise PublishFailure(detail, transient=False)

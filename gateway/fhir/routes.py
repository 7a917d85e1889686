"""The FHIR HTTP face: ``/fhir`` for the default upstream and ``/fhir/upstreams/NAME`` for each.

Thin, as the DICOMweb routes are: negotiate the version, parse, call, render. Every failure is an
OperationOutcome with the status the gateway would give over DICOMweb (``outcome.py``).
"""

from __future__ import annotations

import hashlib
import logging
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlencode

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from gateway.auth.middleware import REALM
from gateway.auth.patient import PATIENT_SCOPE_KEY, same_patient
from gateway.errors import GatewayError, PayloadTooLarge, UnsupportedMediaType
from gateway.fhir.bundle import entry, searchset
from gateway.fhir.capability import capability_statement
from gateway.fhir.endpoint import endpoint_resources
from gateway.fhir.finds import FindCounter
from gateway.fhir.outcome import OutcomeError, operation_outcome, outcome_error
from gateway.fhir.params import StudySearch, is_uid, parse_search
from gateway.fhir.resource import imaging_study
from gateway.fhir.search import search_studies
from gateway.fhir.study import load_study
from gateway.fhir.values import text
from gateway.fhir.versions import FhirVersion, media_type, negotiate
from gateway.routes.common import ServiceRoot
from gateway.settings import Settings
from gateway.upstreams import Upstream, Upstreams

__all__ = ["FHIR_BASE", "fhir_routes"]

logger = logging.getLogger(__name__)

FHIR_BASE = "/fhir"
_MAX_FORM_BYTES = 64 * 1024


@dataclass(frozen=True)
class FhirRoot:
    """A FHIR base (``/fhir`` or ``/fhir/upstreams/NAME``), its PACS and its DICOMweb service root."""

    base: ServiceRoot
    dicomweb: ServiceRoot

    @property
    def upstream(self) -> Upstream:
        """The PACS this FHIR base is built from."""
        return self.base.upstream


@dataclass(frozen=True)
class _Call:
    request: Request
    root: FhirRoot
    version: FhirVersion

    @property
    def base_url(self) -> str:
        return self.root.base.root_url(self.request)

    @property
    def dicomweb_root(self) -> str:
        return self.root.dicomweb.root_url(self.request)

    @property
    def patient_id(self) -> str | None:
        bound = self.request.scope.get(PATIENT_SCOPE_KEY)
        return str(bound) if bound is not None else None

    def answer(self, body: dict[str, Any], status: int = 200, headers: dict[str, str] | None = None) -> Response:
        return Response(orjson.dumps(body), status_code=status, media_type=media_type(self.version), headers=headers)


Handler = Callable[[_Call], Awaitable[Response]]


def _outcome_response(exc: OutcomeError, version: FhirVersion) -> Response:
    body = orjson.dumps(operation_outcome(exc.code, exc.diagnostics))
    return Response(body, status_code=exc.status, media_type=media_type(version), headers=exc.headers)


def _bind(handler: Handler, root: FhirRoot) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        version: FhirVersion = "R5"
        try:
            version = negotiate(request.headers.get("accept", ""), request.query_params.get("_format"))
            return await handler(_Call(request, root, version))
        except OutcomeError as exc:
            error = exc
        except GatewayError as exc:
            error = outcome_error(exc)
        except Exception:
            # The body names no exception and no internals; the reference finds the traceback in the log.
            reference = request.scope.get("state", {}).get("request_id", "") or secrets.token_hex(8)
            logger.exception("%s %s failed (reference %s)", request.method, request.url.path, reference)
            detail = f"the gateway failed to answer this request; quote reference {reference} to its operator"
            error = OutcomeError(500, "exception", detail)
        log = logger.warning if error.status >= 500 else logger.info
        log("%s %s -> %d %s", request.method, request.url.path, error.status, error.diagnostics)
        return _outcome_response(error, version)

    endpoint.__name__ = handler.__name__
    endpoint.__doc__ = handler.__doc__
    return endpoint


async def metadata(call: _Call) -> Response:
    """``GET [base]/metadata``: the CapabilityStatement."""
    settings: Settings = call.request.app.state.settings
    statement = capability_statement(call.version, call.base_url, call.root.upstream.name, smart=settings.auth.enabled)
    return call.answer(statement)


async def read_imaging_study(call: _Call) -> Response:
    """``GET [base]/ImagingStudy/{id}``: the whole study, ETag from its content."""
    study_uid = call.request.path_params["id"]
    if not is_uid(study_uid):
        raise OutcomeError(404, "not-found", f"no ImagingStudy {study_uid!r}: ids are StudyInstanceUIDs")
    upstream = call.root.upstream
    counter = FindCounter()
    record = await load_study(upstream, study_uid, counter=counter)
    if record is None:
        raise OutcomeError(404, "not-found", f"the PACS {upstream.name!r} has no study {study_uid}")
    if call.patient_id is not None and not same_patient(text(record.study, "PatientID"), call.patient_id):
        raise OutcomeError(
            403,
            "forbidden",
            f"ImagingStudy/{study_uid} is not a study of the patient this access is for",
            headers={"WWW-Authenticate": f'Bearer realm="{REALM}", error="insufficient_scope"'},
        )
    resource = imaging_study(
        record, dicomweb_root=call.dicomweb_root, version=call.version, zone=upstream.client.settings.timezone
    )
    body = orjson.dumps(resource)
    etag = f'"{hashlib.sha256(body).hexdigest()[:32]}"'
    headers = {"ETag": etag, "X-Gateway-C-Finds": str(counter.count)}
    if etag in [tag.strip() for tag in call.request.headers.get("if-none-match", "").split(",")]:
        return Response(status_code=304, headers=headers)
    return Response(body, media_type=media_type(call.version), headers=headers)


def _strict(request: Request) -> bool:
    prefer = request.headers.get("prefer", "")
    return any(p.strip().replace(" ", "") == "handling=strict" for p in prefer.split(";") + prefer.split(","))


def _page_url(base: str, search: StudySearch, offset: int) -> str:
    items = list(search.canonical)
    if not search.summary_count:
        items.append(("_count", str(search.count)))
        if offset:
            items.append(("_offset", str(offset)))
    query = urlencode(items, safe=":|,")
    return f"{base}/ImagingStudy" + (f"?{query}" if query else "")


async def _search(call: _Call, items: list[tuple[str, str]]) -> Response:
    settings: Settings = call.request.app.state.settings
    upstream = call.root.upstream
    search = parse_search(
        items,
        strict=_strict(call.request),
        max_count=settings.fhir_max_count,
        zone=upstream.client.settings.timezone,
    )
    counter = FindCounter()
    page = await search_studies(upstream, search, patient_id=call.patient_id, counter=counter)
    base = call.base_url
    headers = {"X-Gateway-C-Finds": str(counter.count)}
    self_url = _page_url(base, search, search.offset)
    if page.total is not None:
        return call.answer(searchset([], self_url=self_url, total=page.total), headers=headers)
    dicomweb_root = call.dicomweb_root
    entries = [
        entry(
            f"{base}/ImagingStudy/{text(record.study, 'StudyInstanceUID')}",
            imaging_study(
                record,
                dicomweb_root=dicomweb_root,
                version=call.version,
                zone=upstream.client.settings.timezone,
                list_instances=False,
            ),
        )
        for record in page.records
    ]
    if search.include_endpoint and entries:
        entries += [
            entry(f"{base}/Endpoint/{resource['id']}", resource, "include")
            for resource in endpoint_resources(dicomweb_root, call.version)
        ]
    next_url = _page_url(base, search, search.offset + search.count) if page.more else None
    total = None if page.more else search.offset + len(page.records)
    return call.answer(searchset(entries, self_url=self_url, next_url=next_url, total=total), headers=headers)


async def search_imaging_studies(call: _Call) -> Response:
    """``GET [base]/ImagingStudy?...``: a searchset Bundle."""
    return await _search(call, call.request.query_params.multi_items())


async def search_imaging_studies_post(call: _Call) -> Response:
    """``POST [base]/ImagingStudy/_search``: the parameters in the URL and a form body."""
    content_type = call.request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/x-www-form-urlencoded":
        raise UnsupportedMediaType(f"a _search body is application/x-www-form-urlencoded, not {content_type!r}")
    body = b""
    async for chunk in call.request.stream():
        body += chunk
        if len(body) > _MAX_FORM_BYTES:
            raise PayloadTooLarge(f"a _search body is at most {_MAX_FORM_BYTES} bytes")
    try:
        form = parse_qsl(body.decode("utf-8"), keep_blank_values=True, strict_parsing=False)
    except UnicodeDecodeError:
        raise OutcomeError(400, "invalid", "the _search body is not UTF-8") from None
    return await _search(call, call.request.query_params.multi_items() + form)


async def search_endpoints(call: _Call) -> Response:
    """``GET [base]/Endpoint``: the DICOMweb service's Endpoints (``_id`` filters)."""
    strict = _strict(call.request)
    ids: set[str] | None = None
    for name, value in call.request.query_params.multi_items():
        if name == "_id":
            wanted = set(value.split(","))
            ids = wanted if ids is None else ids & wanted
        elif name != "_format" and strict:
            raise OutcomeError(
                400, "not-supported", f"the parameter {name!r} is not supported (Prefer: handling=strict)"
            )
    base = call.base_url
    resources = [r for r in endpoint_resources(call.dicomweb_root, call.version) if ids is None or r["id"] in ids]
    query = urlencode([("_id", ",".join(sorted(ids)))]) if ids is not None else ""
    self_url = f"{base}/Endpoint" + (f"?{query}" if query else "")
    entries = [entry(f"{base}/Endpoint/{r['id']}", r) for r in resources]
    return call.answer(searchset(entries, self_url=self_url, total=len(entries)))


async def read_endpoint(call: _Call) -> Response:
    """``GET [base]/Endpoint/{id}``."""
    endpoint_id = call.request.path_params["id"]
    for resource in endpoint_resources(call.dicomweb_root, call.version):
        if resource["id"] == endpoint_id:
            return call.answer(resource)
    raise OutcomeError(404, "not-found", f"no Endpoint {endpoint_id!r}")


_ROUTES: tuple[tuple[str, str, Handler], ...] = (
    ("GET", "/metadata", metadata),
    ("GET", "/ImagingStudy", search_imaging_studies),
    ("POST", "/ImagingStudy/_search", search_imaging_studies_post),
    ("GET", "/ImagingStudy/{id}", read_imaging_study),
    ("GET", "/Endpoint", search_endpoints),
    ("GET", "/Endpoint/{id}", read_endpoint),
)


def fhir_routes(settings: Settings, upstreams: Upstreams) -> list[BaseRoute]:
    """The FHIR routes of every upstream; the default one's also at ``/fhir`` itself."""
    public = settings.public_url

    def root(path: str, upstream: Upstream, dicomweb_path: str) -> FhirRoot:
        return FhirRoot(ServiceRoot(path, upstream, public), ServiceRoot(dicomweb_path, upstream, public))

    roots = [root(FHIR_BASE, upstreams.default, settings.base_path)]
    roots += [root(f"{FHIR_BASE}/upstreams/{u.name}", u, f"{settings.base_path}/upstreams/{u.name}") for u in upstreams]
    return [
        Route(r.base.path + path, _bind(handler, r), methods=[method])
        for r in roots
        for method, path, handler in _ROUTES
    ]

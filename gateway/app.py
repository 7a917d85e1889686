"""The ASGI application: routes, error rendering, and the lifespan that owns the upstream pools."""

from __future__ import annotations

import logging
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import asdict

import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from gateway import __version__
from gateway.auth.audit import audit_file, audit_logger
from gateway.auth.browser import browser_middleware
from gateway.auth.middleware import AuthMiddleware
from gateway.auth.ownership import StudyOwnership
from gateway.auth.smart import smart_routes
from gateway.auth.tokens import Authenticator
from gateway.concurrency import first_gateway_error
from gateway.dimse import sockets
from gateway.dimse.pool import begin_request
from gateway.errors import GatewayError, UpstreamError
from gateway.fhir.publish.publisher import Publisher, PublisherFactory
from gateway.fhir.routes import fhir_routes
from gateway.logs import REQUEST_ID_HEADER, RequestIdMiddleware, current_upstream
from gateway.metrics import MetricsMiddleware
from gateway.routes.common import ServiceRoot
from gateway.routes.frames import retrieve_frames
from gateway.routes.index import describe_gateway, describe_service, live_metrics, metrics, openapi_document
from gateway.routes.metadata import retrieve_bulkdata, retrieve_metadata
from gateway.routes.qido import search_for_instances, search_for_series, search_for_studies
from gateway.routes.rendered import retrieve_rendered, retrieve_thumbnail
from gateway.routes.stow import store_instances
from gateway.routes.wado import retrieve_instances
from gateway.serving.body import BodyTimeout
from gateway.settings import Settings, is_loopback
from gateway.upstreams import Upstreams

__all__ = ["create_app"]

logger = logging.getLogger("gateway")

Endpoint = Callable[[Request], Awaitable[Response]]

# (method, path below a service root, endpoint): the QIDO-RS resources of PS3.18 Table 10.6.1-1
# and the STOW-RS resources of Table 10.3-2.
_SERVICE_ROUTES: tuple[tuple[str, str, Endpoint], ...] = (
    ("GET", "/studies", search_for_studies),
    ("GET", "/series", search_for_series),
    ("GET", "/instances", search_for_instances),
    ("GET", "/studies/{study}/series", search_for_series),
    ("GET", "/studies/{study}/instances", search_for_instances),
    ("GET", "/studies/{study}/series/{series}/instances", search_for_instances),
    ("POST", "/studies", store_instances),
    ("POST", "/studies/{study}", store_instances),
    ("GET", "/studies/{study}", retrieve_instances),
    ("GET", "/studies/{study}/series/{series}", retrieve_instances),
    ("GET", "/studies/{study}/series/{series}/instances/{instance}", retrieve_instances),
    ("GET", "/studies/{study}/metadata", retrieve_metadata),
    ("GET", "/studies/{study}/series/{series}/metadata", retrieve_metadata),
    ("GET", "/studies/{study}/series/{series}/instances/{instance}/metadata", retrieve_metadata),
    ("GET", "/studies/{study}/series/{series}/instances/{instance}/bulkdata/{tag_path:path}", retrieve_bulkdata),
    ("GET", "/studies/{study}/series/{series}/instances/{instance}/frames/{frames}", retrieve_frames),
    ("GET", "/studies/{study}/rendered", retrieve_rendered),
    ("GET", "/studies/{study}/series/{series}/rendered", retrieve_rendered),
    ("GET", "/studies/{study}/series/{series}/instances/{instance}/rendered", retrieve_rendered),
    ("GET", "/studies/{study}/series/{series}/instances/{instance}/frames/{frames}/rendered", retrieve_rendered),
    ("GET", "/studies/{study}/thumbnail", retrieve_thumbnail),
    ("GET", "/studies/{study}/series/{series}/thumbnail", retrieve_thumbnail),
    ("GET", "/studies/{study}/series/{series}/instances/{instance}/thumbnail", retrieve_thumbnail),
    ("GET", "/studies/{study}/series/{series}/instances/{instance}/frames/{frames}/thumbnail", retrieve_thumbnail),
)


def _json(status: int, body: object, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json", headers=headers)


async def _gateway_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, GatewayError)
    log = logger.warning if isinstance(exc, UpstreamError) or exc.status_code >= 500 else logger.info
    log("%s %s -> %d %s", request.method, request.url.path, exc.status_code, exc.detail)
    return _json(exc.status_code, exc.to_json(), exc.headers)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    body = {
        "status": exc.status_code,
        "title": str(exc.detail),
        "detail": f"{request.method} {request.url.path}: {exc.detail}",
    }
    return _json(exc.status_code, body, dict(exc.headers or {}))


async def _exception_group(request: Request, exc: Exception) -> Response:
    # A task group's failures come wrapped even when they are all the gateway's own errors.
    assert isinstance(exc, ExceptionGroup)
    error = first_gateway_error(exc)
    if error is None:
        return await _unexpected_error(request, exc)
    return await _gateway_error(request, error)


async def _unexpected_error(request: Request, exc: Exception) -> Response:
    # The body names no exception and no internals; the reference (the request id) finds the
    # traceback in the log. Starlette calls this outside the user middleware, where the request id
    # is no longer current.
    reference = request.scope.get("state", {}).get("request_id", "") or secrets.token_hex(8)
    logger.exception("%s %s failed (reference %s)", request.method, request.url.path, reference)
    detail = f"the gateway failed to answer this request; quote reference {reference} to its operator"
    body = {"status": 500, "title": "Internal error", "detail": detail, "reference": reference}
    return _json(500, body, {REQUEST_ID_HEADER: reference})


def _method_not_allowed(request: Request, allowed: str) -> Response:
    """HEAD on a DICOMweb resource: 405, before any work.

    Starlette answers HEAD on every GET route by running the GET and dropping its body: a C-GET or
    C-MOVE of a whole study for nothing. Only the retrieve itself can tell its status (200, 206,
    404, 502), so a cheaper HEAD could not promise the GET's; DICOMweb clients do not send HEAD,
    and Orthanc's own DICOMweb does not answer it either (404).
    """
    detail = f"HEAD is not served on DICOMweb resources; use {allowed}"
    logger.info("%s %s -> 405 %s", request.method, request.url.path, detail)
    return _json(405, {"status": 405, "title": "Method not allowed", "detail": detail}, {"Allow": allowed})


def _bind(endpoint: Endpoint, service: ServiceRoot, allowed: str) -> Endpoint:
    async def bound(request: Request) -> Response:
        if request.method == "HEAD":
            return _method_not_allowed(request, allowed)
        request.scope["gateway.service"] = service
        current_upstream.set(service.upstream.name)  # for this request's log records
        begin_request()  # overload control admits requests, not each of their DIMSE operations
        return await endpoint(request)

    bound.__name__ = endpoint.__name__
    bound.__doc__ = endpoint.__doc__
    return bound


def _service_routes(settings: Settings, upstreams: Upstreams) -> list[BaseRoute]:
    public = settings.public_url
    roots = [ServiceRoot(settings.base_path, upstreams.default, public)]
    roots += [ServiceRoot(f"{settings.base_path}/upstreams/{u.name}", u, public) for u in upstreams]
    routes = (("GET", "", describe_service), *_SERVICE_ROUTES)
    methods: dict[str, set[str]] = {}
    for method, path, _ in routes:
        methods.setdefault(path, set()).add(method)
    allowed = {path: ", ".join(sorted(names)) for path, names in methods.items()}
    return [
        Route(root.path + path, _bind(endpoint, root, allowed[path]), methods=[method])
        for root in roots
        for method, path, endpoint in routes
    ]


async def health(request: Request) -> Response:
    """Liveness and pool statistics (query and storage associations); does not touch the PACS."""
    upstreams: Upstreams = request.app.state.upstreams
    pools = [asdict(u.client.pool.stats()) | {"kind": "query"} for u in upstreams]
    pools += [asdict(u.retrieval.retriever.pool.stats()) | {"kind": "retrieve"} for u in upstreams]
    pools += [asdict(u.store.pool.stats()) | {"kind": "store"} for u in upstreams]
    caches = {u.name: u.retrieval.cache.stats() for u in upstreams}
    scp = upstreams.storage_server
    refused = {
        "storage_scp": scp.refusals.refused if scp is not None else 0,
        "c_get": {u.name: u.retrieval.retriever.refusals.refused for u in upstreams},
    }
    body = {"status": "ok", "version": __version__, "pools": pools, "caches": caches, "refused_instances": refused}
    publisher: Publisher | None = request.app.state.publisher
    if publisher is not None:
        body["fhir_publish"] = publisher.stats()
    # Study answers whose PACS-held ModalitiesInStudy or counts disagreed with the derived ones.
    body["stale_aggregates"] = {u.name: u.stale_aggregates.count for u in upstreams}
    return _json(200, body)


async def ready(request: Request) -> Response:
    """Readiness: a C-ECHO to every upstream; 503 if any fails."""
    upstreams: Upstreams = request.app.state.upstreams
    report: dict[str, str] = {}
    for upstream in upstreams:
        try:
            await upstream.client.echo()
            report[upstream.name] = "ok"
        except GatewayError as exc:
            report[upstream.name] = exc.detail
    ok = all(value == "ok" for value in report.values())
    return _json(200 if ok else 503, {"status": "ok" if ok else "unavailable", "upstreams": report})


def _fhir_publisher(settings: Settings, upstreams: Upstreams, factory: PublisherFactory | None) -> Publisher | None:
    if settings.fhir_publish is None:
        return None
    if factory is None:
        # Imported here: it binds the FHIR resource builders, needed only when publishing is configured.
        from gateway.fhir.publish.wiring import make_publisher

        factory = make_publisher
    return factory(settings, upstreams)


def create_app(settings: Settings, *, publisher_factory: PublisherFactory | None = None) -> Starlette:
    """Build the gateway's ASGI application for `settings`.

    The upstream pools open when the ASGI lifespan starts and close, releasing every
    association, when it ends. With ``[fhir] publish_url``, the FHIR publisher (made by
    `publisher_factory`, by default the one of :mod:`gateway.fhir.publish.wiring`) runs
    while the lifespan does.
    """
    sockets.install()
    upstreams = Upstreams(settings)
    authenticator = Authenticator(settings.auth) if settings.auth.enabled else None
    ownership = StudyOwnership()
    publisher = _fhir_publisher(settings, upstreams, publisher_factory)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            audit_logger.setLevel(logging.INFO)  # the audit trail does not depend on log_level
            stack.enter_context(audit_file(settings.auth.audit_log))
            if authenticator is not None:
                await stack.enter_async_context(authenticator)
            elif not is_loopback(settings.host):
                logger.warning("serving ANONYMOUSLY on %s (allow_anonymous): no token is asked for", settings.host)
            await stack.enter_async_context(upstreams)
            if publisher is not None:
                await stack.enter_async_context(publisher)
            names = ", ".join(f"{u.name}={u.address}" for u in settings.upstreams)
            logger.info("serving DICOMweb at %s for upstreams %s", settings.base_path, names)
            yield
        logger.info("gateway stopped")

    # Outermost first: every answer gets its request id and is timed with everything inside; CORS
    # answers preflights and decorates denials too; then access control.
    middleware = [Middleware(RequestIdMiddleware)]
    if settings.metrics:
        middleware.append(Middleware(MetricsMiddleware))
    middleware += browser_middleware(settings)
    middleware.append(
        Middleware(
            AuthMiddleware,
            base_path=settings.base_path,
            authenticator=authenticator,
            ownership=ownership,
            upstreams=upstreams,
        )
    )
    middleware.append(Middleware(BodyTimeout, timeout=settings.http_body_timeout, min_rate=settings.http_body_min_rate))
    routes: list[BaseRoute] = [
        Route("/", describe_gateway, methods=["GET"]),
        Route("/openapi.json", openapi_document, methods=["GET"]),
        Route("/health", health, methods=["GET"]),
        Route("/ready", ready, methods=["GET"]),
        *([Route("/metrics", metrics, methods=["GET"])] if settings.metrics else []),
        *smart_routes(),  # before any /fhir mount, which would otherwise take these paths
        *_service_routes(settings, upstreams),
        *fhir_routes(settings, upstreams),
    ]
    app = Starlette(
        routes=routes,
        middleware=middleware,
        lifespan=lifespan,
        exception_handlers={
            GatewayError: _gateway_error,
            HTTPException: _http_error,
            ExceptionGroup: _exception_group,
            Exception: _unexpected_error,
        },
    )
    app.state.settings = settings
    app.state.upstreams = upstreams
    app.state.publisher = publisher
    app.state.live_metrics = live_metrics(upstreams)
    app.state.authenticator = authenticator
    app.state.ownership = ownership
    return app

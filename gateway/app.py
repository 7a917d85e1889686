"""The ASGI application: routes, error rendering, and the lifespan that owns the upstream pools."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import asdict

import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from gateway import __version__
from gateway.dimse import sockets, storage
from gateway.errors import GatewayError, UpstreamError
from gateway.fhir.routes import fhir_routes
from gateway.routes.common import ServiceRoot
from gateway.routes.frames import retrieve_frames
from gateway.routes.metadata import retrieve_bulkdata, retrieve_metadata
from gateway.routes.qido import search_for_instances, search_for_series, search_for_studies
from gateway.routes.rendered import retrieve_rendered, retrieve_thumbnail
from gateway.routes.stow import store_instances
from gateway.routes.wado import retrieve_instances
from gateway.settings import Settings
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


async def _unexpected_error(request: Request, exc: Exception) -> Response:
    logger.exception("%s %s failed", request.method, request.url.path)
    return _json(500, {"status": 500, "title": "Internal error", "detail": f"{type(exc).__name__}: {exc}"})


def _bind(endpoint: Endpoint, service: ServiceRoot) -> Endpoint:
    async def bound(request: Request) -> Response:
        request.scope["gateway.service"] = service
        return await endpoint(request)

    bound.__name__ = endpoint.__name__
    bound.__doc__ = endpoint.__doc__
    return bound


def _service_routes(settings: Settings, upstreams: Upstreams) -> list[BaseRoute]:
    public = settings.public_url
    roots = [ServiceRoot(settings.base_path, upstreams.default, public)]
    roots += [ServiceRoot(f"{settings.base_path}/upstreams/{u.name}", u, public) for u in upstreams]
    return [
        Route(root.path + path, _bind(endpoint, root), methods=[method])
        for root in roots
        for method, path, endpoint in _SERVICE_ROUTES
    ]


async def health(request: Request) -> Response:
    """Liveness and pool statistics (query and storage associations); does not touch the PACS."""
    upstreams: Upstreams = request.app.state.upstreams
    pools = [asdict(u.client.pool.stats()) | {"kind": "query"} for u in upstreams]
    pools += [asdict(u.retrieval.retriever.pool.stats()) | {"kind": "retrieve"} for u in upstreams]
    pools += [asdict(u.store.pool.stats()) | {"kind": "store"} for u in upstreams]
    caches = {u.name: u.retrieval.cache.stats() for u in upstreams}
    return _json(200, {"status": "ok", "version": __version__, "pools": pools, "caches": caches})


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


def create_app(settings: Settings) -> Starlette:
    """Build the gateway's ASGI application for `settings`.

    The upstream pools open when the ASGI lifespan starts and close, releasing every
    association, when it ends.
    """
    sockets.install()
    storage.receive_into_files()
    upstreams = Upstreams(settings)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with upstreams:
            names = ", ".join(f"{u.name}={u.address}" for u in settings.upstreams)
            logger.info("serving DICOMweb at %s for upstreams %s", settings.base_path, names)
            yield
        logger.info("gateway stopped")

    middleware = []
    if settings.cors_origins:
        middleware.append(
            Middleware(
                CORSMiddleware,
                allow_origins=list(settings.cors_origins),
                allow_methods=["GET", "POST", "OPTIONS"],
                allow_headers=["Accept", "Authorization", "Content-Type", "Prefer", "If-None-Match"],
                expose_headers=["Warning", "Content-Location", "Retry-After", "ETag"],
            )
        )
    routes: list[BaseRoute] = [
        Route("/health", health, methods=["GET"]),
        Route("/ready", ready, methods=["GET"]),
        *_service_routes(settings, upstreams),
        *fhir_routes(settings, upstreams),
    ]
    app = Starlette(
        routes=routes,
        middleware=middleware,
        lifespan=lifespan,
        exception_handlers={GatewayError: _gateway_error, HTTPException: _http_error, Exception: _unexpected_error},
    )
    app.state.settings = settings
    app.state.upstreams = upstreams
    return app

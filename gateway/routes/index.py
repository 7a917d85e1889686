"""What a person or a tool finds at the top: ``/``, each DICOMweb root, ``/openapi.json`` and ``/metrics``."""

from __future__ import annotations

from functools import cache
from pathlib import Path

import orjson
from prometheus_client import CollectorRegistry
from starlette.requests import Request
from starlette.responses import Response

from gateway import __version__
from gateway.metrics import CONTENT_TYPE, UpstreamsCollector, render
from gateway.routes.common import ServiceRoot
from gateway.settings import Settings
from gateway.upstreams import Upstreams

__all__ = ["OPENAPI_PATH", "describe_gateway", "describe_service", "metrics", "openapi_document"]

OPENAPI_PATH = Path(__file__).resolve().parents[1] / "openapi.json"
"""The OpenAPI document, shipped in the package (a link to the repository's ``openapi/openapi.json``)."""

_QIDO_RESOURCES = ("studies", "series", "instances")


def _json(body: object) -> Response:
    return Response(orjson.dumps(body, option=orjson.OPT_INDENT_2), media_type="application/json")


def _origin(request: Request) -> str:
    settings: Settings = request.app.state.settings
    upstreams: Upstreams = request.app.state.upstreams
    return ServiceRoot("", upstreams.default, settings.public_url).root_url(request)


async def describe_gateway(request: Request) -> Response:
    """``GET /``: name, version, and links to the services and the operations endpoints."""
    settings: Settings = request.app.state.settings
    origin = _origin(request)
    links = {
        "dicomweb": origin + settings.base_path,
        "fhir": origin + "/fhir",
        "openapi": origin + "/openapi.json",
        "health": origin + "/health",
        "ready": origin + "/ready",
    }
    if settings.metrics:
        links["metrics"] = origin + "/metrics"
    upstreams = {u.name: f"{origin}{settings.base_path}/upstreams/{u.name}" for u in settings.upstreams}
    return _json({"name": "dicomweb-gateway", "version": __version__, "links": links, "upstreams": upstreams})


async def describe_service(request: Request) -> Response:
    """``GET /dicom-web`` (and each upstream's root): which PACS it fronts, and its QIDO-RS and STOW-RS resources."""
    root: ServiceRoot = request.scope["gateway.service"]
    url = root.root_url(request)
    return _json(
        {
            "service": "DICOMweb (QIDO-RS, WADO-RS, STOW-RS)",
            "upstream": root.upstream.name,
            "resources": {name: f"{url}/{name}" for name in _QIDO_RESOURCES},
            "openapi": _origin(request) + "/openapi.json",
        }
    )


@cache
def _openapi_bytes() -> bytes:
    return OPENAPI_PATH.read_bytes()


async def openapi_document(request: Request) -> Response:
    """``GET /openapi.json``: the OpenAPI 3.1 description of every route."""
    return Response(_openapi_bytes(), media_type="application/json")


async def metrics(request: Request) -> Response:
    """``GET /metrics``: every metric in the Prometheus text format."""
    live: CollectorRegistry = request.app.state.live_metrics
    return Response(render(live), media_type=CONTENT_TYPE)


def live_metrics(upstreams: Upstreams) -> CollectorRegistry:
    """A registry of the figures read from `upstreams` when scraped (pools, caches)."""
    registry = CollectorRegistry(auto_describe=True)
    registry.register(UpstreamsCollector(upstreams))
    return registry

"""``GET /fhir/.well-known/smart-configuration`` (SMART App Launch 2.x §2.0.4), from the issuer's discovery.

It tells a SMART app where to get a token (the first configured issuer's authorization and
token endpoints), which scopes the gateway understands, and, as an associated endpoint, the
DICOMweb root that accepts the same tokens (``/fhir``: the default upstream's root;
``/fhir/upstreams/NAME``: that upstream's). It is open: an app reads it before it has a token.
"""

from __future__ import annotations

import re
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.auth.keys import KeysUnavailable
from gateway.auth.middleware import operation_outcome
from gateway.auth.policy import FHIR_ROOT
from gateway.auth.tokens import Authenticator
from gateway.routes.common import ServiceRoot
from gateway.settings import Settings
from gateway.upstreams import Upstreams

__all__ = ["IMAGING_SCOPES", "smart_configuration", "smart_routes"]

IMAGING_SCOPES = (
    "patient/ImagingStudy.rs",
    "user/ImagingStudy.rs",
    "system/ImagingStudy.rs",
    "user/ImagingStudy.c",
    "system/ImagingStudy.c",
    "patient/ImagingStudy.read",
    "user/ImagingStudy.read",
    "system/ImagingStudy.read",
    "user/ImagingStudy.write",
    "system/ImagingStudy.write",
)
"""The scopes that govern this gateway (v2, then their v1 forms); see :mod:`gateway.auth.scopes`."""

_RESOURCE_SCOPE = re.compile(r"^(patient|user|system)/")
# Copied from the issuer's discovery document when it has them.
_COPIED = (
    "issuer",
    "jwks_uri",
    "authorization_endpoint",
    "token_endpoint",
    "token_endpoint_auth_methods_supported",
    "token_endpoint_auth_signing_alg_values_supported",
    "registration_endpoint",
    "introspection_endpoint",
    "revocation_endpoint",
    "userinfo_endpoint",
    "response_types_supported",
)


def _fhir_json(status: int, body: object) -> Response:
    return Response(orjson.dumps(body), status, media_type="application/fhir+json")


async def smart_configuration(request: Request) -> Response:
    """The SMART configuration of ``/fhir`` or ``/fhir/upstreams/{upstream}``."""
    settings: Settings = request.app.state.settings
    upstreams: Upstreams = request.app.state.upstreams
    authenticator: Authenticator | None = request.app.state.authenticator
    name = request.path_params.get("upstream")
    upstream = upstreams.default if name is None else upstreams.get(name)
    if upstream is None:
        return _fhir_json(404, operation_outcome(404, f"no upstream is called {name!r}"))
    if authenticator is None or not authenticator.issuers:
        detail = "no token issuer is configured: this gateway serves without authorization"
        return _fhir_json(404, operation_outcome(404, detail))
    keys = next(iter(authenticator.issuers.values()))
    try:
        discovery = await keys.discovery()
    except KeysUnavailable as exc:
        return _fhir_json(503, operation_outcome(503, f"the authorization server cannot be reached: {exc}"))
    root = settings.base_path + (f"/upstreams/{name}" if name is not None else "")
    capabilities = list(settings.auth.smart_capabilities)
    challenge_methods = [m for m in discovery.get("code_challenge_methods_supported", ["S256"]) if m != "plain"]
    # The issuer's other scopes (openid, launch/patient ...), without those of other resource types.
    other_scopes = [
        s for s in discovery.get("scopes_supported", []) if isinstance(s, str) and not _RESOURCE_SCOPE.match(s)
    ]
    body: dict[str, Any] = {key: discovery[key] for key in _COPIED if key in discovery}
    body |= {
        "grant_types_supported": discovery.get("grant_types_supported", ["authorization_code", "client_credentials"]),
        "code_challenge_methods_supported": challenge_methods or ["S256"],
        "scopes_supported": [*IMAGING_SCOPES, *dict.fromkeys(other_scopes)],
        "capabilities": capabilities,
        "associated_endpoints": [
            {"url": ServiceRoot(root, upstream, settings.public_url).root_url(request), "capabilities": capabilities}
        ],
    }
    return Response(orjson.dumps(body), media_type="application/json")


def smart_routes() -> list[Route]:
    """The routes, for ``/fhir`` and ``/fhir/upstreams/{upstream}``; mount them before any ``/fhir`` mount."""
    path = "/.well-known/smart-configuration"
    return [
        Route(FHIR_ROOT + path, smart_configuration, methods=["GET"]),
        Route(FHIR_ROOT + "/upstreams/{upstream}" + path, smart_configuration, methods=["GET"]),
    ]

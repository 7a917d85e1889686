"""What browsers need: CORS for the configured origins, and a Cross-Origin-Resource-Policy on WADO-RS answers.

Web viewers send their token in the ``Authorization`` header, which a CORS preflight must allow
(a ``*`` in ``Access-Control-Allow-Headers`` does not cover it). Preflight answers are cached by
the browser for ``cors_max_age`` seconds. Credentials mode (cookies) is off unless configured,
and never combined with the ``*`` origin (the settings refuse it).

``Cross-Origin-Resource-Policy`` (default ``same-origin``) keeps other sites from embedding
rendered images and bulk data with ``<img>`` and the like (no-CORS requests); CORS requests of
the configured origins are not affected by it.
"""

from __future__ import annotations

from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.auth.policy import Transaction, classify
from gateway.settings import Settings

__all__ = ["ResourcePolicyMiddleware", "browser_middleware"]


class ResourcePolicyMiddleware:
    """Adds ``Cross-Origin-Resource-Policy`` to every WADO-RS answer (rendered, thumbnail, bulk data ...)."""

    def __init__(self, app: ASGIApp, *, base_path: str, policy: str) -> None:
        self.app = app
        self._base_path = base_path
        self._header = (b"cross-origin-resource-policy", policy.encode())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or classify(scope["method"], scope["path"], self._base_path).transaction not in (
            Transaction.WADO,
        ):
            await self.app(scope, receive, send)
            return

        async def send_with_policy(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), self._header]
            await send(message)

        await self.app(scope, receive, send_with_policy)


def browser_middleware(settings: Settings) -> list[Middleware]:
    """CORS (when origins are configured), then the resource policy; outermost first."""
    middleware = []
    if settings.cors_origins:
        middleware.append(
            Middleware(
                CORSMiddleware,
                allow_origins=list(settings.cors_origins),
                allow_methods=["GET", "POST", "OPTIONS"],
                allow_headers=["Accept", "Authorization", "Content-Type", "If-None-Match", "Prefer", "X-Request-ID"],
                allow_credentials=settings.cors_allow_credentials,
                expose_headers=[
                    "Warning",
                    "Content-Location",
                    "Retry-After",
                    "WWW-Authenticate",
                    "X-Request-ID",
                    "ETag",
                    "X-Gateway-C-Finds",
                ],
                max_age=settings.cors_max_age,
            )
        )
    middleware.append(
        Middleware(ResourcePolicyMiddleware, base_path=settings.base_path, policy=settings.resource_policy)
    )
    return middleware

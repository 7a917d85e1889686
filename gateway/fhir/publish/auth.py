"""Credentials for the FHIR server: none, a static bearer token, or OAuth2 client credentials.

The client-credentials token (RFC 6749 §4.4) is fetched on first use and cached until shortly
before its ``expires_in``; a 401 from the FHIR server drops it so that the next request fetches
a new one (the caller retries once).
"""

from __future__ import annotations

import base64
import logging
import time
from collections.abc import Callable
from typing import Protocol
from urllib.parse import quote_plus

import anyio
import httpx

from gateway.settings import FhirPublishSettings

__all__ = ["ClientCredentials", "Credentials", "NoCredentials", "StaticBearer", "TokenError", "credentials_for"]

logger = logging.getLogger(__name__)

_EXPIRY_MARGIN = 30.0
"""Seconds before ``expires_in`` runs out that a cached token is no longer used (at most a tenth of its life)."""


class TokenError(Exception):
    """The token endpoint did not give a token; the message says why (never the secret)."""


class Credentials(Protocol):
    """What authorizes a request to the FHIR server."""

    refreshable: bool
    """True when :meth:`invalidate` can make a 401 go away (a new token may be fetched)."""

    async def authorization(self, client: httpx.AsyncClient) -> str | None:
        """The ``Authorization`` header's value, or ``None`` to send none; may raise :class:`TokenError`."""
        ...

    def invalidate(self) -> None:
        """Forget the current token (the server answered 401 with it)."""
        ...


class NoCredentials:
    """An open FHIR server (or one behind a network boundary): no ``Authorization`` header."""

    refreshable = False

    async def authorization(self, client: httpx.AsyncClient) -> str | None:
        return None

    def invalidate(self) -> None:
        pass


class StaticBearer:
    """A configured bearer token; a 401 with it cannot be cured by retrying."""

    refreshable = False

    def __init__(self, token: str) -> None:
        self._header = f"Bearer {token}"

    async def authorization(self, client: httpx.AsyncClient) -> str | None:
        return self._header

    def invalidate(self) -> None:
        pass


class ClientCredentials:
    """An OAuth2 client-credentials grant, its token cached until shortly before it expires.

    Parameters
    ----------
    settings : FhirPublishSettings
        ``token_url``, ``client_id``, ``client_secret``, ``token_scope`` and ``token_auth_method``.
    clock : callable, optional
        Monotonic seconds; tests replace it.
    """

    refreshable = True

    def __init__(self, settings: FhirPublishSettings, clock: Callable[[], float] = time.monotonic) -> None:
        self._settings = settings
        self._clock = clock
        self._token: str | None = None
        self._expires_at = 0.0
        self._lock = anyio.Lock()
        self.fetched = 0
        """Tokens fetched so far (for tests and logs)."""

    async def authorization(self, client: httpx.AsyncClient) -> str | None:
        async with self._lock:  # one fetch at a time: concurrent publications share the new token
            if self._token is None or self._clock() >= self._expires_at:
                self._token, lifetime = await self._fetch(client)
                margin = min(_EXPIRY_MARGIN, lifetime / 10) if lifetime is not None else 0.0
                self._expires_at = self._clock() + lifetime - margin if lifetime is not None else float("inf")
            return f"Bearer {self._token}"

    def invalidate(self) -> None:
        self._token = None

    async def _fetch(self, client: httpx.AsyncClient) -> tuple[str, float | None]:
        settings = self._settings
        form = {"grant_type": "client_credentials"}
        if settings.token_scope:
            form["scope"] = settings.token_scope
        headers = {"Accept": "application/json"}
        if settings.token_auth_method == "client_secret_basic":
            headers["Authorization"] = _basic_authorization(settings.client_id, settings.client_secret)
        else:
            form |= {"client_id": settings.client_id, "client_secret": settings.client_secret}
        try:
            response = await client.post(settings.token_url, data=form, headers=headers)
        except httpx.TransportError as exc:
            raise TokenError(f"token endpoint {settings.token_url}: {type(exc).__name__}: {exc}") from exc
        if not response.is_success:
            # RFC 6749 §5.2: {"error": "invalid_client", "error_description": ...}
            raise TokenError(
                f"token endpoint {settings.token_url} answered {response.status_code}: {_error_text(response)}"
            )
        try:
            body = response.json()
            token = body["access_token"]
            expires_in = body.get("expires_in")
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise TokenError(f"token endpoint {settings.token_url}: no access_token in its answer") from exc
        if not isinstance(token, str) or not token:
            raise TokenError(f"token endpoint {settings.token_url}: no access_token in its answer")
        self.fetched += 1
        lifetime = float(expires_in) if isinstance(expires_in, int | float) and expires_in > 0 else None
        logger.info("FHIR publish: token from %s (expires in %s s)", settings.token_url, lifetime or "?")
        return token, lifetime


def _basic_authorization(client_id: str, client_secret: str) -> str:
    # RFC 6749 §2.3.1: both are form-urlencoded before they are joined and base64-encoded.
    pair = f"{quote_plus(client_id)}:{quote_plus(client_secret)}"
    return "Basic " + base64.b64encode(pair.encode()).decode("ascii")


def _error_text(response: httpx.Response) -> str:
    try:
        body = response.json()
        return f"{body.get('error', '?')} {body.get('error_description', '')}".strip()
    except (ValueError, AttributeError):
        return response.text[:200] or response.reason_phrase


def credentials_for(settings: FhirPublishSettings) -> Credentials:
    """The credentials `settings` configure."""
    if settings.bearer_token:
        return StaticBearer(settings.bearer_token)
    if settings.token_url:
        return ClientCredentials(settings)
    return NoCredentials()

"""Bearer token -> :class:`Principal`: JWTs checked locally, opaque tokens by RFC 7662 introspection.

A JWT is accepted when its algorithm is on the allow-list (public-key algorithms only), its
``iss`` is a configured issuer, its signature checks against that issuer's published key (see
:mod:`gateway.auth.keys`), its ``aud`` names this gateway and ``exp`` / ``nbf`` hold within the
leeway. Everything else is a 401 (:class:`~gateway.errors.Unauthorized`); an issuer that cannot
be reached while no key of it is cached is a 503 (:class:`~gateway.errors.AuthorizationUnavailable`).

A viewer sends the same token with each of its many requests: a token once verified is
remembered (bounded LRU) until it expires, or until its issuer publishes a different key set.
"""

from __future__ import annotations

import binascii
import hashlib
import json
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import httpx
import jwt
from jwt.utils import base64url_decode

from gateway.auth.keys import IssuerKeys, KeysUnavailable, UnknownKey
from gateway.auth.scopes import Grant, parse_scopes
from gateway.errors import AuthorizationUnavailable, Unauthorized
from gateway.settings import AuthSettings

__all__ = ["Authenticator", "Principal"]

logger = logging.getLogger(__name__)

_INTROSPECTION_TTL = 60.0  # seconds an introspection answer is reused (a revoked token lives this long at most)
_INTROSPECTION_CACHE = 1024
_VERIFIED_CACHE = 4096


@dataclass(frozen=True)
class Principal:
    """Who a valid token speaks for, and what it grants."""

    subject: str | None
    client_id: str | None
    issuer: str | None
    grants: tuple[Grant, ...]
    patient: str | None
    """The patient claim (``patient_claim``), for patient-scoped tokens."""


def _peek(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The header and claims of a JWT, unverified: only to pick the issuer and key that verify it."""
    try:
        header_part, payload_part, _ = token.split(".")
        header = json.loads(base64url_decode(header_part))
        claims = json.loads(base64url_decode(payload_part))
    except (ValueError, binascii.Error) as exc:
        raise Unauthorized(f"malformed token: {type(exc).__name__}") from exc
    if not isinstance(header, dict) or not isinstance(claims, dict):
        raise Unauthorized("malformed token: its header and claims must be JSON objects")
    return header, claims


def _text(value: object) -> str | None:
    if isinstance(value, str) and value:
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return None


class Authenticator:
    """Checks bearer tokens against the configured issuers and introspection endpoint.

    Use as an async context manager: it owns the HTTP client the keys are fetched with.
    """

    def __init__(self, settings: AuthSettings, http: httpx.AsyncClient | None = None) -> None:
        self.settings = settings
        self._http = http or httpx.AsyncClient(timeout=httpx.Timeout(settings.http_timeout), follow_redirects=False)
        self.issuers = {
            issuer: IssuerKeys(issuer, self._http, refetch_interval=settings.key_refetch_interval)
            for issuer in settings.issuers
        }
        self._introspected: OrderedDict[bytes, tuple[float, Principal]] = OrderedDict()
        self._verified: OrderedDict[str, tuple[float, IssuerKeys, int, Principal]] = OrderedDict()

    async def __aenter__(self) -> Authenticator:
        for keys in self.issuers.values():
            await keys.prefetch()  # now rather than on the first request; a failure is only logged
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._http.aclose()

    async def authenticate(self, token: str) -> Principal:
        """The principal `token` speaks for.

        Raises
        ------
        Unauthorized
            The token is malformed, expired, not yet valid, wrongly signed or not for this gateway.
        AuthorizationUnavailable
            The token cannot be checked now.
        """
        if token.count(".") == 2:
            return await self._verify_jwt(token)
        if self.settings.introspection_url:
            return await self._introspect(token)
        raise Unauthorized("the bearer token is not a JWT")

    async def _verify_jwt(self, token: str) -> Principal:
        remembered = self._verified.get(token)
        if remembered is not None:
            until, issuer_keys, generation, principal = remembered
            if time.time() <= until and issuer_keys.generation == generation:
                self._verified.move_to_end(token)
                return principal
            del self._verified[token]
        header, unverified = _peek(token)
        algorithm = header.get("alg")
        if algorithm not in self.settings.algorithms:
            raise Unauthorized(f"tokens signed with {algorithm!r} are not accepted")
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise Unauthorized("malformed token: its kid is not a string")
        keys = self.issuers.get(unverified.get("iss"))  # type: ignore[arg-type]
        if keys is None:
            raise Unauthorized(f"tokens of issuer {unverified.get('iss')!r} are not accepted")
        try:
            key = await keys.key(kid, algorithm)
        except UnknownKey as exc:
            raise Unauthorized(str(exc)) from exc
        except KeysUnavailable as exc:
            raise AuthorizationUnavailable(f"the issuer's signing keys cannot be fetched: {exc}") from exc
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[algorithm],
                audience=self.settings.audience,
                issuer=keys.issuer,
                leeway=self.settings.leeway,
                options={"require": ["exp", "iss", "aud"]},
            )
        except jwt.ExpiredSignatureError as exc:
            raise Unauthorized("the token has expired") from exc
        except jwt.ImmatureSignatureError as exc:
            raise Unauthorized("the token is not valid yet (nbf)") from exc
        except jwt.PyJWTError as exc:
            raise Unauthorized(f"invalid token: {exc}") from exc
        principal = self._principal(claims)
        self._verified[token] = (float(claims["exp"]) + self.settings.leeway, keys, keys.generation, principal)
        while len(self._verified) > _VERIFIED_CACHE:
            self._verified.popitem(last=False)
        return principal

    def _principal(self, claims: dict[str, Any]) -> Principal:
        scopes = claims.get("scope", claims.get("scp", ""))
        return Principal(
            subject=_text(claims.get("sub")),
            client_id=_text(claims.get("client_id") or claims.get("azp") or claims.get("cid")),
            issuer=_text(claims.get("iss")),
            grants=parse_scopes(scopes if isinstance(scopes, str | list) else ""),
            patient=_text(claims.get(self.settings.patient_claim)),
        )

    async def _introspect(self, token: str) -> Principal:
        """RFC 7662: ask the authorization server about an opaque token (answers reused briefly)."""
        digest = hashlib.sha256(token.encode()).digest()
        now = time.time()
        cached = self._introspected.get(digest)
        if cached is not None and cached[0] > now:
            return cached[1]
        settings = self.settings
        try:
            response = await self._http.post(
                settings.introspection_url,
                data={"token": token, "token_type_hint": "access_token"},
                auth=(settings.introspection_client_id, settings.introspection_client_secret),
                headers={"Accept": "application/json"},
            )
            response.raise_for_status()
            answer = response.json()
        except (httpx.HTTPError, ValueError) as exc:
            logger.warning("token introspection at %s failed: %s", settings.introspection_url, exc)
            raise AuthorizationUnavailable(f"token introspection failed: {type(exc).__name__}") from exc
        if not isinstance(answer, dict) or answer.get("active") is not True:
            raise Unauthorized("the token is not active")
        expires = answer.get("exp")
        if isinstance(expires, int | float) and expires < now - settings.leeway:
            raise Unauthorized("the token has expired")
        audience = answer.get("aud")
        audiences = [audience] if isinstance(audience, str) else audience if isinstance(audience, list) else None
        if settings.audience and audiences is not None and settings.audience not in audiences:
            raise Unauthorized("the token is not for this gateway (aud)")
        if settings.issuers and "iss" in answer and answer["iss"] not in settings.issuers:
            raise Unauthorized(f"tokens of issuer {answer['iss']!r} are not accepted")
        principal = self._principal(answer)
        until = now + _INTROSPECTION_TTL
        if isinstance(expires, int | float):
            until = min(until, expires)
        self._introspected[digest] = (until, principal)
        while len(self._introspected) > _INTROSPECTION_CACHE:
            self._introspected.popitem(last=False)
        return principal

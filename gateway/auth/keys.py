"""An issuer's signing keys: OpenID discovery -> ``jwks_uri`` -> JWKS, cached.

The keys are fetched once and kept. A token signed with a ``kid`` the cache does not hold makes
the keys be fetched again (the issuer rotated them), but at most once per ``refetch_interval``,
so a flood of made-up kids does not become a flood of fetches. Keys older than ``max_age`` are
refreshed on the next use; if the issuer cannot be reached then, the cached keys go on working
(a JWKS outage must not lock every client out).

Only public keys whose type fits the token's algorithm are used (RSA for RS/PS, EC on the
algorithm's curve for ES, OKP for EdDSA): a public key is never used as an HMAC secret.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import anyio
import httpx
from jwt.algorithms import get_default_algorithms
from jwt.exceptions import InvalidKeyError

from gateway.settings import ConfigError, check_secure_url

__all__ = ["IssuerKeys", "KeysUnavailable", "UnknownKey"]

logger = logging.getLogger(__name__)

_KEY_TYPES = {"RS": "RSA", "PS": "RSA", "ES": "EC", "Ed": "OKP"}
_CURVES = {"ES256": "P-256", "ES384": "P-384", "ES512": "P-521", "EdDSA": None}
_ALGORITHMS = get_default_algorithms()


class UnknownKey(Exception):
    """The token names a key the issuer does not publish (or one unfit for its algorithm)."""


class KeysUnavailable(Exception):
    """The issuer's keys could not be fetched, and none are cached."""


def _fits(jwk: dict[str, Any], algorithm: str) -> bool:
    if jwk.get("kty") != _KEY_TYPES.get(algorithm[:2]):
        return False
    if jwk.get("use", "sig") != "sig" or jwk.get("alg", algorithm) != algorithm:
        return False
    curve = _CURVES.get(algorithm)
    return curve is None or jwk.get("crv") == curve


class IssuerKeys:
    """The discovery document and signing keys of one issuer.

    Parameters
    ----------
    issuer : str
        The issuer URL, exactly as tokens carry it in ``iss``.
    http : httpx.AsyncClient
        The client (with its timeouts) every fetch goes through.
    refetch_interval : float
        Least seconds between two fetches.
    max_age : float
        Seconds after which cached keys are refreshed on their next use.
    """

    def __init__(self, issuer: str, http: httpx.AsyncClient, *, refetch_interval: float, max_age: float = 3600.0):
        self.issuer = issuer
        self._http = http
        self._refetch_interval = refetch_interval
        self._max_age = max_age
        self._lock = anyio.Lock()
        self._discovery: dict[str, Any] | None = None
        self._jwks: list[dict[str, Any]] | None = None
        self._prepared: dict[tuple[str | None, str], Any] = {}
        self._fetched_at = 0.0
        self._attempted_at: float | None = None
        self._last_error = "not fetched yet"
        self.fetches = 0
        """JWKS fetches attempted so far (the discovery document's included)."""
        self.generation = 0
        """Bumped whenever the published key set changes: what was verified with the old one is checked again."""

    async def prefetch(self) -> None:
        """Fetch the discovery document and the keys now; a failure is logged, not raised."""
        await self._refresh()

    async def discovery(self) -> dict[str, Any]:
        """The issuer's OpenID discovery document (cached).

        Raises
        ------
        KeysUnavailable
            It could not be fetched.
        """
        if self._discovery is None:
            await self._refresh()
        if self._discovery is None:
            raise KeysUnavailable(f"{self.issuer}: {self._last_error}")
        return self._discovery

    async def key(self, kid: str | None, algorithm: str) -> Any:
        """The public key that checks a token signed by `kid` with `algorithm`.

        Raises
        ------
        UnknownKey
            The issuer publishes no such key fit for `algorithm`.
        KeysUnavailable
            No keys could be fetched yet.
        """
        if self._jwks is None or time.monotonic() - self._fetched_at > self._max_age:
            await self._refresh()
        prepared = self._prepared.get((kid, algorithm))
        if prepared is not None:
            return prepared
        jwk = self._find(kid, algorithm)
        if jwk is None:
            await self._refresh()  # a rotation, unless one was fetched moments ago
            jwk = self._find(kid, algorithm)
        if jwk is None:
            if self._jwks is None:
                raise KeysUnavailable(f"{self.issuer}: {self._last_error}")
            raise UnknownKey(f"the issuer publishes no {algorithm} key {kid!r}")
        try:
            prepared = _ALGORITHMS[algorithm].from_jwk(jwk)
        except (InvalidKeyError, ValueError, KeyError) as exc:
            raise UnknownKey(f"key {kid!r} of the issuer is unusable: {exc}") from exc
        self._prepared[(kid, algorithm)] = prepared
        return prepared

    def _find(self, kid: str | None, algorithm: str) -> dict[str, Any] | None:
        candidates = [k for k in self._jwks or () if _fits(k, algorithm)]
        if kid is not None:
            return next((k for k in candidates if k.get("kid") == kid), None)
        # A token without kid: acceptable only when the issuer has a single key for its algorithm.
        return candidates[0] if len(candidates) == 1 else None

    async def _refresh(self) -> None:
        async with self._lock:
            now = time.monotonic()
            if self._attempted_at is not None and now - self._attempted_at < self._refetch_interval:
                return
            self._attempted_at = now
            self.fetches += 1
            try:
                discovery = await self._get_json(self.issuer.rstrip("/") + "/.well-known/openid-configuration")
                if discovery.get("issuer") != self.issuer:
                    raise ValueError(f"its discovery document names issuer {discovery.get('issuer')!r}")
                jwks_uri = discovery.get("jwks_uri")
                if not isinstance(jwks_uri, str):
                    raise ValueError("its discovery document has no jwks_uri")
                check_secure_url("jwks_uri", jwks_uri)
                keys = (await self._get_json(jwks_uri)).get("keys")
                if not isinstance(keys, list):
                    raise ValueError(f"{jwks_uri} holds no 'keys' list")
            except (httpx.HTTPError, ValueError, ConfigError) as exc:
                self._last_error = f"{type(exc).__name__}: {exc}"
                kept = f"keeping the {len(self._jwks)} cached keys" if self._jwks is not None else "no keys cached"
                logger.warning("cannot fetch the signing keys of %s (%s): %s", self.issuer, kept, self._last_error)
                return
            self._discovery = discovery
            published = [k for k in keys if isinstance(k, dict)]
            if published != self._jwks:
                self.generation += 1
                self._prepared.clear()
            self._jwks = published
            self._fetched_at = now
            logger.info("fetched %d signing keys of %s", len(self._jwks), self.issuer)

    async def _get_json(self, url: str) -> dict[str, Any]:
        response = await self._http.get(url, headers={"Accept": "application/json"})
        response.raise_for_status()
        document = response.json()
        if not isinstance(document, dict):
            raise ValueError(f"{url} is not a JSON object")
        return document

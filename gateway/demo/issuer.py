"""A token issuer for tests and benchmarks: keys made with cryptography, tokens signed with PyJWT, and
a tiny OpenID provider on 127.0.0.1 that serves its discovery document and JWKS over real HTTP.

Never a real authorization server: it signs whatever it is asked to.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = ["AUDIENCE", "LocalIssuer", "SigningKey", "mint"]

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

AUDIENCE = "https://gateway.test/dicom-web"


@dataclass
class SigningKey:
    """A private key, its kid, and the algorithm tokens are signed with."""

    kid: str
    algorithm: str
    private: Any
    """A cryptography private key (RSA or EC)."""

    @classmethod
    def rsa(cls, kid: str = "rsa-1") -> SigningKey:
        return cls(kid, "RS256", rsa.generate_private_key(public_exponent=65537, key_size=2048))

    @classmethod
    def ec(cls, kid: str = "ec-1") -> SigningKey:
        return cls(kid, "ES256", ec.generate_private_key(ec.SECP256R1()))

    def jwk(self) -> dict[str, Any]:
        """The public key as a JWK, with its kid, use and alg."""
        codec = RSAAlgorithm if self.algorithm.startswith(("RS", "PS")) else ECAlgorithm
        document: dict[str, Any] = json.loads(codec.to_jwk(self.private.public_key()))
        return document | {"kid": self.kid, "use": "sig", "alg": self.algorithm}


def mint(
    key: SigningKey,
    issuer: str,
    *,
    scope: str = "system/ImagingStudy.rs",
    audience: str = AUDIENCE,
    lifetime: float = 300,
    headers: dict[str, Any] | None = None,
    **claims: Any,
) -> str:
    """A signed access token; `claims` override or add (``exp=None`` removes one)."""
    now = int(time.time())
    payload: dict[str, Any] = {"iss": issuer, "aud": audience, "sub": "alice", "client_id": "viewer", "scope": scope}
    payload |= {"iat": now, "exp": now + int(lifetime)}
    payload |= claims
    payload = {k: v for k, v in payload.items() if v is not None}
    return jwt.encode(payload, key.private, algorithm=key.algorithm, headers={"kid": key.kid, **(headers or {})})


@dataclass
class LocalIssuer:
    """An OpenID provider on 127.0.0.1 (a real HTTP server in a thread) publishing `keys`."""

    keys: list[SigningKey] = field(default_factory=lambda: [SigningKey.rsa(), SigningKey.ec()])
    down: bool = False
    """Answer 503 to everything (an outage)."""
    requests: Counter[str] = field(default_factory=Counter)
    port: int = 0

    @property
    def url(self) -> str:
        """The issuer URL (``iss``)."""
        return f"http://127.0.0.1:{self.port}/realms/test"

    def token(self, key: SigningKey | None = None, **options: Any) -> str:
        """A token of this issuer, signed with `key` (its first key by default); see :func:`mint`."""
        return mint(key or self.keys[0], self.url, **options)

    def discovery(self) -> dict[str, Any]:
        """Its OpenID discovery document."""
        return {
            "issuer": self.url,
            "jwks_uri": f"{self.url}/certs",
            "authorization_endpoint": f"{self.url}/auth",
            "token_endpoint": f"{self.url}/token",
            "grant_types_supported": ["authorization_code", "client_credentials"],
            "code_challenge_methods_supported": ["plain", "S256"],
            "scopes_supported": ["openid", "launch/patient", "patient/Observation.rs"],
        }

    def jwks(self) -> dict[str, Any]:
        """Its JWKS: the public keys of `keys`."""
        return {"keys": [k.jwk() for k in self.keys]}

    def __enter__(self) -> LocalIssuer:
        issuer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                issuer.requests[self.path] += 1
                documents: dict[str, Callable[[], dict[str, Any]]] = {
                    "/realms/test/.well-known/openid-configuration": issuer.discovery,
                    "/realms/test/certs": issuer.jwks,
                }
                if issuer.down or self.path not in documents:
                    self.send_error(503 if issuer.down else 404)
                    return
                body = json.dumps(documents[self.path]()).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name="issuer", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

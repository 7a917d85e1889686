"""Bearer token checks against a respx-mocked issuer: discovery, JWKS, rotation, outages, forgeries."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import jwt
import pytest
import respx
from cryptography.hazmat.primitives import serialization

from gateway.auth.scopes import Context, Permission, contexts_granting
from gateway.auth.tokens import Authenticator
from gateway.demo.issuer import AUDIENCE, SigningKey, mint
from gateway.errors import AuthorizationUnavailable, Unauthorized
from gateway.settings import AuthSettings

ISSUER = "https://login.test/realms/hospital"
RSA_KEY = SigningKey.rsa("rsa-1")
EC_KEY = SigningKey.ec("ec-1")

pytestmark = pytest.mark.anyio


class MockIssuer:
    """respx routes for the issuer's discovery document and JWKS, with the keys it publishes now."""

    def __init__(self, router: respx.MockRouter, keys: list[SigningKey]) -> None:
        self.keys = keys
        self.down = False
        router.get(f"{ISSUER}/.well-known/openid-configuration").mock(side_effect=self._discovery)
        self.jwks = router.get(f"{ISSUER}/protocol/certs").mock(side_effect=self._jwks)

    def _discovery(self, request: httpx.Request) -> httpx.Response:
        if self.down:
            return httpx.Response(503)
        return httpx.Response(200, json={"issuer": ISSUER, "jwks_uri": f"{ISSUER}/protocol/certs"})

    def _jwks(self, request: httpx.Request) -> httpx.Response:
        if self.down:
            raise httpx.ConnectError("connection refused")
        return httpx.Response(200, json={"keys": [k.jwk() for k in self.keys]})


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def issuer() -> Any:
    with respx.mock(assert_all_called=False) as router:
        yield MockIssuer(router, [RSA_KEY, EC_KEY])


def settings(**options: Any) -> AuthSettings:
    return AuthSettings(issuers=(ISSUER,), audience=AUDIENCE, **options)


@pytest.fixture
async def authenticator(issuer: MockIssuer) -> AsyncIterator[Authenticator]:
    async with Authenticator(settings(key_refetch_interval=0.2)) as checker:
        yield checker


async def test_rs256_and_es256_tokens_give_the_principal(authenticator: Authenticator) -> None:
    for key in (RSA_KEY, EC_KEY):
        token = mint(key, ISSUER, scope="patient/ImagingStudy.rs openid launch/patient", patient="PAT0001")
        principal = await authenticator.authenticate(token)
        assert (principal.subject, principal.client_id, principal.issuer, principal.patient) == (
            "alice",
            "viewer",
            ISSUER,
            "PAT0001",
        )
        assert contexts_granting(principal.grants, Permission.SEARCH) == {Context.PATIENT}
        assert contexts_granting(principal.grants, Permission.CREATE) == frozenset()


async def test_keys_are_fetched_once_for_many_tokens(issuer: MockIssuer, authenticator: Authenticator) -> None:
    for _ in range(20):
        await authenticator.authenticate(mint(RSA_KEY, ISSUER))
    assert issuer.jwks.call_count == 1


@pytest.mark.parametrize(
    ("claims", "message"),
    [
        ({"exp": -120}, "expired"),  # seconds from now
        ({"nbf": 120}, "not valid yet"),
        ({"audience": "https://other-service.test"}, "(?i)audience"),
        ({"exp": None}, "exp"),
        ({"aud": None}, "aud"),
    ],
)
async def test_expired_early_and_misaddressed_tokens_are_refused(
    authenticator: Authenticator, claims: dict[str, Any], message: str
) -> None:
    now = int(time.time())
    claims = {k: now + v if k in ("exp", "nbf") and v is not None else v for k, v in claims.items()}
    with pytest.raises(Unauthorized, match=message):
        await authenticator.authenticate(mint(RSA_KEY, ISSUER, **claims))


async def test_leeway_admits_small_clock_skew(authenticator: Authenticator) -> None:
    token = mint(RSA_KEY, ISSUER, exp=int(time.time()) - 5, nbf=int(time.time()) + 5)
    assert (await authenticator.authenticate(token)).subject == "alice"


async def test_another_issuer_is_refused_even_with_a_published_key(authenticator: Authenticator) -> None:
    with pytest.raises(Unauthorized, match="issuer"):
        await authenticator.authenticate(mint(RSA_KEY, "https://evil.test/realms/hospital"))


async def test_a_token_signed_by_another_key_with_a_known_kid_is_refused(authenticator: Authenticator) -> None:
    forger = SigningKey.rsa("rsa-1")
    with pytest.raises(Unauthorized, match="[Ss]ignature"):
        await authenticator.authenticate(mint(forger, ISSUER))


def _unsigned(payload: dict[str, Any], header: dict[str, Any]) -> str:
    def part(document: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(document).encode()).rstrip(b"=").decode()

    return f"{part(header)}.{part(payload)}."


async def test_alg_none_is_refused(authenticator: Authenticator) -> None:
    claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": "mallory", "exp": int(time.time()) + 300}
    with pytest.raises(Unauthorized, match="'none'"):
        await authenticator.authenticate(_unsigned(claims, {"alg": "none", "kid": "rsa-1"}))


async def test_hs256_signed_with_the_public_key_is_refused(authenticator: Authenticator) -> None:
    """Algorithm confusion: the RSA public key (which anyone has) used as an HMAC secret."""
    public_pem = RSA_KEY.private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": "mallory", "exp": int(time.time()) + 300}
    header = {"alg": "HS256", "kid": "rsa-1", "typ": "JWT"}
    signing_input = _unsigned(claims, header).rstrip(".")
    signature = hmac.new(public_pem, signing_input.encode(), hashlib.sha256).digest()
    token = signing_input + "." + base64.urlsafe_b64encode(signature).rstrip(b"=").decode()
    with pytest.raises(Unauthorized, match="'HS256'"):
        await authenticator.authenticate(token)


async def test_an_ec_key_is_never_used_for_an_rsa_algorithm(authenticator: Authenticator) -> None:
    token = jwt.encode(
        {"iss": ISSUER, "aud": AUDIENCE, "exp": int(time.time()) + 300},
        EC_KEY.private,
        algorithm="ES256",
        headers={"kid": "rsa-1"},  # an RSA key's kid on an EC-signed token
    )
    with pytest.raises(Unauthorized, match="no ES256 key 'rsa-1'"):
        await authenticator.authenticate(token)


async def test_malformed_tokens_are_refused(authenticator: Authenticator) -> None:
    for token in ("not-a-jwt", "a.b.c", "eyJhbGciOiJSUzI1NiJ9.e30.sig"):
        with pytest.raises(Unauthorized):
            await authenticator.authenticate(token)


async def test_rotation_a_new_kid_fetches_the_keys_again(issuer: MockIssuer, authenticator: Authenticator) -> None:
    await authenticator.authenticate(mint(RSA_KEY, ISSUER))
    rotated = SigningKey.rsa("rsa-2")
    issuer.keys = [rotated, EC_KEY]
    time.sleep(0.25)  # past key_refetch_interval
    assert (await authenticator.authenticate(mint(rotated, ISSUER))).subject == "alice"
    assert issuer.jwks.call_count == 2


async def test_a_flood_of_made_up_kids_fetches_the_keys_once_per_interval(issuer: MockIssuer) -> None:
    async with Authenticator(settings(key_refetch_interval=3600)) as checker:
        for number in range(50):
            with pytest.raises(Unauthorized, match="no RS256 key"):
                await checker.authenticate(mint(SigningKey(f"made-up-{number}", "RS256", RSA_KEY.private), ISSUER))
        assert issuer.jwks.call_count == 1  # the start-up fetch; the unknown kids fetched nothing more
        assert (await checker.authenticate(mint(RSA_KEY, ISSUER))).subject == "alice"


async def test_a_jwks_outage_keeps_the_cached_keys_working(issuer: MockIssuer, authenticator: Authenticator) -> None:
    await authenticator.authenticate(mint(RSA_KEY, ISSUER))
    issuer.down = True
    time.sleep(0.25)
    # A new kid makes the gateway try the issuer, which is down; the cached keys still check tokens.
    with pytest.raises(Unauthorized):
        await authenticator.authenticate(mint(SigningKey.rsa("rsa-9"), ISSUER))
    assert (await authenticator.authenticate(mint(RSA_KEY, ISSUER))).subject == "alice"
    assert (await authenticator.authenticate(mint(EC_KEY, ISSUER))).subject == "alice"


async def test_an_issuer_down_from_the_start_is_a_503_not_a_401(issuer: MockIssuer) -> None:
    issuer.down = True
    async with Authenticator(settings(key_refetch_interval=0)) as checker:
        with pytest.raises(AuthorizationUnavailable):
            await checker.authenticate(mint(RSA_KEY, ISSUER))
        issuer.down = False
        assert (await checker.authenticate(mint(RSA_KEY, ISSUER))).subject == "alice"


async def test_a_discovery_document_naming_another_issuer_is_not_trusted() -> None:
    with respx.mock(assert_all_called=False) as router:
        router.get(f"{ISSUER}/.well-known/openid-configuration").respond(
            json={"issuer": "https://evil.test", "jwks_uri": "https://evil.test/certs"}
        )
        async with Authenticator(settings()) as checker:
            with pytest.raises(AuthorizationUnavailable, match="names issuer"):
                await checker.authenticate(mint(RSA_KEY, ISSUER))


INTROSPECTION = "https://login.test/introspect"


async def test_opaque_tokens_are_introspected_and_the_answer_reused() -> None:
    auth = AuthSettings(
        introspection_url=INTROSPECTION,
        introspection_client_id="gateway",
        introspection_client_secret="s3cret",
        audience=AUDIENCE,
    )
    answers = {
        "good": {"active": True, "scope": "user/ImagingStudy.read", "sub": "bob", "client_id": "pipeline"},
        "revoked": {"active": False},
        "elsewhere": {"active": True, "scope": "user/ImagingStudy.read", "aud": "https://other.test"},
    }
    with respx.mock as router:
        route = router.post(INTROSPECTION).mock(
            side_effect=lambda request: httpx.Response(
                200, json=answers[dict(httpx.QueryParams(request.content.decode()))["token"]]
            )
        )
        async with Authenticator(auth) as checker:
            for _ in range(3):
                principal = await checker.authenticate("good")
            assert (principal.subject, principal.client_id) == ("bob", "pipeline")
            assert contexts_granting(principal.grants, Permission.READ) == {Context.USER}
            assert route.call_count == 1
            assert route.calls[0].request.headers["authorization"].startswith("Basic ")
            with pytest.raises(Unauthorized, match="not active"):
                await checker.authenticate("revoked")
            with pytest.raises(Unauthorized, match="aud"):
                await checker.authenticate("elsewhere")
        router.post(INTROSPECTION).mock(side_effect=httpx.ConnectTimeout("timeout"))
        async with Authenticator(auth) as checker:
            with pytest.raises(AuthorizationUnavailable):
                await checker.authenticate("other")


async def test_a_key_withdrawn_by_the_issuer_no_longer_admits_tokens_verified_before(
    issuer: MockIssuer, authenticator: Authenticator
) -> None:
    old = mint(RSA_KEY, ISSUER)
    assert (await authenticator.authenticate(old)).subject == "alice"
    assert (await authenticator.authenticate(old)).subject == "alice"  # remembered: no second verification
    rotated = SigningKey.rsa("rsa-2")
    issuer.keys = [rotated]
    time.sleep(0.25)
    await authenticator.authenticate(mint(rotated, ISSUER))  # fetches the new key set
    with pytest.raises(Unauthorized, match="no RS256 key 'rsa-1'"):
        await authenticator.authenticate(old)


async def test_a_remembered_token_still_expires(issuer: MockIssuer) -> None:
    async with Authenticator(settings(leeway=0)) as checker:
        token = mint(RSA_KEY, ISSUER, exp=int(time.time()) + 1)
        assert (await checker.authenticate(token)).subject == "alice"
        time.sleep(2.1)
        with pytest.raises(Unauthorized, match="expired"):
            await checker.authenticate(token)

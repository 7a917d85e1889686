"""The access-control middleware (pure ASGI, so streamed answers stay streamed).

For every HTTP request it decides, from the method and path alone (:mod:`gateway.auth.policy`),
whether a token is needed and which right; checks the bearer token; works out whether the token
is bound to one patient; for WADO-RS checks that the study is that patient's before the route
runs (:mod:`gateway.auth.ownership`); and writes the audit line once the answer is sent.

What the routes get in the ASGI scope:

- ``scope["gateway.patient_id"]``: the PatientID a patient-bound token is restricted to; absent
  or None means unrestricted. QIDO-RS and FHIR searches narrow to it, STOW-RS stores only its
  instances, FHIR reads of another patient answer 403.
- ``scope["gateway.principal"]``: the :class:`~gateway.auth.tokens.Principal` (absent when anonymous).
- ``scope["gateway.audit"]``: the request's :class:`~gateway.auth.audit.AuditRecord`, to which a
  route may add the studies and patients it touched.

Denials answer 401 (``WWW-Authenticate: Bearer ... error="invalid_token"``, or only the realm
when no token was sent, RFC 6750 §3.1) or 403 (``error="insufficient_scope"``): on ``/fhir`` as
an OperationOutcome, elsewhere with the gateway's JSON error body.
"""

from __future__ import annotations

import logging
import re

import orjson
from starlette.datastructures import Headers
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.auth.audit import AuditRecord
from gateway.auth.ownership import StudyOwnership
from gateway.auth.patient import PATIENT_SCOPE_KEY, is_valid_patient_id
from gateway.auth.policy import Access, Transaction, classify
from gateway.auth.scopes import Context, Permission, contexts_granting, required_scope
from gateway.auth.tokens import Authenticator, Principal
from gateway.errors import AuthorizationUnavailable, Forbidden, GatewayError, Unauthorized, UpstreamError
from gateway.query.params import parse_uid
from gateway.retrieve.service import Target
from gateway.upstreams import Upstreams

__all__ = ["PRINCIPAL_SCOPE_KEY", "AuthMiddleware", "operation_outcome"]

logger = logging.getLogger(__name__)

PRINCIPAL_SCOPE_KEY = "gateway.principal"
AUDIT_SCOPE_KEY = "gateway.audit"
REALM = "dicomweb-gateway"
_UNQUOTABLE = re.compile(r'["\\\x00-\x1f\x7f]')
_FHIR_ISSUE_CODES = {400: "invalid", 401: "security", 403: "forbidden", 404: "not-found", 503: "transient"}


class _MissingToken(Unauthorized):
    """No bearer token at all: the challenge names the realm only (RFC 6750 §3.1)."""


def operation_outcome(status: int, detail: str, code: str | None = None) -> dict[str, object]:
    """A FHIR OperationOutcome with one error issue."""
    issue_code = code or _FHIR_ISSUE_CODES.get(status, "exception")
    return {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": issue_code, "diagnostics": detail}],
    }


def _challenge(exc: GatewayError, permission: Permission | None) -> str | None:
    realm = f'Bearer realm="{REALM}"'
    description = _UNQUOTABLE.sub(" ", exc.detail)
    if isinstance(exc, _MissingToken):
        return realm
    if isinstance(exc, Unauthorized):
        return f'{realm}, error="invalid_token", error_description="{description}"'
    if isinstance(exc, Forbidden):
        scope = f', scope="{required_scope(permission)}"' if permission is not None else ""
        return f'{realm}, error="insufficient_scope", error_description="{description}"{scope}'
    return None


def _bearer_token(headers: Headers) -> str:
    authorization = headers.get("authorization", "")
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer":
        raise _MissingToken("this resource needs a bearer token (Authorization: Bearer ...)")
    token = token.strip()
    if not token or " " in token:
        raise Unauthorized("malformed Authorization header")
    return token


class AuthMiddleware:
    """Authenticates and authorizes every request that is not open; audits those that touch patient data.

    Parameters
    ----------
    app : ASGIApp
        The application behind.
    base_path : str
        The DICOMweb root (``/dicom-web``).
    authenticator : Authenticator or None
        None serves anonymously (no issuer configured): nothing is checked, everything is audited.
    ownership : StudyOwnership
        The WADO-RS check of patient-bound tokens.
    upstreams : Upstreams
        Where that check sends its C-FINDs.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        base_path: str,
        authenticator: Authenticator | None,
        ownership: StudyOwnership,
        upstreams: Upstreams,
    ) -> None:
        self.app = app
        self._base_path = base_path
        self._authenticator = authenticator
        self._ownership = ownership
        self._upstreams = upstreams

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        preflight = scope["method"] == "OPTIONS" and "access-control-request-method" in headers
        access = classify(scope["method"], scope["path"], self._base_path, preflight=preflight)
        if access.open:
            await self.app(scope, receive, send)
            return
        client = scope.get("client")
        record = AuditRecord(
            transaction=access.transaction.value if access.transaction is not None else None,
            method=scope["method"],
            path=scope["path"],
            source=client[0] if client else None,
            studies={access.study} if access.study else set(),
        )
        scope[AUDIT_SCOPE_KEY] = record
        try:
            await self._admit(scope, headers, access, record)
        except GatewayError as exc:
            record.status, record.detail, record.completed = exc.status_code, exc.detail, True
            log = logger.warning if isinstance(exc, UpstreamError | AuthorizationUnavailable) else logger.info
            log("%s %s -> %d %s", scope["method"], scope["path"], exc.status_code, exc.detail)
            await self._deny(exc, access, scope, receive, send)
            record.emit()
            return

        async def watched_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                record.status = message["status"]
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                record.completed = True
            await send(message)

        try:
            await self.app(scope, receive, watched_send)
        finally:
            if access.transaction is not None:
                record.emit()

    async def _admit(self, scope: Scope, headers: Headers, access: Access, record: AuditRecord) -> None:
        """Return if the request may go on, having set the scope keys; else raise what to answer."""
        if self._authenticator is None:
            scope[PATIENT_SCOPE_KEY] = None
            return
        principal = await self._authenticator.authenticate(_bearer_token(headers))
        scope[PRINCIPAL_SCOPE_KEY] = principal
        record.subject, record.client_id, record.issuer = principal.subject, principal.client_id, principal.issuer
        patient = self._patient_restriction(principal, access.permission)
        scope[PATIENT_SCOPE_KEY] = patient
        record.patient_id = patient
        if patient is not None and access.transaction is Transaction.WADO and access.study is not None:
            upstream = self._upstreams.default if access.upstream is None else self._upstreams.get(access.upstream)
            if upstream is None:
                return  # the route answers 404
            target = Target(
                parse_uid(access.study, "study UID"),
                parse_uid(access.series, "series UID") if access.series is not None else None,
                parse_uid(access.instance, "SOP instance UID") if access.instance is not None else None,
            )
            await self._ownership.check(upstream, target, patient)

    @staticmethod
    def _patient_restriction(principal: Principal, permission: Permission | None) -> str | None:
        """The PatientID the request is restricted to (None: unrestricted); Forbidden if not granted."""
        if permission is None:
            return None  # a path that is neither DICOMweb nor FHIR: any valid token, and then a 404
        contexts = contexts_granting(principal.grants, permission)
        if Context.SYSTEM in contexts or Context.USER in contexts:
            return None
        if Context.PATIENT not in contexts:
            raise Forbidden(f"the token grants no ImagingStudy scope with the {permission.name.lower()} permission")
        if principal.patient is None:
            raise Forbidden("the token has a patient/ scope but no patient")
        if not is_valid_patient_id(principal.patient):
            raise Forbidden("the token's patient is not a usable PatientID (at most 64 characters, no wildcards)")
        return principal.patient

    async def _deny(self, exc: GatewayError, access: Access, scope: Scope, receive: Receive, send: Send) -> None:
        headers = dict(exc.headers)
        challenge = _challenge(exc, access.permission)
        if challenge is not None:
            headers["WWW-Authenticate"] = challenge
        if isinstance(exc, AuthorizationUnavailable):
            headers.setdefault("Retry-After", "10")
        if access.is_fhir:
            body, media_type = orjson.dumps(operation_outcome(exc.status_code, exc.detail)), "application/fhir+json"
        else:
            body, media_type = orjson.dumps(exc.to_json()), "application/json"
        await Response(body, exc.status_code, headers=headers, media_type=media_type)(scope, receive, send)

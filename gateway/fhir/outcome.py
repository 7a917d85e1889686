"""FHIR errors: OperationOutcome bodies, and the gateway's errors mapped onto them."""

from __future__ import annotations

from typing import Any

from gateway.errors import (
    BadRequest,
    GatewayError,
    NotAcceptable,
    NotFound,
    PayloadTooLarge,
    PoolExhausted,
    UnsupportedMediaType,
    UpstreamError,
    UpstreamTimeout,
)

__all__ = ["OutcomeError", "operation_outcome", "outcome_error"]


class OutcomeError(Exception):
    """A FHIR request that fails with `status` and an OperationOutcome of issue `code`.

    Apart from :class:`~gateway.errors.GatewayError` on purpose: the FHIR answers (403 among
    them) are rendered by the FHIR routes only, never by the DICOMweb error handler.
    """

    def __init__(self, status: int, code: str, diagnostics: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(diagnostics)
        self.status = status
        self.code = code
        self.diagnostics = diagnostics
        self.headers = headers or {}


def operation_outcome(code: str, diagnostics: str, severity: str = "error") -> dict[str, Any]:
    """An OperationOutcome with one issue (the same shape in R4 and R5)."""
    return {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": severity, "code": code, "diagnostics": diagnostics}],
    }


# (error class, issue code), most specific first: the IssueType value set (R4 and R5 share it).
_ISSUE_CODES: tuple[tuple[type[GatewayError], str], ...] = (
    (BadRequest, "invalid"),
    (NotFound, "not-found"),
    (NotAcceptable, "not-supported"),
    (UnsupportedMediaType, "not-supported"),
    (PayloadTooLarge, "too-costly"),
    (UpstreamTimeout, "timeout"),
    (PoolExhausted, "transient"),
    (UpstreamError, "exception"),
)


def outcome_error(exc: GatewayError) -> OutcomeError:
    """The FHIR form of a gateway error: same status and headers (Retry-After), an issue code."""
    code = next((c for cls, c in _ISSUE_CODES if isinstance(exc, cls)), "exception")
    return OutcomeError(exc.status_code, code, exc.detail, headers=exc.headers)

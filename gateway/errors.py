"""Every failure the gateway reports to a client, each with its HTTP status.

The tree::

    GatewayError                       500
    ├── BadRequest                     400  malformed query, UID, date, number ...
    ├── Unauthorized                   401  no valid bearer token (WWW-Authenticate: Bearer ...)
    ├── Forbidden                      403  a valid token without the right, or another patient's data
    ├── NotFound                       404
    ├── NotAcceptable                  406  no media type the client accepts
    ├── RequestTimeout                 408  a request body that stopped coming (Connection: close)
    ├── PayloadTooLarge                413  a request body above max_upload_bytes
    ├── UnsupportedMediaType           415  a request body of a type the resource does not take
    ├── AuthorizationUnavailable       503  the token cannot be checked now (issuer keys, introspection)
    └── UpstreamError                  502  the PACS misbehaved
        ├── UpstreamUnavailable        502  connection refused or association rejected
        │   └── UpstreamTlsError       502  DICOM TLS failed: certificate, CA, hostname, client certificate
        ├── UpstreamFailureStatus      502  a DIMSE failure status (carries it)
        ├── UpstreamTimeout            504  no answer within the configured timeout
        └── PoolExhausted              503  no association free in time (Retry-After)

Foreign exceptions (pynetdicom, sockets) are translated once, in ``gateway.dimse.status``.
"""

from __future__ import annotations

__all__ = [
    "AuthorizationUnavailable",
    "BadRequest",
    "Forbidden",
    "GatewayError",
    "NotAcceptable",
    "NotFound",
    "PayloadTooLarge",
    "PoolExhausted",
    "RequestTimeout",
    "UpstreamError",
    "UpstreamFailureStatus",
    "UpstreamTimeout",
    "UpstreamTlsError",
    "UnsupportedMediaType",
    "UpstreamUnavailable",
    "Unauthorized",
]


class GatewayError(Exception):
    """Base of every error the gateway answers with; renders as a JSON body."""

    status_code = 500
    title = "Internal error"

    def __init__(self, detail: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.headers = headers or {}

    def to_json(self) -> dict[str, object]:
        """The JSON error body (RFC 9457 problem-details shape)."""
        return {"status": self.status_code, "title": self.title, "detail": self.detail}


class BadRequest(GatewayError):
    """The request is malformed; nothing was sent upstream."""

    status_code = 400
    title = "Bad request"


class Unauthorized(GatewayError):
    """No bearer token, or one that is malformed, expired or wrongly signed (RFC 6750 §3.1 invalid_token)."""

    status_code = 401
    title = "Unauthorized"


class Forbidden(GatewayError):
    """A valid token that does not grant the request (RFC 6750 §3.1 insufficient_scope)."""

    status_code = 403
    title = "Forbidden"


class NotFound(GatewayError):
    """No such resource."""

    status_code = 404
    title = "Not found"


class NotAcceptable(GatewayError):
    """The client accepts no media type the resource can be answered in."""

    status_code = 406
    title = "Not acceptable"


class RequestTimeout(GatewayError):
    """The client stopped sending its request body, or sent it too slowly (``http_body_timeout``).

    The rest of the body will not be read, so the connection is closed after the answer.
    """

    status_code = 408
    title = "Request timeout"

    def __init__(self, detail: str) -> None:
        super().__init__(detail, headers={"Connection": "close"})


class PayloadTooLarge(GatewayError):
    """The request body is larger than the gateway accepts (``max_upload_bytes``)."""

    status_code = 413
    title = "Payload too large"


class UnsupportedMediaType(GatewayError):
    """The request body's Content-Type is not one the resource takes."""

    status_code = 415
    title = "Unsupported media type"


class AuthorizationUnavailable(GatewayError):
    """The token cannot be checked now: the issuer's keys or its introspection endpoint are unreachable."""

    status_code = 503
    title = "Authorization unavailable"


class UpstreamError(GatewayError):
    """The upstream PACS failed to answer properly."""

    status_code = 502
    title = "Upstream PACS error"

    def __init__(self, detail: str, *, upstream: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail, headers=headers)
        self.upstream = upstream

    def to_json(self) -> dict[str, object]:
        return {**super().to_json(), "upstream": self.upstream}


class UpstreamUnavailable(UpstreamError):
    """The PACS could not be reached, or it rejected or aborted the association."""

    title = "Upstream PACS unavailable"


class UpstreamTlsError(UpstreamUnavailable):
    """The TLS handshake with the PACS failed: its certificate, its name, or the gateway's certificate."""

    title = "Upstream PACS TLS failure"


class UpstreamFailureStatus(UpstreamError):
    """The PACS answered a DIMSE failure status (PS3.7 Annex C)."""

    title = "Upstream PACS failure status"

    def __init__(self, detail: str, *, upstream: str, status: int) -> None:
        super().__init__(detail, upstream=upstream)
        self.status = status

    def to_json(self) -> dict[str, object]:
        return {**super().to_json(), "dimseStatus": f"0x{self.status:04X}"}


class UpstreamTimeout(UpstreamError):
    """The PACS did not answer within the configured timeout."""

    status_code = 504
    title = "Upstream PACS timeout"


class PoolExhausted(UpstreamError):
    """Every association to the PACS stayed busy for the whole acquire timeout."""

    status_code = 503
    title = "Upstream PACS busy"

    def __init__(self, detail: str, *, upstream: str, retry_after: int = 1) -> None:
        super().__init__(detail, upstream=upstream, headers={"Retry-After": str(retry_after)})

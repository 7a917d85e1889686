"""What every DICOMweb route shares: the service root it is served under, and media types."""

from __future__ import annotations

from dataclasses import dataclass

from starlette.requests import Request

from gateway.errors import NotAcceptable
from gateway.settings import Settings
from gateway.upstreams import Upstream
from gateway.wado.limits import WorkLimits

__all__ = ["DICOM_JSON", "NotAcceptable", "ServiceRoot", "require_json_accept", "work_limits"]

DICOM_JSON = "application/dicom+json"
_JSON_TYPES = frozenset({DICOM_JSON, "application/json", "*/*", "application/*"})


@dataclass(frozen=True)
class ServiceRoot:
    """A DICOMweb service root (``/dicom-web`` or ``/dicom-web/upstreams/NAME``) and its PACS.

    `public_url`, when configured, is where clients reach the gateway (``https://pacs.example.org``
    behind a reverse proxy); URLs in answers (RetrieveURL, BulkDataURI) are built on it.
    """

    path: str
    upstream: Upstream
    public_url: str = ""

    def root_url(self, request: Request) -> str:
        """The absolute URL of this service root, as the client reached it."""
        if self.public_url:
            return self.public_url + self.path
        netloc = request.url.netloc
        server = request.scope.get("server")
        # dicomweb-client sends "Host: 127.0.0.1" without the port it connected to. A Host that
        # names no port while the gateway listens on a non-default one, with no proxy headers,
        # is such a client: name the port, or every URL in the answer would point at port 80.
        forwarded = any(h in request.headers for h in ("forwarded", "x-forwarded-host", "x-forwarded-proto"))
        # (A server on a Unix socket has no port: ASGI gives it as None.)
        if server and server[1] is not None and ":" not in netloc.rsplit("]", 1)[-1] and not forwarded:
            port = server[1]
            if port != {"http": 80, "https": 443}.get(request.url.scheme):
                netloc = f"{netloc}:{port}"
        return f"{request.url.scheme}://{netloc}{self.path}"


def require_json_accept(request: Request) -> None:
    """Raise :class:`NotAcceptable` unless the Accept header admits DICOM JSON.

    QIDO-RS may also be answered as ``multipart/related; type="application/dicom+xml"``
    (PS3.18 §10.6.3.1); the gateway answers JSON only, and says so.
    """
    accept = request.headers.get("accept", "")
    if not accept.strip():
        return
    for item in accept.split(","):
        media_type = item.split(";")[0].strip().lower()
        quality = next((p.split("=")[1].strip() for p in item.split(";")[1:] if p.strip().startswith("q=")), "1")
        if media_type in _JSON_TYPES and quality not in ("0", "0.0", "0.00", "0.000"):
            return
    raise NotAcceptable(f"cannot answer in {accept!r}; this resource is served as {DICOM_JSON}")


def work_limits(request: Request) -> WorkLimits:
    """The bounds of one WADO-RS request's work, from the gateway's settings."""
    settings: Settings = request.app.state.settings
    return WorkLimits(settings.max_frames_per_request, settings.max_rendered_size, settings.max_decoded_pixels)

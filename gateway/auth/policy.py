"""Which right a request needs, decided from its method and path alone (pure).

Open, without a token (they carry no patient data):

- ``/health`` and ``/ready``: orchestrators probe them without credentials;
- ``/``, ``/openapi.json`` and ``/metrics``: the API's description and operational counters;
- ``/fhir/metadata`` and ``/fhir/.well-known/smart-configuration`` (and their
  ``/fhir/upstreams/NAME/...`` forms): a SMART client reads them to learn how to get a token;
- CORS preflights (``OPTIONS`` with ``Access-Control-Request-Method``): browsers send no
  credentials with them.

Everything else needs a valid token; below a DICOMweb root or ``/fhir`` also the right:

=======================================  ===========  =================================
request                                  transaction  SMART v2 permission on ImagingStudy
=======================================  ===========  =================================
GET .../studies, .../series, .../instances  QIDO        ``s`` (search)
GET .../studies/{study}/... (other)      WADO         ``r`` (read)
POST .../studies[/{study}]               STOW         ``c`` (create)
GET /fhir/{type}/{id}[/_history/{v}]     FHIR         ``r``
GET /fhir/..., POST /fhir/.../_search    FHIR         ``s``
POST, PUT/PATCH, DELETE /fhir/...        FHIR         ``c``, ``u``, ``d``
=======================================  ===========  =================================
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum

from gateway.auth.scopes import Permission

__all__ = ["FHIR_ROOT", "Access", "Transaction", "classify"]

FHIR_ROOT = "/fhir"
_OPEN_PATHS = frozenset({"/", "/health", "/ready", "/openapi.json", "/metrics"})
_OPEN_FHIR = re.compile(r"^/fhir(?:/upstreams/[^/]+)?/(?:metadata|\.well-known/smart-configuration)$")
_UPSTREAM = re.compile(r"^/upstreams/(?P<name>[^/]+)(?P<rest>/.*)?$")
_QIDO_RESOURCES = frozenset({"studies", "series", "instances"})
_FHIR_WRITES = {"POST": Permission.CREATE, "PUT": Permission.UPDATE, "PATCH": Permission.UPDATE}


class Transaction(Enum):
    """What kind of patient data a request touches (the audit trail's ``transaction``)."""

    QIDO = "QIDO"
    WADO = "WADO"
    STOW = "STOW"
    FHIR = "FHIR"


@dataclass(frozen=True)
class Access:
    """What a request is, as far as access control is concerned."""

    open: bool
    """Served without a token."""
    transaction: Transaction | None = None
    """None for a path that is neither DICOMweb nor FHIR (a token is still needed: it answers 404)."""
    permission: Permission | None = None
    upstream: str | None = None
    """The named upstream of ``.../upstreams/NAME/...``; None for the default one."""
    study: str | None = None
    series: str | None = None
    instance: str | None = None

    @property
    def is_fhir(self) -> bool:
        """Whether denials answer an OperationOutcome (FHIR) rather than the JSON error body."""
        return self.transaction is Transaction.FHIR


def _split_upstream(rest: str) -> tuple[str | None, str]:
    match = _UPSTREAM.match(rest)
    if match is None:
        return None, rest
    return match["name"], match["rest"] or ""


def _dicomweb(method: str, rest: str, upstream: str | None) -> Access:
    segments = rest.strip("/").split("/") if rest.strip("/") else []
    uids = {
        name: segments[index + 1]
        for name, index, collection in (("study", 0, "studies"), ("series", 2, "series"), ("instance", 4, "instances"))
        if len(segments) > index + 1 and segments[index] == collection
    }
    if method == "POST":
        return Access(False, Transaction.STOW, Permission.CREATE, upstream, uids.get("study"))
    if segments and len(segments) % 2 == 1 and segments[-1] in _QIDO_RESOURCES:
        permission, transaction = Permission.SEARCH, Transaction.QIDO
    else:
        permission, transaction = Permission.READ, Transaction.WADO
    return Access(False, transaction, permission, upstream, uids.get("study"), uids.get("series"), uids.get("instance"))


def _fhir(method: str, rest: str, upstream: str | None) -> Access:
    segments = [s for s in rest.split("/") if s]
    if method in _FHIR_WRITES and not (segments and segments[-1] == "_search"):
        permission = _FHIR_WRITES[method]
    elif method == "DELETE":
        permission = Permission.DELETE
    elif len(segments) in (2, 4) and not segments[1].startswith("_") and method in ("GET", "HEAD"):
        permission = Permission.READ  # {type}/{id} and {type}/{id}/_history/{version}
    else:
        permission = Permission.SEARCH
    return Access(False, Transaction.FHIR, permission, upstream)


def classify(method: str, path: str, base_path: str, *, preflight: bool = False) -> Access:
    """What the request `method` `path` needs (`base_path`: the DICOMweb root, ``/dicom-web``)."""
    method = "GET" if method == "HEAD" else method
    if preflight or path in _OPEN_PATHS or _OPEN_FHIR.match(path):
        return Access(open=True)
    if path == base_path or path.startswith(base_path + "/"):
        upstream, rest = _split_upstream(path[len(base_path) :])
        return _dicomweb(method, rest, upstream)
    if path == FHIR_ROOT or path.startswith(FHIR_ROOT + "/"):
        upstream, rest = _split_upstream(path[len(FHIR_ROOT) :])
        return _fhir(method, rest, upstream)
    return Access(open=False)

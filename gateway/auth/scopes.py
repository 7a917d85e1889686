"""SMART on FHIR scopes (App Launch v1 and v2) as they govern ImagingStudy, and so DICOMweb (pure).

A scope is ``{context}/{resource}.{permissions}``:

- context: ``patient`` (the token's patient only), ``user`` (what the user may see: the gateway
  cannot tell more, so everything) or ``system`` (a machine client: everything);
- resource: ``ImagingStudy`` or ``*``; the SMART imaging access convention has the FHIR scope
  ``ImagingStudy`` govern the DICOMweb endpoint too;
- permissions, v2: a non-empty subset of ``cruds`` in that order (``rs``, ``c``, ``cruds`` ...);
  v1: ``read`` (= ``rs``), ``write`` (= ``cud``) or ``*`` (= ``cruds``).

A v2 scope with a query (``patient/ImagingStudy.rs?category=...``) restricts by a search the
gateway does not run, so it grants nothing here. Other scopes (``openid``, ``launch/patient``,
``fhirUser``, other resource types) are ignored.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum

__all__ = ["Context", "Grant", "Permission", "contexts_granting", "parse_scopes", "required_scope"]


class Permission(Enum):
    """The SMART v2 permission a request needs (one letter of ``cruds``)."""

    CREATE = "c"
    READ = "r"
    UPDATE = "u"
    DELETE = "d"
    SEARCH = "s"


class Context(Enum):
    """Whose data a scope covers."""

    PATIENT = "patient"
    USER = "user"
    SYSTEM = "system"


_V1 = {"read": "rs", "write": "cud", "*": "cruds"}
_SCOPE = re.compile(r"^(?P<context>patient|user|system)/(?P<resource>ImagingStudy|\*)\.(?P<permissions>[a-z*]+)$")
_V2_PERMISSIONS = re.compile(r"^c?r?u?d?s?$")


@dataclass(frozen=True)
class Grant:
    """What one scope grants: permissions in a context."""

    context: Context
    permissions: frozenset[Permission]


def _grant(scope: str) -> Grant | None:
    match = _SCOPE.match(scope)
    if match is None:
        return None
    letters = _V1.get(match["permissions"], match["permissions"])
    if not letters or not _V2_PERMISSIONS.match(letters):
        return None
    return Grant(Context(match["context"]), frozenset(Permission(letter) for letter in letters))


def parse_scopes(scopes: str | list[str] | tuple[str, ...]) -> tuple[Grant, ...]:
    """The ImagingStudy grants of a token's scopes (a space-separated ``scope`` claim, or a list)."""
    items = scopes.split() if isinstance(scopes, str) else [s for s in scopes if isinstance(s, str)]
    return tuple(grant for grant in map(_grant, items) if grant is not None)


def contexts_granting(grants: tuple[Grant, ...], permission: Permission) -> frozenset[Context]:
    """The contexts in which `grants` allow `permission`."""
    return frozenset(grant.context for grant in grants if permission in grant.permissions)


def required_scope(permission: Permission) -> str:
    """The v2 scope to name in a 403's ``WWW-Authenticate`` (RFC 6750 §3: the scope needed)."""
    return f"user/ImagingStudy.{permission.value} patient/ImagingStudy.{permission.value}"

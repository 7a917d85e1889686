"""The contracts of the resource builders the publisher is given (``gateway.fhir.study``, ``gateway.fhir.endpoint``).

They are injected rather than imported so that this package does not depend on how the
resources are built, and tests can publish simple resources of their own.
"""

from __future__ import annotations

from typing import Any, Protocol

from gateway.upstreams import Upstream

__all__ = ["EndpointBuilder", "ImagingStudyBuilder", "UpstreamLookup"]


class ImagingStudyBuilder(Protocol):
    """Builds a study's ImagingStudy, fresh from C-FIND; ``None`` when the PACS has no such study."""

    async def __call__(
        self, upstream: Upstream, study_uid: str, *, dicomweb_root: str, version: str
    ) -> dict[str, Any] | None: ...


class EndpointBuilder(Protocol):
    """The Endpoint resources (with stable ``id``s) that an ImagingStudy references as ``Endpoint/{id}``."""

    def __call__(self, dicomweb_root: str, version: str) -> list[dict[str, Any]]: ...


class UpstreamLookup(Protocol):
    """The configured upstreams by name (:class:`gateway.upstreams.Upstreams` is one)."""

    def get(self, name: str) -> Upstream | None: ...

"""One publication attempt of one study: build its ImagingStudy from the PACS, then PUT it and its Endpoints."""

from __future__ import annotations

import enum
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from gateway.errors import GatewayError, UpstreamError
from gateway.fhir.publish.auth import Credentials, credentials_for
from gateway.fhir.publish.builders import EndpointBuilder, ImagingStudyBuilder, UpstreamLookup
from gateway.fhir.publish.server import FhirServer, PublishFailure
from gateway.settings import FhirPublishSettings, Settings

__all__ = ["Outcome", "Publication", "StudyPublisher", "dicomweb_roots"]

logger = logging.getLogger(__name__)


class Outcome(enum.Enum):
    """How a publication attempt ended."""

    PUBLISHED = "published"
    GONE = "gone"
    """The PACS has no such study (any more): nothing to publish."""
    RETRY = "retry"
    """A transient failure, of the FHIR server or of the PACS."""
    FAILED = "failed"
    """A permanent failure: trying again will not help."""


@dataclass(frozen=True)
class Publication:
    """The result of one attempt."""

    outcome: Outcome
    detail: str
    retry_after: float | None = None
    """The FHIR server's ``Retry-After``, in seconds."""
    server_failed: bool = False
    """The FHIR server (not the PACS) failed transiently: every publication should wait, not just this one."""


def dicomweb_roots(settings: Settings) -> dict[str, str]:
    """The public DICOMweb root of each upstream: what its published Endpoints' ``address`` is."""
    base = settings.public_url + settings.base_path
    roots = {u.name: f"{base}/upstreams/{u.name}" for u in settings.upstreams}
    roots[settings.default_upstream.name] = base
    return roots


class StudyPublisher:
    """Builds and upserts one study at a time; ``async with`` owns the FHIR server's HTTP client.

    Parameters
    ----------
    settings : FhirPublishSettings
        The FHIR server, its version and credentials.
    upstreams : UpstreamLookup
        The upstreams studies are built from, by name.
    roots : mapping
        Each upstream's public DICOMweb root (:func:`dicomweb_roots`).
    build_study, build_endpoints
        The resource builders.
    credentials : Credentials, optional
        Instead of those `settings` configure.
    """

    def __init__(
        self,
        settings: FhirPublishSettings,
        upstreams: UpstreamLookup,
        roots: Mapping[str, str],
        build_study: ImagingStudyBuilder,
        build_endpoints: EndpointBuilder,
        credentials: Credentials | None = None,
    ) -> None:
        self.version = settings.publish_version
        self.server = FhirServer(settings, credentials or credentials_for(settings))
        self._upstreams = upstreams
        self._roots = dict(roots)
        self._build_study = build_study
        self._build_endpoints = build_endpoints
        self._endpoints_sent: dict[str, bytes] = {}
        """Endpoint id -> the body last PUT successfully: an unchanged Endpoint is not sent again."""

    async def __aenter__(self) -> StudyPublisher:
        await self.server.__aenter__()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.server.__aexit__(*exc_info)

    async def publish(self, upstream_name: str, study_uid: str) -> Publication:
        """One attempt at publishing the study as the PACS holds it now."""
        upstream = self._upstreams.get(upstream_name)
        if upstream is None or upstream_name not in self._roots:
            return Publication(Outcome.FAILED, f"upstream {upstream_name!r} is not configured")
        root = self._roots[upstream_name]
        try:
            resource = await self._build_study(upstream, study_uid, dicomweb_root=root, version=self.version)
        except UpstreamError as exc:
            return Publication(Outcome.RETRY, f"building ImagingStudy {study_uid} from {upstream_name}: {exc.detail}")
        except GatewayError as exc:
            return Publication(Outcome.FAILED, f"building ImagingStudy {study_uid} from {upstream_name}: {exc.detail}")
        if resource is None:
            return Publication(Outcome.GONE, f"upstream {upstream_name} has no study {study_uid}")
        try:
            for endpoint in self._referenced_endpoints(resource, root):
                await self._update_endpoint(endpoint)
            response = await self.server.upsert_imaging_study(resource, study_uid)
        except PublishFailure as exc:
            outcome = Outcome.RETRY if exc.transient else Outcome.FAILED
            return Publication(outcome, exc.detail, exc.retry_after, server_failed=exc.transient)
        where = response.headers.get("location") or response.headers.get("content-location") or ""
        return Publication(Outcome.PUBLISHED, f"{response.status_code} {where}".strip())

    def _referenced_endpoints(self, resource: dict[str, Any], root: str) -> list[dict[str, Any]]:
        available = {e["id"]: e for e in self._build_endpoints(root, self.version)}
        chosen = []
        for reference in resource.get("endpoint", []):
            text = reference.get("reference", "") if isinstance(reference, dict) else ""
            endpoint = available.get(text.removeprefix("Endpoint/")) if text.startswith("Endpoint/") else None
            if endpoint is None:
                logger.warning("FHIR publish: ImagingStudy references %r, not one of the gateway's Endpoints", text)
                continue
            chosen.append(endpoint)
        return chosen

    async def _update_endpoint(self, endpoint: dict[str, Any]) -> None:
        body = orjson.dumps(endpoint, option=orjson.OPT_SORT_KEYS)
        if self._endpoints_sent.get(endpoint["id"]) == body:
            return
        await self.server.update_endpoint(endpoint)
        self._endpoints_sent[endpoint["id"]] = body
        logger.info("FHIR publish: Endpoint/%s updated at %s", endpoint["id"], self.server.base)

"""The one place that binds publishing to the resource builders of :mod:`gateway.fhir`.

``gateway.app.create_app`` (for ``serve``) and ``dicomweb-gateway publish`` import this module
only when ``[fhir] publish_url`` is configured.
"""

from __future__ import annotations

from gateway.fhir.endpoint import endpoint_resources
from gateway.fhir.publish.publisher import Publisher
from gateway.fhir.publish.upsert import StudyPublisher, dicomweb_roots
from gateway.fhir.study import build_imaging_study
from gateway.settings import Settings
from gateway.upstreams import Upstreams

__all__ = ["make_publisher", "make_study_publisher"]


def make_study_publisher(settings: Settings, upstreams: Upstreams) -> StudyPublisher | None:
    """One-attempt publishing with the real builders; ``None`` if publishing is not configured."""
    if settings.fhir_publish is None:
        return None
    roots = dicomweb_roots(settings)
    return StudyPublisher(settings.fhir_publish, upstreams, roots, build_imaging_study, endpoint_resources)


def make_publisher(settings: Settings, upstreams: Upstreams) -> Publisher | None:
    """The app's background publisher (a :data:`~gateway.fhir.publish.publisher.PublisherFactory`)."""
    study_publisher = make_study_publisher(settings, upstreams)
    if study_publisher is None or settings.fhir_publish is None:
        return None
    return Publisher(settings.fhir_publish, study_publisher, (u.name for u in settings.upstreams))

"""FHIR: ImagingStudy and Endpoint resources built from the PACS, served and published.

Served at ``/fhir`` (the default upstream) and ``/fhir/upstreams/NAME``, as R5 (5.0.0) by
default and R4 (4.0.1) on request (:mod:`gateway.fhir.versions`). Every resource is built from
C-FINDs made for the request, so it describes what the PACS holds now (requirements F1-F6, G5).
Studies stored through STOW-RS are published to a FHIR server by :mod:`gateway.fhir.publish`.
"""

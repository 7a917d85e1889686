"""The CapabilityStatement at ``[base]/metadata``: exactly what this FHIR server does."""

from __future__ import annotations

from typing import Any

from gateway import __version__
from gateway.fhir.versions import FHIR_VERSIONS, FhirVersion

__all__ = ["capability_statement"]

_DATE = "2026-12-02"
"""When this statement's content last changed."""

_IMAGING_STUDY_PARAMETERS = (
    ("_id", "token", "StudyInstanceUID, a comma list"),
    ("identifier", "token", "urn:dicom:uid|urn:oid:StudyInstanceUID, or an accession number"),
    ("patient", "reference", "only as patient:identifier=[system|]PatientID"),
    ("subject", "reference", "only as subject:identifier=[system|]PatientID"),
    ("started", "date", "prefixes eq, gt, ge, lt, le; repeated means AND"),
    ("modality", "token", "series.modality, codes with or without the DCM system, a comma list"),
    ("series", "token", "SeriesInstanceUID, a comma list"),
    ("status", "token", "every study the PACS holds is available"),
)


def capability_statement(version: FhirVersion, base_url: str, upstream: str, *, smart: bool) -> dict[str, Any]:
    """The statement for the FHIR base at `base_url`, served from the PACS called `upstream`.

    With `smart` (a token issuer configured) its ``rest.security`` says that SMART on FHIR
    bearer tokens are required, and where the SMART configuration is.
    """
    statement: dict[str, Any] = {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": _DATE,
        "kind": "instance",
        "software": {"name": "dicomweb-gateway", "version": __version__},
        "implementation": {
            "description": f"ImagingStudy and Endpoint read from the PACS {upstream!r} with C-FIND, never stored",
            "url": base_url,
        },
        "fhirVersion": FHIR_VERSIONS[version],
        "format": ["application/fhir+json", "json"],
        "rest": [
            {
                "mode": "server",
                "documentation": (
                    "Read-only. Searches page with next links (_count up to the configured cap, _offset); "
                    "_summary=count; unknown parameters are ignored, or rejected with Prefer: handling=strict."
                ),
                "resource": [
                    {
                        "type": "ImagingStudy",
                        "interaction": [{"code": "read"}, {"code": "search-type"}],
                        "versioning": "no-version",
                        "readHistory": False,
                        "updateCreate": False,
                        "conditionalRead": "not-supported",
                        "searchInclude": ["ImagingStudy:endpoint"],
                        "searchParam": [
                            {"name": name, "type": kind, "documentation": documentation}
                            for name, kind, documentation in _IMAGING_STUDY_PARAMETERS
                        ],
                    },
                    {
                        "type": "Endpoint",
                        "interaction": [{"code": "read"}, {"code": "search-type"}],
                        "versioning": "no-version",
                        "readHistory": False,
                        "updateCreate": False,
                        "searchParam": [{"name": "_id", "type": "token", "documentation": "a comma list"}],
                    },
                ],
            }
        ],
    }
    if smart:
        statement["rest"][0]["security"] = {
            "cors": True,
            "service": [
                {
                    "coding": [
                        {
                            "system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
                            "code": "SMART-on-FHIR",
                        }
                    ]
                }
            ],
            "description": (
                "OAuth2 bearer tokens with SMART scopes on ImagingStudy (patient/, user/ or system/; v1 and v2); "
                f"the authorization server is described at {base_url}/.well-known/smart-configuration"
            ),
        }
    return statement

"""The gateway's DICOMweb service as FHIR Endpoint resources (requirement F4)."""

from __future__ import annotations

import hashlib
from typing import Any

__all__ = ["CONNECTION_TYPE_SYSTEM", "endpoint_ids", "endpoint_resources"]

CONNECTION_TYPE_SYSTEM = "http://terminology.hl7.org/CodeSystem/endpoint-connection-type"
_PAYLOAD_TYPE = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/endpoint-payload-type", "code": "any"}]}

# (connection type, what it is, media types it answers or takes)
_SERVICES: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("dicom-wado-rs", "WADO-RS", ("application/dicom", "application/dicom+json", "application/octet-stream")),
    ("dicom-qido-rs", "QIDO-RS", ("application/dicom+json",)),
    ("dicom-stow-rs", "STOW-RS", ("application/dicom", "application/dicom+json")),
)


def _address(dicomweb_root: str) -> str:
    return dicomweb_root.rstrip("/").removesuffix("/studies")


def endpoint_ids(dicomweb_root: str) -> list[str]:
    """The ids of the Endpoints of the DICOMweb service at `dicomweb_root`.

    Each id carries a digest of the root, so that the Endpoints of several upstreams (or
    gateways) published to one FHIR server never overwrite each other, and the same root always
    gives the same ids.
    """
    digest = hashlib.sha256(_address(dicomweb_root).encode()).hexdigest()[:12]
    return [f"{connection.removeprefix('dicom-')}-{digest}" for connection, _, _ in _SERVICES]


def endpoint_resources(dicomweb_root: str, version: str) -> list[dict[str, Any]]:
    """The Endpoint resources (WADO-RS, QIDO-RS, STOW-RS) that ImagingStudy.endpoint references.

    `dicomweb_root` is the service root as clients reach it (``https://host/dicom-web``): the
    ImagingStudy implementation notes want scheme, authority and path, with no trailing slash
    and no ``/studies``, so that a client appends ``/studies/{uid}/series/{uid}/metadata``.
    `version` is ``"R4"`` or ``"R5"``.
    """
    address = _address(dicomweb_root)
    resources: list[dict[str, Any]] = []
    for endpoint_id, (connection, name, mime_types) in zip(endpoint_ids(address), _SERVICES, strict=True):
        coding = {"system": CONNECTION_TYPE_SYSTEM, "code": connection}
        resource: dict[str, Any] = {"resourceType": "Endpoint", "id": endpoint_id, "status": "active"}
        if version == "R4":
            resource |= {
                "connectionType": coding,
                "name": f"DICOMweb {name} at {address}",
                "payloadType": [_PAYLOAD_TYPE],
                "payloadMimeType": list(mime_types),
            }
        else:
            resource |= {
                "connectionType": [{"coding": [coding]}],
                "name": f"DICOMweb {name} at {address}",
                "payload": [{"type": [_PAYLOAD_TYPE], "mimeType": list(mime_types)}],
            }
        resource["address"] = address
        resources.append(resource)
    return resources

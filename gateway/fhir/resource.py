"""A :class:`StudyRecord` -> an ImagingStudy resource, R5 or R4 (pure; requirements F1-F5).

The rules that keep ist-1..ist-7 true whatever the PACS answered:

- one ``urn:dicom:uid`` identifier (ist-1, ist-2);
- ``numberOfSeries`` is the number of series elements (ist-3);
- ``numberOfInstances`` is the sum of the series' counts, which are the instances the IMAGE
  C-FINDs found, and it is there only when every series lists its instances (ist-4, ist-5,
  ist-6): a study whose lists are left out has no top-level count;
- ``modality`` is the distinct series modalities, in order of first appearance (ist-7, F2),
  never the PACS's study-level ModalitiesInStudy.
"""

from __future__ import annotations

from typing import Any

from gateway.fhir.endpoint import endpoint_ids
from gateway.fhir.records import SeriesRecord, StudyRecord
from gateway.fhir.values import patient_system, person_display, started, text
from gateway.fhir.versions import FhirVersion

__all__ = ["DCM_SYSTEM", "DICOM_UID_SYSTEM", "imaging_study"]

DCM_SYSTEM = "http://dicom.nema.org/resources/ontology/DCM"
DICOM_UID_SYSTEM = "urn:dicom:uid"
_ACSN_TYPE = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "ACSN"}]}
_DATA_ABSENT = [{"url": "http://hl7.org/fhir/StructureDefinition/data-absent-reason", "valueCode": "unknown"}]


def _modality_coding(code: str) -> dict[str, Any]:
    return {"system": DCM_SYSTEM, "code": code} if code else {"extension": _DATA_ABSENT}


def _modality(code: str, version: FhirVersion) -> dict[str, Any]:
    """A Modality as R4 Coding or R5 CodeableConcept; a series without one says it is unknown."""
    if version == "R4":
        return _modality_coding(code)
    return {"coding": [_modality_coding(code)]} if code else {"extension": _DATA_ABSENT}


def _subject(record: StudyRecord) -> dict[str, Any]:
    """A logical reference to the Patient by PatientID, the issuer as system, the name as display."""
    patient_id = text(record.study, "PatientID")
    subject: dict[str, Any] = {"type": "Patient"}
    if patient_id:
        identifier = {"value": patient_id}
        system = patient_system(text(record.study, "IssuerOfPatientID"))
        if system:
            identifier = {"system": system, **identifier}
        subject["identifier"] = identifier
    name = person_display(text(record.study, "PatientName"))
    if name:
        subject["display"] = name
    if len(subject) == 1:
        subject["extension"] = _DATA_ABSENT
    return subject


def _series(series: SeriesRecord, listed: bool, version: FhirVersion) -> dict[str, Any]:
    element: dict[str, Any] = {"uid": series.uid}
    if series.number is not None:
        element["number"] = series.number
    element["modality"] = _modality(series.modality, version)
    if series.description:
        element["description"] = series.description
    element["numberOfInstances"] = series.count
    if series.body_part:
        element["bodySite"] = (
            {"display": series.body_part} if version == "R4" else {"concept": {"text": series.body_part}}
        )
    if listed and series.instances:
        instances = []
        for instance in series.instances:
            item: dict[str, Any] = {
                "uid": instance.uid,
                "sopClass": {"system": "urn:ietf:rfc:3986", "code": f"urn:oid:{instance.sop_class}"},
            }
            if instance.number is not None:
                item["number"] = instance.number
            instances.append(item)
        element["instance"] = instances
    return element


def imaging_study(
    record: StudyRecord, *, dicomweb_root: str, version: FhirVersion, zone: str = "", list_instances: bool = True
) -> dict[str, Any]:
    """The ImagingStudy of `record`.

    Parameters
    ----------
    dicomweb_root : str
        The DICOMweb service root clients reach the study at; names the Endpoints referenced.
    version : {"R4", "R5"}
    zone : str
        The upstream's configured IANA zone, for ``started`` without TimezoneOffsetFromUTC (F5).
    list_instances : bool
        False for a search entry: no instance lists, hence no top-level numberOfInstances.
    """
    study = record.study
    uid = text(study, "StudyInstanceUID")
    listed = list_instances and record.instances_listed
    resource: dict[str, Any] = {"resourceType": "ImagingStudy", "id": uid}
    identifiers: list[dict[str, Any]] = [{"system": DICOM_UID_SYSTEM, "value": f"urn:oid:{uid}"}]
    accession = text(study, "AccessionNumber")
    if accession and version == "R4":
        identifiers.append({"type": _ACSN_TYPE, "value": accession})
    resource["identifier"] = identifiers
    resource["status"] = "available"
    modalities = list(dict.fromkeys(s.modality for s in record.series if s.modality))
    if modalities:
        resource["modality"] = [_modality(code, version) for code in modalities]
    resource["subject"] = _subject(record)
    when = started(study, zone)
    if when is not None:
        resource["started"] = when
    if accession and version == "R5":
        resource["basedOn"] = [{"type": "ServiceRequest", "identifier": {"type": _ACSN_TYPE, "value": accession}}]
    referrer = person_display(text(study, "ReferringPhysicianName"))
    if referrer:
        resource["referrer"] = {"display": referrer}
    resource["endpoint"] = [{"reference": f"Endpoint/{e}"} for e in endpoint_ids(dicomweb_root)]
    resource["numberOfSeries"] = len(record.series)
    if listed:
        resource["numberOfInstances"] = sum(s.count for s in record.series)
    description = text(study, "StudyDescription")
    if description:
        resource["description"] = description
    if record.series:
        resource["series"] = [_series(s, listed, version) for s in record.series]
    return resource

"""Checks every FHIR body in the tests goes through: the models, ist-1..ist-7, distinct modalities.

The FHIRPath is the seed's (``reference/fhir-imagingstudy-definitions.txt``). fhirpathpy 2.2.4
evaluates the argument of ``exclude()`` after ``select()`` against the wrong ``$this``, so ist-7
is anchored at ``%resource`` (context ``{"resource": res}``), which gives its intended meaning.
R4 has Coding where R5 has CodeableConcept for ``modality``, so its ist-7 reads ``modality``
where R5 reads ``modality.coding``.
"""

from __future__ import annotations

from typing import Any

import fhir.resources
import fhir.resources.R4B
from fhirpathpy import evaluate

_KEY = "select(system&'|'&code)"


def _ist7(coding: str) -> str:
    study = f"%resource.modality{coding}.{_KEY}"
    series = f"%resource.series.modality{coding}.{_KEY}"
    texts = (
        " and %resource.modality.text.exclude(%resource.series.modality.text).empty()"
        " and %resource.series.modality.text.exclude(%resource.modality.text).empty()"
        if coding
        else ""
    )
    return (
        f"%resource.modality.exists() implies {study}.exclude({series}).empty()"
        f" and {series}.exclude({study}).empty(){texts}"
    )


_INVARIANTS = {
    "ist-1": "series.exists() implies identifier.where(system = 'urn:dicom:uid').exists()",
    "ist-2": "identifier.where(system = 'urn:dicom:uid').count() < 2",
    "ist-3": "numberOfSeries.exists() and series.exists() implies numberOfSeries = series.count()",
    "ist-4": "numberOfInstances.exists() and series.exists() implies numberOfInstances = series.instance.count()",
    "ist-5": "numberOfInstances.exists() and series.numberOfInstances.exists() implies "
    "numberOfInstances = series.numberOfInstances.aggregate($total + $this.toInteger(), 0)",
    "ist-6": "series.where(numberOfInstances.empty() or instance.empty() or numberOfInstances = instance.count())"
    ".count() = series.count()",
}
INVARIANTS = {
    "R5": {**_INVARIANTS, "ist-7": _ist7(".coding")},
    "R4": {**_INVARIANTS, "ist-7": _ist7("")},
}


def violated_invariants(resource: dict[str, Any], version: str = "R5") -> list[str]:
    """The ist-N (and "distinct") an ImagingStudy breaks; empty when it is sound."""
    broken = [
        name
        for name, expression in INVARIANTS[version].items()
        if evaluate(resource, expression, {"resource": resource}) != [True]
    ]
    codings = [m if version == "R4" else m["coding"][0] for m in resource.get("modality", [])]
    codes = [(c.get("system"), c.get("code")) for c in codings]
    if len(codes) != len(set(codes)):
        broken.append("distinct")
    return broken


def validate(body: dict[str, Any], version: str = "R5") -> None:
    """Validate a body with the fhir.resources models (R5, or R4B for R4), entries one by one too."""
    models = fhir.resources.R4B if version == "R4" else fhir.resources
    models.get_fhir_model_class(body["resourceType"]).model_validate(body)
    for item in body.get("entry", []):
        validate(item["resource"], version)
    if body["resourceType"] == "ImagingStudy":
        assert violated_invariants(body, version) == [], body

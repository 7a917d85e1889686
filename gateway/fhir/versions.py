"""FHIR versions and content negotiation: R5 by default, R4 on ``fhirVersion=4.0``, JSON only.

FHIR's version negotiation (R5 §3.3.4, "Version Negotiation") puts the version as a
``fhirVersion`` parameter on the media type: ``Accept: application/fhir+json; fhirVersion=4.0``.
The value is ``major.minor``; the patch level is accepted too. ``_format`` overrides Accept
(R5 §3.2.0.6): ``json``, ``application/json`` and ``application/fhir+json`` are served.
"""

from __future__ import annotations

from typing import Literal

from gateway.fhir.outcome import OutcomeError

__all__ = ["FHIR_VERSIONS", "FhirVersion", "media_type", "negotiate"]

FhirVersion = Literal["R4", "R5"]

FHIR_VERSIONS: dict[FhirVersion, str] = {"R4": "4.0.1", "R5": "5.0.0"}
"""The published version each release is served as (CapabilityStatement.fhirVersion)."""

_BY_PARAMETER: dict[str, FhirVersion] = {"4.0": "R4", "4.0.1": "R4", "5.0": "R5", "5.0.0": "R5"}
_JSON_TYPES = frozenset({"application/fhir+json", "application/json", "application/*", "*/*"})
_FORMATS = frozenset({"json", "application/json", "application/fhir+json"})


def media_type(version: FhirVersion) -> str:
    """The Content-Type of an answer in `version`."""
    return f"application/fhir+json; fhirVersion={FHIR_VERSIONS[version].rsplit('.', 1)[0]}"


def _not_acceptable(what: str) -> OutcomeError:
    return OutcomeError(
        406, "not-supported", f"cannot answer {what}: this server speaks application/fhir+json, FHIR 5.0 or 4.0"
    )


def _parameters(item: str) -> tuple[str, dict[str, str]]:
    media, *params = (part.strip() for part in item.split(";"))
    values: dict[str, str] = {}
    for param in params:
        name, _, value = param.partition("=")
        values[name.strip().lower()] = value.strip().strip('"')
    return media.lower(), values


def negotiate(accept: str, format_parameter: str | None = None) -> FhirVersion:
    """The version to answer in, from the Accept header and ``_format``.

    Raises
    ------
    OutcomeError
        406 when no acceptable media type is JSON, or every JSON one names another FHIR version.
    """
    if format_parameter is not None:
        media, params = _parameters(format_parameter)
        if media not in _FORMATS:
            raise _not_acceptable(f"_format={format_parameter}")
        if "fhirversion" in params:
            return _version(params["fhirversion"], format_parameter)
    items = [item for item in accept.split(",") if item.strip()]
    if not items:
        return "R5"
    ranked: list[tuple[float, int, str, dict[str, str]]] = []
    for index, item in enumerate(items):
        media, params = _parameters(item)
        try:
            quality = float(params.get("q", "1"))
        except ValueError:
            quality = 0.0
        if quality > 0:
            ranked.append((-quality, index, media, params))
    for _, _, media, params in sorted(ranked):
        if format_parameter is None and media not in _JSON_TYPES:
            continue
        requested = params.get("fhirversion")
        if requested is None:
            return "R5"
        if requested in _BY_PARAMETER:
            return _BY_PARAMETER[requested]
    raise _not_acceptable(f"Accept: {accept}")


def _version(requested: str, where: str) -> FhirVersion:
    if requested not in _BY_PARAMETER:
        raise _not_acceptable(where)
    return _BY_PARAMETER[requested]

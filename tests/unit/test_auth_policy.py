"""What each request needs (policy), what scopes grant (SMART v1 and v2), and QIDO-RS narrowing (pure)."""

from __future__ import annotations

import re

import pytest
from pydicom.dataset import Dataset

from gateway.app import _SERVICE_ROUTES
from gateway.auth.patient import answer_is_patients, is_valid_patient_id, narrow_to_patient
from gateway.auth.policy import Transaction, classify
from gateway.auth.scopes import Context, Permission, contexts_granting, parse_scopes
from gateway.query.attributes import QueryLevel
from gateway.query.params import MatchType, parse_qido_query
from gateway.routes.qido import search_for_instances, search_for_series, search_for_studies
from gateway.routes.stow import store_instances

R, S, C, U, D = Permission.READ, Permission.SEARCH, Permission.CREATE, Permission.UPDATE, Permission.DELETE


@pytest.mark.parametrize(
    ("scopes", "expected"),
    [
        ("patient/ImagingStudy.rs", {Context.PATIENT: {R, S}}),
        ("user/ImagingStudy.cruds", {Context.USER: {C, R, U, D, S}}),
        ("system/*.c", {Context.SYSTEM: {C}}),
        ("system/ImagingStudy.r", {Context.SYSTEM: {R}}),
        ("patient/ImagingStudy.read", {Context.PATIENT: {R, S}}),  # v1 read = v2 rs
        ("user/ImagingStudy.write", {Context.USER: {C, U, D}}),  # v1 write = v2 cud
        ("system/*.*", {Context.SYSTEM: {C, R, U, D, S}}),
        ("patient/Observation.rs user/Patient.read openid fhirUser launch/patient offline_access", {}),
        ("patient/ImagingStudy.sr", {}),  # v2 letters out of order: not a scope
        ("patient/ImagingStudy.rs?category=x", {}),  # a query restriction the gateway cannot apply
        ("patient/ImagingStudy.", {}),
        ("Patient/ImagingStudy.rs", {}),
    ],
)
def test_smart_scopes(scopes: str, expected: dict[Context, set[Permission]]) -> None:
    grants = parse_scopes(scopes)
    for permission in Permission:
        wanted = {context for context, permissions in expected.items() if permission in permissions}
        assert contexts_granting(grants, permission) == wanted, permission


def test_scopes_as_a_list_claim() -> None:
    grants = parse_scopes(["system/ImagingStudy.rs", 3, "system/ImagingStudy.c"])  # type: ignore[list-item]
    assert contexts_granting(grants, C) == {Context.SYSTEM}


def _concrete(path: str) -> str:
    values = {"study": "1.2.3", "series": "1.2.3.4", "instance": "1.2.3.4.5", "frames": "1,2", "tag_path": "7FE00010"}
    return re.sub(r"\{(\w+)(?::\w+)?\}", lambda m: values[m[1]], path)


@pytest.mark.parametrize("root", ["/dicom-web", "/dicom-web/upstreams/second"])
def test_every_dicomweb_route_needs_its_right(root: str) -> None:
    searches = {search_for_studies, search_for_series, search_for_instances}
    for method, path, endpoint in _SERVICE_ROUTES:
        access = classify(method, root + _concrete(path), "/dicom-web")
        assert not access.open, path
        assert access.upstream == ("second" if "upstreams" in root else None)
        if endpoint is store_instances:
            assert (access.transaction, access.permission) == (Transaction.STOW, C), path
        elif endpoint in searches:
            assert (access.transaction, access.permission) == (Transaction.QIDO, S), path
        else:
            assert (access.transaction, access.permission) == (Transaction.WADO, R), path
            assert access.study == "1.2.3"
            assert access.series == ("1.2.3.4" if "{series}" in path else None)
            assert access.instance == ("1.2.3.4.5" if "{instance}" in path else None)
    assert classify("HEAD", root + "/studies/1.2.3/rendered", "/dicom-web").permission is R


@pytest.mark.parametrize(
    "path",
    [
        "/health",
        "/ready",
        "/",
        "/openapi.json",
        "/metrics",
        "/fhir/metadata",
        "/fhir/.well-known/smart-configuration",
        "/fhir/upstreams/second/metadata",
        "/fhir/upstreams/second/.well-known/smart-configuration",
    ],
)
def test_open_paths(path: str) -> None:
    assert classify("GET", path, "/dicom-web").open


def test_preflights_are_open_and_other_paths_need_a_token() -> None:
    assert classify("OPTIONS", "/dicom-web/studies", "/dicom-web", preflight=True).open
    assert not classify("OPTIONS", "/dicom-web/studies", "/dicom-web").open
    for path in ("/nowhere", "/healthz", "/dicom-web-other/studies"):
        access = classify("GET", path, "/dicom-web")
        assert not access.open and access.transaction is None and access.permission is None, path
    assert classify("GET", "/fhir/metadata/x", "/dicom-web").transaction is Transaction.FHIR


@pytest.mark.parametrize(
    ("method", "path", "permission"),
    [
        ("GET", "/fhir/ImagingStudy", S),
        ("GET", "/fhir/ImagingStudy/abc", R),
        ("GET", "/fhir/ImagingStudy/abc/_history/2", R),
        ("GET", "/fhir/Patient/p1/ImagingStudy", S),
        ("POST", "/fhir/ImagingStudy/_search", S),
        ("GET", "/fhir/upstreams/second/ImagingStudy/abc", R),
        ("POST", "/fhir/ImagingStudy", C),
        ("PUT", "/fhir/ImagingStudy/abc", U),
        ("DELETE", "/fhir/ImagingStudy/abc", D),
    ],
)
def test_fhir_requests(method: str, path: str, permission: Permission) -> None:
    access = classify(method, path, "/dicom-web")
    assert (access.transaction, access.permission, access.is_fhir) == (Transaction.FHIR, permission, True)


def test_a_search_is_narrowed_to_the_patient() -> None:
    query = parse_qido_query(QueryLevel.STUDY, [("ModalitiesInStudy", "CT")])
    narrowed = narrow_to_patient(query, "PAT0001")
    assert narrowed is not None
    key = narrowed.key("PatientID")
    assert key is not None and (key.match_type, key.values) == (MatchType.SINGLE, ("PAT0001",))
    assert narrowed.key("ModalitiesInStudy") == query.key("ModalitiesInStudy")


@pytest.mark.parametrize(
    ("given", "kept"),
    [("PAT0001", True), ("PAT*", True), ("PAT0002,PAT0001", True), ("*", True), ("PAT0002", False), ("X*", False)],
)
def test_a_patient_id_in_the_query_is_intersected(given: str, kept: bool) -> None:
    query = parse_qido_query(QueryLevel.SERIES, [("PatientID", given)])
    narrowed = narrow_to_patient(query, "PAT0001")
    assert (narrowed is not None) is kept
    if narrowed is not None:
        assert [k.values for k in narrowed.match_keys if k.keyword == "PatientID"] == [("PAT0001",)]


def test_answers_are_checked_exactly() -> None:
    answer = Dataset()
    answer.PatientID = "PAT0001 "
    assert answer_is_patients(answer, "PAT0001")
    answer.PatientID = "PAT00011"
    assert not answer_is_patients(answer, "PAT0001")
    assert not answer_is_patients(Dataset(), "PAT0001")


@pytest.mark.parametrize(
    ("value", "valid"),
    [("PAT0001", True), ("*", False), ("P?", False), ("a\\b", False), ("x" * 65, False), (" ", False)],
)
def test_a_token_patient_must_be_a_literal_patient_id(value: str, valid: bool) -> None:
    assert is_valid_patient_id(value) is valid

"""openapi/openapi.json is a valid OpenAPI 3.1 document that describes exactly the routes the app serves."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate
from referencing import Registry, Resource
from starlette.applications import Starlette
from starlette.routing import Route

import gateway
from gateway.app import create_app
from gateway.errors import GatewayError, PayloadTooLarge, RequestTimeout, UnsupportedMediaType
from gateway.routes.common import NotAcceptable
from gateway.settings import Settings, load_settings

SPEC_PATH = Path(__file__).resolve().parents[2] / "openapi" / "openapi.json"
SPEC_URI = "urn:dicomweb-gateway:openapi"
OPERATIONS = frozenset({"get", "put", "post", "delete", "options", "head", "patch", "trace"})
QIDO_SUFFIXES = ("/studies", "/series", "/instances")


@pytest.fixture(scope="module")
def spec() -> dict[str, Any]:
    document: dict[str, Any] = json.loads(SPEC_PATH.read_text(encoding="utf-8"))
    return document


@pytest.fixture(scope="module")
def settings() -> Settings:
    return load_settings(None, upstream="PACS@127.0.0.1:11112")


@pytest.fixture(scope="module")
def app(settings: Settings) -> Starlette:
    # The lifespan is never started: no association is opened, nothing touches the network.
    return create_app(settings)


def _app_operations(app: Starlette, settings: Settings) -> set[tuple[str, str]]:
    """(path template, method) for every route, named upstreams mapped back to ``{upstream}``."""
    named_roots = (f"{settings.base_path}/upstreams/", "/fhir/upstreams/")
    operations: set[tuple[str, str]] = set()
    for route in app.routes:
        assert isinstance(route, Route), f"{route!r} is not a plain Route; teach this test about it"
        path = re.sub(r"\{(\w+):\w+\}", r"{\1}", route.path)  # Starlette's {name:path} is OpenAPI's {name}
        for named_root in named_roots:
            for upstream in settings.upstreams:
                prefix = named_root + upstream.name
                if path == prefix or path.startswith(prefix + "/"):
                    path = named_root + "{upstream}" + path.removeprefix(prefix)
        methods = set(route.methods or ())
        if "GET" in methods:
            methods.discard("HEAD")  # Starlette adds HEAD to every GET route; the spec says so once, in info
        operations |= {(path, method.lower()) for method in methods}
    return operations


def _spec_operations(spec: dict[str, Any]) -> set[tuple[str, str]]:
    return {(path, method) for path, item in spec["paths"].items() for method in item if method in OPERATIONS}


def _resolve(spec: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), f"{ref}: only local references are expected"
    node: Any = spec
    for token in ref[2:].split("/"):
        token = token.replace("~1", "/").replace("~0", "~")
        assert isinstance(node, dict) and token in node, f"{ref} does not resolve"
        node = node[token]
    return node


def _refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                yield value
            else:
                yield from _refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _refs(value)


def _deref(spec: dict[str, Any], node: Any) -> Any:
    while isinstance(node, dict) and "$ref" in node:
        node = _resolve(spec, node["$ref"])
    return node


def _error_statuses(*, with_body: bool = True) -> set[int]:
    """The HTTP status of every GatewayError the app can answer with (`with_body`: to requests with a body)."""
    about_bodies = {PayloadTooLarge, RequestTimeout, UnsupportedMediaType}
    found: set[int] = set()
    pending: list[type[GatewayError]] = [GatewayError]
    while pending:
        cls = pending.pop()
        if with_body or cls not in about_bodies:
            found.add(cls.status_code)
        pending += cls.__subclasses__()
    assert NotAcceptable.status_code in found
    return found


def _schema_validator(spec: dict[str, Any], name: str) -> Draft202012Validator:
    registry: Registry[Any] = Registry().with_resource(SPEC_URI, Resource.opaque(spec))
    return Draft202012Validator({"$ref": f"{SPEC_URI}#/components/schemas/{name}"}, registry=registry)


def test_is_openapi_3_1_with_the_package_version(spec: dict[str, Any]) -> None:
    assert re.fullmatch(r"3\.1\.\d+", spec["openapi"])
    assert spec["info"]["version"] == gateway.__version__


def test_is_a_valid_openapi_document(spec: dict[str, Any]) -> None:
    validate(spec)


def test_every_ref_resolves(spec: dict[str, Any]) -> None:
    refs = set(_refs(spec))
    assert refs, "the document is expected to share its parameters, responses and schemas through $ref"
    for ref in sorted(refs):
        _resolve(spec, ref)


def test_every_component_is_used(spec: dict[str, Any]) -> None:
    refs = set(_refs(spec))
    unused = [
        f"#/components/{kind}/{name}"
        for kind, members in spec["components"].items()
        for name in members
        if kind != "securitySchemes" and f"#/components/{kind}/{name}" not in refs
    ]
    assert not unused
    # Security schemes are named by security requirements, not referenced.
    required = {name for requirement in spec.get("security", []) for name in requirement}
    assert required == set(spec["components"].get("securitySchemes", {}))


def test_documents_exactly_the_routes_the_app_serves(spec: dict[str, Any], app: Starlette, settings: Settings) -> None:
    served = _app_operations(app, settings)
    documented = _spec_operations(spec)
    assert sorted(served - documented) == [], "routes the app serves that openapi/openapi.json lacks"
    assert sorted(documented - served) == [], "operations in openapi/openapi.json that the app does not serve"


def test_path_parameters_match_the_templates(spec: dict[str, Any]) -> None:
    for path, item in spec["paths"].items():
        template = set(re.findall(r"\{([^}]+)\}", path))
        for method in OPERATIONS & set(item):
            parameters = [_deref(spec, p) for p in item.get("parameters", []) + item[method].get("parameters", [])]
            declared = {p["name"] for p in parameters if p["in"] == "path"}
            assert declared == template, f"{method.upper()} {path}"
            assert all(p["required"] for p in parameters if p["in"] == "path"), f"{method.upper()} {path}"


def test_qido_operations_document_their_answers(spec: dict[str, Any]) -> None:
    expected = {"200", "204"} | {str(status) for status in _error_statuses(with_body=False)}
    qido = [(path, item["get"]) for path, item in spec["paths"].items() if path.endswith(QIDO_SUFFIXES)]
    assert len(qido) == 12
    for path, operation in qido:
        assert expected <= set(operation["responses"]), path
        names = {_deref(spec, p)["name"] for p in operation["parameters"]}
        assert {"includefield", "limit", "offset", "fuzzymatching"} <= names, path
        ok = _deref(spec, operation["responses"]["200"])
        assert set(ok["content"]) == {"application/dicom+json"}, path
        assert "Warning" in ok["headers"], path
        assert "Retry-After" in _deref(spec, operation["responses"]["503"])["headers"], path


def test_stow_operations_document_their_answers(spec: dict[str, Any]) -> None:
    expected = {"200", "202", "409"} | {str(status) for status in _error_statuses()}
    stow = [(path, item["post"]) for path, item in spec["paths"].items() if "post" in item and "/fhir" not in path]
    assert sorted(path.removeprefix("/dicom-web") for path, _ in stow) == [
        "/studies",
        "/studies/{study}",
        "/upstreams/{upstream}/studies",
        "/upstreams/{upstream}/studies/{study}",
    ]
    for path, operation in stow:
        assert expected <= set(operation["responses"]), path
        for status in ("200", "202", "409"):
            assert set(_deref(spec, operation["responses"][status])["content"]) == {"application/dicom+json"}, path
        assert set(_deref(spec, operation["requestBody"])["content"]) == {
            'multipart/related; type="application/dicom"',
            "application/dicom",
        }


def _get(app: Starlette, url: str, **headers: str) -> httpx.Response:
    async def get() -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gateway") as client:
            return await client.get(url, headers=headers)

    return asyncio.run(get())


def _post(app: Starlette, url: str, **headers: str) -> httpx.Response:
    async def post() -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gateway") as client:
            return await client.post(url, headers=headers, content=b"not dicom")

    return asyncio.run(post())


def test_answers_that_need_no_pacs_match_the_schemas(spec: dict[str, Any], app: Starlette) -> None:
    health = _get(app, "/health")
    assert health.status_code == 200
    _schema_validator(spec, "Health").validate(health.json())

    error = _schema_validator(spec, "Error")
    for url, headers, status in (
        ("/dicom-web/studies?limit=-1", {}, 400),
        ("/dicom-web/upstreams/default/studies/1.02/series", {}, 400),
        ("/dicom-web/upstreams/no-such-upstream/studies", {}, 404),
        ("/dicom-web/series", {"Accept": 'multipart/related; type="application/dicom+xml"'}, 406),
    ):
        response = _get(app, url, **headers)
        assert response.status_code == status, url
        assert response.headers["content-type"] == "application/json"
        error.validate(response.json())
    for url, headers, status in (
        ("/dicom-web/studies", {"Content-Type": "application/json"}, 415),
        ("/dicom-web/studies", {"Content-Type": 'multipart/related; type="application/dicom+json"; boundary=b'}, 415),
        ("/dicom-web/studies", {"Content-Type": 'multipart/related; type="application/dicom"'}, 400),
        ("/dicom-web/studies/1.02", {"Content-Type": "application/dicom"}, 400),
        ("/dicom-web/studies", {"Content-Type": "application/dicom", "Accept": "application/dicom+xml"}, 406),
    ):
        response = _post(app, url, **headers)
        assert response.status_code == status, url
        assert response.headers["content-type"] == "application/json"
        error.validate(response.json())


def test_fhir_answers_that_need_no_pacs_match_the_schemas(spec: dict[str, Any], app: Starlette) -> None:
    for url, schema in (("/fhir/metadata", "FhirResource"), ("/fhir/upstreams/default/Endpoint", "FhirBundle")):
        response = _get(app, url)
        assert response.status_code == 200, url
        assert response.headers["content-type"] == "application/fhir+json; fhirVersion=5.0"
        _schema_validator(spec, schema).validate(response.json())
    outcome = _schema_validator(spec, "OperationOutcome")
    for url, headers, status in (
        ("/fhir/ImagingStudy?started=2024-02-30", {}, 400),
        ("/fhir/ImagingStudy?bogus=1", {"Prefer": "handling=strict"}, 400),
        ("/fhir/Endpoint/unknown", {}, 404),
        ("/fhir/metadata", {"Accept": "application/fhir+xml"}, 406),
    ):
        response = _get(app, url, **headers)
        assert response.status_code == status, url
        outcome.validate(response.json())

"""The wiring: create_app and the publish command bind the builders of gateway.fhir.study and gateway.fhir.endpoint.

Those modules are stood in for here (they are tested where they are defined), so that what this
checks is the binding: which callables, with which roots, and nothing when publishing is off.
"""

from __future__ import annotations

import importlib
import json
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import respx

from gateway.app import create_app
from gateway.fhir.publish.publisher import Publisher
from gateway.settings import load_settings

pytestmark = pytest.mark.anyio


async def build_imaging_study(upstream: Any, study_uid: str, *, dicomweb_root: str, version: str) -> dict[str, Any]:
    return {"resourceType": "ImagingStudy", "id": study_uid, "endpoint": [], "root": dicomweb_root}


def endpoint_resources(dicomweb_root: str, version: str) -> list[dict[str, Any]]:
    return []


@pytest.fixture
def wiring(monkeypatch: pytest.MonkeyPatch) -> Iterator[types.ModuleType]:
    study = types.ModuleType("gateway.fhir.study")
    study.build_imaging_study = build_imaging_study  # type: ignore[attr-defined]
    endpoint = types.ModuleType("gateway.fhir.endpoint")
    endpoint.endpoint_resources = endpoint_resources  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "gateway.fhir.study", study)
    monkeypatch.setitem(sys.modules, "gateway.fhir.endpoint", endpoint)
    monkeypatch.delitem(sys.modules, "gateway.fhir.publish.wiring", raising=False)
    module = importlib.import_module("gateway.fhir.publish.wiring")
    yield module
    sys.modules.pop("gateway.fhir.publish.wiring", None)  # bound to the stand-ins: never reused


def settings_for(tmp_path: Path, **flags: Any) -> Any:
    config = tmp_path / "gateway.toml"
    config.write_text(f'[fhir]\nqueue_dir = "{tmp_path / "queue"}"\n', encoding="utf-8")
    return load_settings(
        config,
        upstream="main=PACS@127.0.0.1:104",
        public_url="https://gw.test",
        fhir_publish_url="https://fhir.test/fhir",
        **flags,
    )


async def test_create_app_binds_the_builders_of_gateway_fhir(tmp_path: Path, wiring: types.ModuleType) -> None:
    app = create_app(settings_for(tmp_path))
    publisher = app.state.publisher
    assert isinstance(publisher, Publisher) and (tmp_path / "queue").is_dir()
    with respx.mock(base_url="https://fhir.test/fhir") as fhir:
        route = fhir.put("/ImagingStudy").respond(201)
        async with publisher.study_publisher as study_publisher:
            await study_publisher.publish("main", "1.2.3")
    body = json.loads(route.calls.last.request.content)
    assert body == {"resourceType": "ImagingStudy", "id": "1.2.3", "endpoint": [], "root": "https://gw.test/dicom-web"}


async def test_nothing_is_bound_without_a_publish_url(wiring: types.ModuleType) -> None:
    settings = load_settings(None, upstream="main=PACS@127.0.0.1:104")
    assert create_app(settings).state.publisher is None
    assert wiring.make_publisher(settings, None) is None and wiring.make_study_publisher(settings, None) is None

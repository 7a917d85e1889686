"""What an operator and a first-time visitor meet: `/`, the service roots, `/openapi.json`, `/metrics`, request ids."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

import gateway
from gateway.app import create_app
from gateway.logs import JsonFormatter, RequestIdMiddleware, configure_logging, current_request_id
from gateway.settings import load_settings

SPEC_PATH = Path(__file__).resolve().parents[2] / "openapi" / "openapi.json"


def _get(url: str, metrics: bool = True, **headers: str) -> httpx.Response:
    settings = load_settings(None, upstream="PACS@127.0.0.1:11112", metrics=metrics)
    app = create_app(settings)  # no lifespan: nothing touches the network

    async def get() -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw.example:8080") as c:
            return await c.get(url, headers=headers)

    return asyncio.run(get())


def test_root_links_to_everything() -> None:
    body = _get("/").json()
    assert body["name"] == "dicomweb-gateway" and body["version"] == gateway.__version__
    assert body["links"] == {
        "dicomweb": "http://gw.example:8080/dicom-web",
        "fhir": "http://gw.example:8080/fhir",
        "openapi": "http://gw.example:8080/openapi.json",
        "health": "http://gw.example:8080/health",
        "ready": "http://gw.example:8080/ready",
        "metrics": "http://gw.example:8080/metrics",
    }
    assert body["upstreams"] == {"default": "http://gw.example:8080/dicom-web/upstreams/default"}
    assert "metrics" not in _get("/", metrics=False).json()["links"]


def test_service_roots_describe_themselves() -> None:
    for root in ("/dicom-web", "/dicom-web/upstreams/default"):
        body = _get(root).json()
        assert body["upstream"] == "default"
        assert body["resources"]["studies"] == f"http://gw.example:8080{root}/studies"


def test_openapi_document_is_the_repository_file() -> None:
    response = _get("/openapi.json")
    assert response.status_code == 200 and response.headers["content-type"] == "application/json"
    assert response.content == SPEC_PATH.read_bytes()


def test_metrics_scrape_counts_requests_by_route_template() -> None:
    settings = load_settings(None, upstream="PACS@127.0.0.1:11112")
    app = create_app(settings)

    async def run() -> str:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as client:
            await client.get("/dicom-web/studies/1.2.3/series?limit=-1")  # 400, no PACS needed
            await client.get("/dicom-web/studies/1.2.4/series?limit=-1")
            await client.get("/nowhere")
            response = await client.get("/metrics")
            assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
            return response.text

    text = asyncio.run(run())
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }
    route = (("method", "GET"), ("route", "/dicom-web/studies/{study}/series"), ("status", "400"))
    assert samples[("gateway_http_request_duration_seconds_count", route)] >= 2
    unmatched = (("method", "GET"), ("route", "unmatched"), ("status", "404"))
    assert samples[("gateway_http_request_duration_seconds_count", unmatched)] >= 1
    assert "1.2.3" not in text  # UIDs never become label values
    pool = (("pool", "store"), ("state", "max"), ("upstream", "default"))
    assert samples[("gateway_pool_associations", pool)] == 4
    assert ("gateway_cache_bytes", (("kind", "max"), ("upstream", "default"))) in samples
    assert ("gateway_cache_lookups_total", (("result", "hit"), ("upstream", "default"))) in samples
    assert samples[("gateway_moves_in_flight", ())] == 0
    assert _get("/metrics", metrics=False).status_code == 404


def test_request_id_is_echoed_or_made_up() -> None:
    assert _get("/health", **{"X-Request-ID": "abc-123"}).headers["x-request-id"] == "abc-123"
    made_up = _get("/health", **{"X-Request-ID": "spaces are not kept"}).headers["x-request-id"]
    assert made_up != "spaces are not kept" and len(made_up) == 32
    assert _get("/dicom-web/studies?limit=-1").headers["x-request-id"]


def test_json_log_lines_carry_the_request_id(caplog: pytest.LogCaptureFixture) -> None:
    seen: list[str | None] = []

    async def app(scope: dict[str, object], receive: object, send: object) -> None:
        seen.append(current_request_id.get())
        logging.getLogger("gateway.test").info("inside")
        await send({"type": "http.response.start", "status": 204, "headers": []})  # type: ignore[operator]
        await send({"type": "http.response.body", "body": b""})  # type: ignore[operator]

    sent: list[dict[str, object]] = []

    async def send(message: dict[str, object]) -> None:
        sent.append(message)

    scope = {"type": "http", "headers": [(b"x-request-id", b"req-1")], "method": "GET", "path": "/"}
    with caplog.at_level(logging.INFO, logger="gateway.test"):
        asyncio.run(RequestIdMiddleware(app)(scope, None, send))  # type: ignore[arg-type]
    assert seen == ["req-1"] and (b"x-request-id", b"req-1") in sent[0]["headers"]  # type: ignore[operator]
    assert current_request_id.get() is None

    record = logging.LogRecord("gateway.x", logging.WARNING, __file__, 1, "hello %s", ("world",), None)
    record.request_id, record.upstream = "req-1", "main"
    line = json.loads(JsonFormatter().format(record))
    assert {k: line[k] for k in ("level", "logger", "message", "request_id", "upstream")} == {
        "level": "warning",
        "logger": "gateway.x",
        "message": "hello world",
        "request_id": "req-1",
        "upstream": "main",
    }
    assert line["time"].endswith("+00:00")


def test_configure_logging_json_writes_one_object_per_line(capsys: pytest.CaptureFixture[str]) -> None:
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        configure_logging("info", "json")
        token = current_request_id.set("req-9")
        logging.getLogger("gateway.test").info("one\ntwo")
        current_request_id.reset(token)
        (line,) = capsys.readouterr().err.strip().splitlines()
        assert json.loads(line)["request_id"] == "req-9" and json.loads(line)["message"] == "one\ntwo"
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])


def test_routes_inside_a_mount_are_labelled_with_their_full_template() -> None:
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.responses import PlainTextResponse
    from starlette.routing import Mount, Route

    from gateway.metrics import HTTP_REQUESTS, MetricsMiddleware

    async def patient(request: object) -> PlainTextResponse:
        return PlainTextResponse("ok")

    app = Starlette(
        routes=[Mount("/fhir-test", routes=[Route("/Patient/{id}", patient)])],
        middleware=[Middleware(MetricsMiddleware)],
    )

    async def get() -> int:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://x") as client:
            return (await client.get("/fhir-test/Patient/123")).status_code

    assert asyncio.run(get()) == 200
    counted = HTTP_REQUESTS.labels("GET", "/fhir-test/Patient/{id}", "200")._sum.get()  # type: ignore[attr-defined]
    assert counted > 0

"""The background publisher (respx for the FHIR server, fake builders): retries, coalescing, bounds, restarts."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
import respx

from gateway.app import create_app
from gateway.errors import UpstreamTimeout
from gateway.fhir.publish.auth import NoCredentials
from gateway.fhir.publish.publisher import Publisher
from gateway.fhir.publish.upsert import StudyPublisher
from gateway.settings import ConfigError, FhirPublishSettings, load_settings
from tests.unit.test_openapi import SPEC_PATH, _schema_validator

BASE = "https://fhir.test/fhir"
ROOT = "https://gateway.test/dicom-web"
STUDY_A = "1.2.826.0.1.3680043.8.498.10"
STUDY_B = "1.2.826.0.1.3680043.8.498.20"
STUDY_C = "1.2.826.0.1.3680043.8.498.30"
OUTCOME = {
    "resourceType": "OperationOutcome",
    "issue": [{"severity": "error", "code": "invalid", "diagnostics": "ImagingStudy.subject: required"}],
}

pytestmark = pytest.mark.anyio


class FakePacsStudies:
    """A builder over a dict of study UID -> instance count; None for a study the PACS lacks."""

    def __init__(self, studies: dict[str, int]) -> None:
        self.studies = studies
        self.calls: list[str] = []
        self.failures: list[Exception] = []
        self.gate: anyio.Event | None = None
        self.entered = anyio.Event()

    async def __call__(
        self, upstream: Any, study_uid: str, *, dicomweb_root: str, version: str
    ) -> dict[str, Any] | None:
        assert (dicomweb_root, version) == (ROOT, "R4")
        self.calls.append(study_uid)
        count = self.studies.get(study_uid)  # what its C-FIND sees now
        self.entered.set()
        if self.gate is not None:
            await self.gate.wait()
        if self.failures:
            raise self.failures.pop(0)
        if count is None:
            return None
        return {
            "resourceType": "ImagingStudy",
            "id": study_uid,
            "identifier": [{"system": "urn:dicom:uid", "value": f"urn:oid:{study_uid}"}],
            "status": "available",
            "numberOfInstances": count,
            "endpoint": [{"reference": "Endpoint/gw-wado-rs"}, {"reference": "Endpoint/gw-qido-rs"}],
        }


def endpoints(dicomweb_root: str, version: str) -> list[dict[str, Any]]:
    return [
        {"resourceType": "Endpoint", "id": f"gw-{kind}", "status": "active", "address": dicomweb_root}
        for kind in ("wado-rs", "qido-rs", "stow-rs")
    ]


def make_publisher(queue: Path, builder: FakePacsStudies, **changes: Any) -> Publisher:
    values: dict[str, Any] = {
        "queue_dir": str(queue),
        "publish_delay": 0.0,
        "publish_backoff": 0.01,
        "publish_backoff_max": 0.05,
    }
    settings = FhirPublishSettings(BASE, **(values | changes))
    study_publisher = StudyPublisher(settings, {"main": object()}, {"main": ROOT}, builder, endpoints, NoCredentials())
    return Publisher(settings, study_publisher, ["main"])


async def until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    with anyio.fail_after(timeout):
        while not condition():
            await anyio.sleep(0.005)


def queued_files(queue: Path) -> list[str]:
    return sorted(p.name for p in (queue / "main").glob("*.json")) if (queue / "main").exists() else []


def fhir_server() -> respx.MockRouter:
    return respx.mock(base_url=BASE, assert_all_called=False)


async def test_each_study_is_published_with_the_endpoints_it_references(tmp_path: Path) -> None:
    builder = FakePacsStudies({STUDY_A: 3, STUDY_B: 1})
    with fhir_server() as fhir:
        studies = fhir.put("/ImagingStudy").respond(201)
        endpoint_puts = fhir.put(url__regex=r"/Endpoint/").respond(201)
        async with make_publisher(tmp_path, builder) as publisher:
            assert publisher.enqueue("main", STUDY_A) and publisher.enqueue("main", STUDY_B)
            await until(lambda: publisher.published == 2)
            stats = publisher.stats()
    identifiers = sorted(c.request.url.params["identifier"] for c in studies.calls)
    assert identifiers == [f"urn:dicom:uid|urn:oid:{STUDY_A}", f"urn:dicom:uid|urn:oid:{STUDY_B}"]
    # the referenced Endpoints, each once (unchanged ones are not sent again), not the unreferenced one
    assert sorted(c.request.url.path for c in endpoint_puts.calls) == [
        "/fhir/Endpoint/gw-qido-rs",
        "/fhir/Endpoint/gw-wado-rs",
    ]
    assert stats | {"last_published_at": None} == {
        "url": BASE,
        "version": "R4",
        "queued": 0,
        "in_flight": 0,
        "published": 2,
        "failed": 0,
        "gone": 0,
        "refused": 0,
        "retried": 0,
        "last_error": None,
        "last_error_at": None,
        "last_published_at": None,
        "paused_until": None,
    }
    assert stats["last_published_at"] is not None
    assert queued_files(tmp_path) == []


async def test_a_study_queued_many_times_while_waiting_is_published_once(tmp_path: Path) -> None:
    builder = FakePacsStudies({STUDY_A: 1})
    with fhir_server() as fhir:
        studies = fhir.put("/ImagingStudy").respond(200)
        fhir.put(url__regex=r"/Endpoint/").respond(200)
        async with make_publisher(tmp_path, builder, publish_delay=0.3) as publisher:
            for count in range(2, 7):  # five STOW-RS requests of one upload, the PACS growing
                builder.studies[STUDY_A] = count
                assert publisher.enqueue("main", STUDY_A)
                assert len(publisher.outbox) == 1
            await until(lambda: publisher.published == 1)
            await anyio.sleep(0.1)
    assert studies.call_count == 1 and builder.calls == [STUDY_A]
    assert json.loads(studies.calls.last.request.content)["numberOfInstances"] == 6  # the freshest state


async def test_queued_again_while_being_published_goes_again_with_the_fresh_state(tmp_path: Path) -> None:
    builder = FakePacsStudies({STUDY_A: 1})
    builder.gate = anyio.Event()
    with fhir_server() as fhir:
        studies = fhir.put("/ImagingStudy").respond(200)
        fhir.put(url__regex=r"/Endpoint/").respond(200)
        async with make_publisher(tmp_path, builder) as publisher:
            publisher.enqueue("main", STUDY_A)
            await builder.entered.wait()  # its C-FIND has started: a STOW-RS now may not be in it
            builder.studies[STUDY_A] = 2
            publisher.enqueue("main", STUDY_A)
            gate = builder.gate
            builder.gate = None
            gate.set()
            await until(lambda: publisher.published == 2)
    assert [json.loads(c.request.content)["numberOfInstances"] for c in studies.calls] == [1, 2]
    assert builder.calls == [STUDY_A, STUDY_A] and queued_files(tmp_path) == []


async def test_the_queue_is_bounded_and_refuses_new_studies_when_full(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    publisher = make_publisher(tmp_path, FakePacsStudies({}), queue_max=2)  # not started: nothing drains
    assert publisher.enqueue("main", STUDY_A) and publisher.enqueue("main", STUDY_B)
    assert publisher.enqueue("main", STUDY_A)  # already queued: coalesces, takes no room
    with caplog.at_level(logging.ERROR, logger="gateway.fhir.publish.publisher"):
        assert not publisher.enqueue("main", STUDY_C)
    assert f"queue full (2 studies): study {STUDY_C} of upstream main is not queued" in caplog.text
    assert publisher.stats()["refused"] == 1 and publisher.stats()["queued"] == 2
    assert queued_files(tmp_path) == [f"{STUDY_A}.json", f"{STUDY_B}.json"]


async def test_an_invalid_uid_never_becomes_a_file_name(tmp_path: Path) -> None:
    publisher = make_publisher(tmp_path, FakePacsStudies({}))
    for bad in ("../../etc/passwd", "1.2.3/4", "", "1." + "2" * 70):
        assert not publisher.enqueue("main", bad)
    assert publisher.refused == 4 and list(tmp_path.rglob("*")) == []


async def test_the_queue_survives_a_restart_and_resumes(tmp_path: Path) -> None:
    builder = FakePacsStudies({STUDY_A: 2, STUDY_B: 5})
    # A gateway that queued two studies and stopped before publishing them (the FHIR server was down).
    with fhir_server() as fhir:
        down = fhir.put("/ImagingStudy").mock(side_effect=httpx.ConnectError("refused"))
        fhir.put(url__regex=r"/Endpoint/").respond(200)
        async with make_publisher(tmp_path, builder, publish_backoff=60, publish_backoff_max=60) as first:
            first.enqueue("main", STUDY_A)
            await until(lambda: first.retried == 1)
            first.enqueue("main", STUDY_B)  # waits: the server is paused after its failure
            await anyio.sleep(0.05)
    assert down.call_count == 1
    assert queued_files(tmp_path) == [f"{STUDY_A}.json", f"{STUDY_B}.json"]
    saved = json.loads((tmp_path / "main" / f"{STUDY_A}.json").read_bytes())
    assert saved["attempts"] == 1 and "ConnectError" in saved["last_error"]
    (tmp_path / "main" / f".{STUDY_C}.tmp").write_bytes(b"{")  # a write torn by a crash

    # The next start publishes both (the backoff deadline on disk is honoured: made due here).
    saved["not_before"] = time.time()
    (tmp_path / "main" / f"{STUDY_A}.json").write_bytes(json.dumps(saved).encode())
    with fhir_server() as fhir:
        studies = fhir.put("/ImagingStudy").respond(201)
        fhir.put(url__regex=r"/Endpoint/").respond(200)
        async with make_publisher(tmp_path, builder) as second:
            assert second.stats()["queued"] == 2
            await until(lambda: second.published == 2)
    assert sorted(json.loads(c.request.content)["id"] for c in studies.calls) == [STUDY_A, STUDY_B]
    assert list((tmp_path / "main").iterdir()) == []


async def test_an_unreadable_queue_file_is_queued_afresh(tmp_path: Path) -> None:
    (tmp_path / "main").mkdir()
    (tmp_path / "main" / f"{STUDY_A}.json").write_bytes(b"not json")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / f"{STUDY_B}.json").write_bytes(b"{}")  # an upstream no longer configured
    builder = FakePacsStudies({STUDY_A: 1})
    with fhir_server() as fhir:
        fhir.put("/ImagingStudy").respond(201)
        fhir.put(url__regex=r"/Endpoint/").respond(200)
        async with make_publisher(tmp_path, builder) as publisher:
            await until(lambda: publisher.published == 1)
    assert builder.calls == [STUDY_A]
    assert (tmp_path / "other" / f"{STUDY_B}.json").exists()  # kept, not published, not deleted


async def test_retry_after_is_honoured_and_pauses_every_publication(tmp_path: Path) -> None:
    builder = FakePacsStudies({STUDY_A: 1, STUDY_B: 1})
    times: list[float] = []
    answers = [httpx.Response(503, headers={"Retry-After": "1"}), httpx.Response(201), httpx.Response(201)]

    def answer(request: httpx.Request) -> httpx.Response:
        times.append(time.monotonic())
        return answers.pop(0)

    with fhir_server() as fhir:
        fhir.put("/ImagingStudy").mock(side_effect=answer)
        fhir.put(url__regex=r"/Endpoint/").respond(200)
        async with make_publisher(tmp_path, builder) as publisher:
            publisher.enqueue("main", STUDY_A)
            await until(lambda: publisher.retried == 1)
            assert publisher.stats()["paused_until"] is not None
            publisher.enqueue("main", STUDY_B)  # not sent while the server asked to wait
            await until(lambda: publisher.published == 2)
    assert len(times) == 3
    assert times[1] - times[0] >= 0.95 and times[2] - times[0] >= 0.95
    assert "503" in (publisher.last_error or "")


async def test_a_long_retry_after_is_kept_on_disk(tmp_path: Path) -> None:
    builder = FakePacsStudies({STUDY_A: 1})
    with fhir_server() as fhir:
        fhir.put("/ImagingStudy").respond(429, headers={"Retry-After": "120"})
        fhir.put(url__regex=r"/Endpoint/").respond(200)
        async with make_publisher(tmp_path, builder) as publisher:
            before = time.time()
            publisher.enqueue("main", STUDY_A)
            await until(lambda: publisher.retried == 1)
    saved = json.loads((tmp_path / "main" / f"{STUDY_A}.json").read_bytes())
    assert before + 119 <= saved["not_before"] <= time.time() + 121
    assert saved["attempts"] == 1 and "429" in saved["last_error"]


async def test_server_errors_timeouts_and_refused_connections_are_retried_with_backoff(tmp_path: Path) -> None:
    builder = FakePacsStudies({STUDY_A: 1})
    failures = [
        httpx.Response(500),
        httpx.Response(502, json=OUTCOME),
        httpx.ReadTimeout("slow"),
        httpx.ConnectError("refused"),
    ]
    with fhir_server() as fhir:
        studies = fhir.put("/ImagingStudy").mock(side_effect=[*failures, httpx.Response(201)])
        fhir.put(url__regex=r"/Endpoint/").respond(200)
        async with make_publisher(tmp_path, builder) as publisher:
            publisher.enqueue("main", STUDY_A)
            await until(lambda: publisher.published == 1)
    assert studies.call_count == 5 and publisher.retried == 4 and publisher.failed == 0
    assert queued_files(tmp_path) == []


async def test_it_gives_up_after_publish_attempts(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    builder = FakePacsStudies({STUDY_A: 1})
    with fhir_server() as fhir, caplog.at_level(logging.ERROR, logger="gateway.fhir.publish.publisher"):
        studies = fhir.put("/ImagingStudy").respond(503, json=OUTCOME)
        fhir.put(url__regex=r"/Endpoint/").respond(200)
        async with make_publisher(tmp_path, builder, publish_attempts=3) as publisher:
            publisher.enqueue("main", STUDY_A)
            await until(lambda: publisher.failed == 1)
    assert studies.call_count == 3 and queued_files(tmp_path) == []
    assert f"giving up study {STUDY_A} of upstream main after 3 attempts" in caplog.text
    assert "ImagingStudy.subject: required" in caplog.text


async def test_a_client_error_fails_for_good_with_the_operation_outcome(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    builder = FakePacsStudies({STUDY_A: 1})
    with fhir_server() as fhir, caplog.at_level(logging.ERROR, logger="gateway.fhir.publish.publisher"):
        studies = fhir.put("/ImagingStudy").respond(422, json=OUTCOME)
        fhir.put(url__regex=r"/Endpoint/").respond(200)
        async with make_publisher(tmp_path, builder) as publisher:
            publisher.enqueue("main", STUDY_A)
            await until(lambda: publisher.failed == 1)
            stats = publisher.stats()
    assert studies.call_count == 1 and queued_files(tmp_path) == []
    assert "422 error invalid: ImagingStudy.subject: required" in stats["last_error"]
    assert stats["last_error_at"] is not None and stats["retried"] == 0
    assert "failed for good" in caplog.text


async def test_a_study_the_pacs_does_not_have_is_dropped(tmp_path: Path) -> None:
    builder = FakePacsStudies({})
    with fhir_server() as fhir:
        studies = fhir.put("/ImagingStudy").respond(201)
        async with make_publisher(tmp_path, builder) as publisher:
            publisher.enqueue("main", STUDY_A)
            await until(lambda: publisher.gone == 1)
    assert studies.call_count == 0 and queued_files(tmp_path) == [] and publisher.failed == 0


async def test_a_pacs_failure_is_retried_without_pausing_the_fhir_server(tmp_path: Path) -> None:
    builder = FakePacsStudies({STUDY_A: 1})
    builder.failures = [UpstreamTimeout("no answer within 30 s", upstream="main")]
    with fhir_server() as fhir:
        studies = fhir.put("/ImagingStudy").respond(201)
        fhir.put(url__regex=r"/Endpoint/").respond(200)
        async with make_publisher(tmp_path, builder, publish_backoff=0.2, publish_backoff_max=0.2) as publisher:
            publisher.enqueue("main", STUDY_A)
            await until(lambda: publisher.retried == 1)
            assert publisher.stats()["paused_until"] is None
            assert "no answer within 30 s" in (publisher.last_error or "")
            await until(lambda: publisher.published == 1)
    assert studies.call_count == 1 and builder.calls == [STUDY_A, STUDY_A]


async def test_a_builder_bug_is_not_retried(tmp_path: Path) -> None:
    builder = FakePacsStudies({STUDY_A: 1})
    builder.failures = [KeyError("SeriesInstanceUID")]
    with fhir_server():
        async with make_publisher(tmp_path, builder) as publisher:
            publisher.enqueue("main", STUDY_A)
            await until(lambda: publisher.failed == 1)
    assert builder.calls == [STUDY_A] and "KeyError" in (publisher.last_error or "")


async def test_health_shows_the_queue_as_the_openapi_schema_says(tmp_path: Path) -> None:
    settings = load_settings(
        None, upstream="main=PACS@127.0.0.1:104", public_url="https://gw.test", fhir_publish_url=BASE
    )
    made: list[Publisher] = []

    def factory(settings: Any, upstreams: Any) -> Publisher:
        made.append(make_publisher(tmp_path, FakePacsStudies({})))
        return made[0]

    app = create_app(settings, publisher_factory=factory)  # the lifespan is not run: nothing is published
    made[0].enqueue("main", STUDY_A)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gateway") as client:
        body = (await client.get("/health")).json()
    assert body["fhir_publish"]["queued"] == 1 and body["fhir_publish"]["url"] == BASE
    _schema_validator(json.loads(SPEC_PATH.read_text(encoding="utf-8")), "Health").validate(body)


def test_a_queue_dir_that_cannot_be_created_stops_startup_naming_the_key(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_bytes(b"")
    with pytest.raises(ConfigError, match=r"^fhir.queue_dir: cannot create .*a-file/queue"):
        make_publisher(blocker / "queue", FakePacsStudies({}))

"""A small recording FHIR server on 127.0.0.1 (Starlette under uvicorn, in a thread) for publishing tests.

It answers ``PUT /fhir/ImagingStudy?identifier=...`` (conditional update) and
``PUT /fhir/Endpoint/{id}``, keeps the resources and records every request. It can be told to
fail the next N requests with a status (and a ``Retry-After``), or to hold every answer until the
test releases it (a slow server).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import anyio.to_thread
import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tests.conftest import free_port


@dataclass(frozen=True)
class Recorded:
    """One request as the server received it."""

    method: str
    path: str
    raw_query: str
    headers: dict[str, str]
    body: Any
    received_at: float


@dataclass
class RecordingFhirServer:
    """The state behind the app; every field is guarded by `lock`."""

    port: int = field(default_factory=free_port)
    requests: list[Recorded] = field(default_factory=list)
    studies: dict[str, dict[str, Any]] = field(default_factory=dict)
    """ImagingStudy resources by their identifier token."""
    endpoints: dict[str, dict[str, Any]] = field(default_factory=dict)
    failures: list[tuple[int, dict[str, str]]] = field(default_factory=list)
    """Statuses (and headers) the next requests are answered with, first first."""
    answered: int = 0
    lock: threading.Condition = field(default_factory=threading.Condition)
    release: threading.Event = field(default_factory=threading.Event)
    """Answers wait for this (set by default; clear it to make the server hold its answers)."""

    def __post_init__(self) -> None:
        self.release.set()

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}/fhir"

    def fail_next(self, count: int, status: int = 503, retry_after: str | None = None) -> None:
        headers = {"Retry-After": retry_after} if retry_after is not None else {}
        with self.lock:
            self.failures.extend([(status, headers)] * count)

    def wait_for(self, condition: Callable[[RecordingFhirServer], bool], timeout: float = 30.0) -> None:
        with self.lock:
            if not self.lock.wait_for(lambda: condition(self), timeout=timeout):
                raise AssertionError(f"the FHIR server did not see it within {timeout} s: {self.requests}")

    def puts(self, resource_type: str) -> list[Recorded]:
        with self.lock:
            return [r for r in self.requests if r.method == "PUT" and r.path == f"/fhir/{resource_type}"]

    async def _put(self, request: Request) -> Response:
        body = orjson.loads(await request.body())
        recorded = Recorded(
            request.method,
            request.url.path,
            request.url.query,
            {k.lower(): v for k, v in request.headers.items()},
            body,
            time.monotonic(),
        )
        with self.lock:
            self.requests.append(recorded)
            self.lock.notify_all()
        await _wait_in_thread(self.release)
        with self.lock:
            self.answered += 1
            self.lock.notify_all()
            if self.failures:
                status, headers = self.failures.pop(0)
                outcome = {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "transient"}]}
                return Response(orjson.dumps(outcome), status, headers, media_type="application/fhir+json")
            if "resource" in request.path_params:
                store, key = self.endpoints, request.path_params["resource"]
            else:
                store, key = self.studies, request.query_params["identifier"]
            created = key not in store
            store[key] = body
        return Response(status_code=201 if created else 200)

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/fhir/ImagingStudy", self._put, methods=["PUT"]),
                Route("/fhir/Endpoint/{resource}", self._put, methods=["PUT"]),
            ]
        )


async def _wait_in_thread(event: threading.Event) -> None:
    if not event.is_set():
        await anyio.to_thread.run_sync(event.wait, 30.0)


@contextmanager
def serving(server: RecordingFhirServer) -> Iterator[RecordingFhirServer]:
    """Run `server` with uvicorn in a thread until the block ends."""
    config = uvicorn.Config(server.app(), host="127.0.0.1", port=server.port, log_level="warning", lifespan="off")
    uvicorn_server = uvicorn.Server(config)
    thread = threading.Thread(target=uvicorn_server.run, name="fhir-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not uvicorn_server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the recording FHIR server did not start")
        time.sleep(0.02)
    try:
        yield server
    finally:
        server.release.set()
        uvicorn_server.should_exit = True
        thread.join(timeout=15)
        assert not thread.is_alive(), "the recording FHIR server did not shut down"

"""Slow and lying HTTP clients over real sockets to a live uvicorn, served as the CLI serves the gateway.

Each is a clean 4xx (408, 414, 431) or a closed connection within its bound, never a held worker:
the gateway answers others promptly afterwards.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from dataclasses import replace
from urllib.parse import urlsplit

import httpx
import orjson
import pytest

from tests.conftest import live_gateway
from tests.fakepacs import FakePacs
from tests.integration.test_faults import INSTANCES, settings_for

BOUNDS = {
    "http_header_timeout": 1.0,
    "http_keep_alive_timeout": 1,
    "http_max_request_line": 1024,
    "http_max_header_bytes": 4096,
    "http_body_timeout": 1.5,
    "http_body_min_rate": 100,
}
PATIENCE = 10.0  # seconds a test waits for what must come within a bound of 1-5 s


@pytest.fixture(scope="module")
def root() -> Iterator[str]:
    with FakePacs(INSTANCES) as pacs:
        settings = replace(settings_for(pacs.upstream), **BOUNDS)  # type: ignore[arg-type]
        with live_gateway(settings) as root:
            yield root


def connect(root: str) -> socket.socket:
    address = urlsplit(root)
    sock = socket.create_connection((address.hostname, address.port), timeout=PATIENCE)
    return sock


def read_until_closed(sock: socket.socket) -> bytes:
    """Everything the gateway sends until it closes the connection (a timeout fails the test)."""
    received = b""
    deadline = time.monotonic() + PATIENCE
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return received
        if not chunk:
            return received
        received += chunk
    raise AssertionError(f"the connection is still open after {PATIENCE} s; received {received[:200]!r}")


def status_and_body(response: bytes) -> tuple[int, dict[str, object]]:
    head, _, body = response.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), orjson.loads(body) if body.startswith(b"{") else {}


def assert_still_serving(root: str) -> None:
    assert httpx.get(root.rsplit("/", 1)[0] + "/health", timeout=5).status_code == 200


def test_a_connection_that_sends_nothing_is_closed(root: str) -> None:
    with connect(root) as sock:
        started = time.monotonic()
        assert read_until_closed(sock) == b""
        assert time.monotonic() - started < PATIENCE
    assert_still_serving(root)


def test_headers_sent_a_byte_at_a_time_are_a_408(root: str) -> None:
    with connect(root) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: gateway\r\n")
        for number in range(40):  # one header line every 0.1 s: each keeps the connection busy
            try:
                sock.sendall(f"X-Slow-{number}: y\r\n".encode())
            except (BrokenPipeError, ConnectionResetError):
                break
            time.sleep(0.1)
        status, body = status_and_body(read_until_closed(sock))
    assert status == 408 and "http" not in str(body.get("title", "")).lower()
    assert "did not arrive" in str(body["detail"])
    assert_still_serving(root)


def test_a_request_line_longer_than_the_bound_is_a_414(root: str) -> None:
    with connect(root) as sock:
        sock.sendall(b"GET /dicom-web/studies?PatientID=" + b"A" * 5000 + b" HTTP/1.1\r\nHost: gateway\r\n\r\n")
        status, body = status_and_body(read_until_closed(sock))
    assert status == 414 and "1024" in str(body["detail"])


@pytest.mark.parametrize("chunks", [1, 50])
def test_headers_longer_than_the_bound_are_a_431(root: str, chunks: int) -> None:
    fields = b"".join(b"X-Big-%d: %s\r\n" % (n, b"v" * 100) for n in range(60))
    head = b"GET /health HTTP/1.1\r\nHost: gateway\r\n" + fields
    with connect(root) as sock:
        size = len(head) // chunks + 1
        for start in range(0, len(head), size):
            try:
                sock.sendall(head[start : start + size])
            except (BrokenPipeError, ConnectionResetError):
                break
        status, body = status_and_body(read_until_closed(sock))
    assert status == 431 and "4096" in str(body["detail"])
    assert_still_serving(root)


def stow_head(root: str, length: int) -> bytes:
    path = urlsplit(root).path + "/studies"
    return (
        f"POST {path} HTTP/1.1\r\nHost: gateway\r\nAccept: application/dicom+json\r\n"
        f'Content-Type: multipart/related; type="application/dicom"; boundary=XXX\r\n'
        f"Content-Length: {length}\r\n\r\n"
    ).encode()


def test_a_body_shorter_than_its_content_length_is_a_408_and_a_closed_connection(root: str) -> None:
    with connect(root) as sock:
        sock.sendall(stow_head(root, 2 * 1024**3) + b"--XXX\r\nContent-Type: application/dicom\r\n\r\nDICM")
        started = time.monotonic()
        response = read_until_closed(sock)
    status, body = status_and_body(response)
    assert status == 408 and "stopped coming" in str(body["detail"]), response[:300]
    assert b"connection: close" in response.lower()
    assert time.monotonic() - started < PATIENCE
    assert_still_serving(root)


def test_a_trickling_body_is_a_408_for_its_rate(root: str) -> None:
    with connect(root) as sock:
        sock.sendall(stow_head(root, 100_000) + b"--XXX\r\nContent-Type: application/dicom\r\n\r\n")
        for _ in range(60):  # a byte every 0.2 s: never idle for 1.5 s, but 5 bytes/s
            try:
                sock.sendall(b"x")
            except (BrokenPipeError, ConnectionResetError):
                break
            time.sleep(0.2)
        status, body = status_and_body(read_until_closed(sock))
    assert status == 408 and "http_body_min_rate" in str(body["detail"])
    assert_still_serving(root)


def test_an_unread_body_is_drained_for_a_while_then_the_connection_closes(root: str) -> None:
    with connect(root) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: gateway\r\nContent-Length: 2147483648\r\n\r\nabc")
        first = sock.recv(65536)
        assert first.startswith(b"HTTP/1.1 200")
        for _ in range(30):  # keep sending some of the announced body: it is dropped, not waited on for ever
            try:
                sock.sendall(b"y" * 10)
            except (BrokenPipeError, ConnectionResetError):
                break
            time.sleep(0.2)
        read_until_closed(sock)
    assert_still_serving(root)


def test_an_idle_keep_alive_connection_is_closed_and_a_busy_one_is_served(root: str) -> None:
    request = b"GET /health HTTP/1.1\r\nHost: gateway\r\n\r\n"
    with connect(root) as sock:
        for _ in range(3):
            sock.sendall(request)
            assert sock.recv(65536).startswith(b"HTTP/1.1 200")
        started = time.monotonic()
        assert read_until_closed(sock) == b""
        assert time.monotonic() - started >= 0.5  # closed by the keep-alive bound, not at once


def test_pipelined_requests_and_a_body_on_a_kept_alive_connection_are_served(root: str) -> None:
    health = b"GET /health HTTP/1.1\r\nHost: gateway\r\n\r\n"
    with_body = b"GET /health HTTP/1.1\r\nHost: gateway\r\nContent-Length: 5\r\n\r\nhello"
    with connect(root) as sock:
        sock.sendall(health + with_body + health)
        received = b""
        deadline = time.monotonic() + PATIENCE
        while received.count(b"HTTP/1.1 200") < 3 and time.monotonic() < deadline:
            received += sock.recv(65536)
    assert received.count(b"HTTP/1.1 200") == 3

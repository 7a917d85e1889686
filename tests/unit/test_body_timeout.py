"""BodyTimeout: a body that stops or trickles while the application reads it is a RequestTimeout."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from gateway.errors import RequestTimeout
from gateway.serving.body import BodyTimeout

pytestmark = pytest.mark.anyio


def reader(result: dict[str, Any]) -> Any:
    """An ASGI app that reads its whole body, then answers; what happened goes into `result`."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        body = b""
        try:
            while True:
                message = await receive()
                body += message.get("body", b"")
                if not message.get("more_body", False):
                    break
        except RequestTimeout as exc:
            result["error"] = exc.detail
            return
        result["body"] = body
        await send({"type": "http.response.start", "status": 200, "headers": []})
        result["after"] = await receive()  # waiting for a disconnect: never timed

    return app


async def ignore(message: Any) -> None:
    pass


async def test_a_body_that_stops_coming_times_out() -> None:
    result: dict[str, Any] = {}

    async def receive() -> dict[str, Any]:
        if "sent" not in result:
            result["sent"] = True
            return {"type": "http.request", "body": b"abc", "more_body": True}
        await anyio.sleep(60)
        raise AssertionError("not reached")

    with anyio.fail_after(5):
        await BodyTimeout(reader(result), timeout=0.2, min_rate=0)({"type": "http"}, receive, ignore)
    assert "stopped coming" in result["error"] and "http_body_timeout" in result["error"]


async def test_a_trickle_under_the_minimum_rate_times_out_though_never_idle_for_long() -> None:
    result: dict[str, Any] = {}

    async def receive() -> dict[str, Any]:
        await anyio.sleep(0.05)
        return {"type": "http.request", "body": b"x", "more_body": True}

    with anyio.fail_after(5):
        await BodyTimeout(reader(result), timeout=0.3, min_rate=100)({"type": "http"}, receive, ignore)
    assert "http_body_min_rate" in result["error"]


async def test_a_steady_body_and_the_wait_after_the_answer_are_not_timed() -> None:
    result: dict[str, Any] = {}
    chunks = [b"a" * 1000] * 10

    async def receive() -> dict[str, Any]:
        if chunks:
            await anyio.sleep(0.02)
            chunk = chunks.pop()
            return {"type": "http.request", "body": chunk, "more_body": bool(chunks)}
        await anyio.sleep(0.5)  # longer than the timeout: a client that stays connected
        return {"type": "http.disconnect"}

    with anyio.fail_after(5):
        await BodyTimeout(reader(result), timeout=0.2, min_rate=1000)({"type": "http"}, receive, ignore)
    assert len(result["body"]) == 10_000 and result["after"] == {"type": "http.disconnect"}


async def test_the_wait_for_a_body_the_answer_did_not_need_is_not_timed() -> None:
    seen: list[dict[str, Any]] = []

    async def answers_first(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        seen.append(await receive())

    async def receive() -> dict[str, Any]:
        await anyio.sleep(0.4)
        return {"type": "http.request", "body": b"late", "more_body": True}

    with anyio.fail_after(5):
        await BodyTimeout(answers_first, timeout=0.1, min_rate=0)({"type": "http"}, receive, ignore)
    assert seen == [{"type": "http.request", "body": b"late", "more_body": True}]

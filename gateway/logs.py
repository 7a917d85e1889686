"""Logging set-up: readable lines or one JSON object per line, each carrying its request's id and upstream.

The request id comes from the client's ``X-Request-ID`` when it is a sane token, else it is made
up; :class:`RequestIdMiddleware` echoes it in the answer and keeps it in a context variable, so
every record logged while that request is served (in its task, the tasks it starts and the worker
threads anyio runs for it) names it.
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

import orjson

__all__ = [
    "REQUEST_ID_HEADER",
    "JsonFormatter",
    "RequestIdMiddleware",
    "configure_logging",
    "current_request_id",
    "current_upstream",
]

REQUEST_ID_HEADER = "x-request-id"
current_request_id: ContextVar[str | None] = ContextVar("gateway_request_id", default=None)
current_upstream: ContextVar[str | None] = ContextVar("gateway_upstream", default=None)

_SANE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:/+=@-]{1,128}$")
"""What a client's X-Request-ID may be to be used as is: it lands in logs, so no spaces or control characters."""

_TEXT_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


class _ContextFilter(logging.Filter):
    """Copies the request id and upstream of the current context onto each record."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = current_request_id.get()
        record.upstream = getattr(record, "upstream", None) or current_upstream.get()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message, request_id, upstream (and exception)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", None),
            "upstream": getattr(record, "upstream", None),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(entry).decode()


def configure_logging(level: str, log_format: str = "text") -> None:
    """Send every record to stderr at `level`, as text lines or JSON objects (`log_format`)."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(_TEXT_FORMAT))
    handler.addFilter(_ContextFilter())
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
    # pynetdicom logs every association at INFO; keep that for debugging sessions.
    logging.getLogger("pynetdicom").setLevel(logging.DEBUG if level == "debug" else logging.WARNING)
    # uvicorn's own loggers propagate to the root handler, so they share the format.
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers.clear()
        logging.getLogger(name).propagate = True


Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def request_id_of(scope: Scope) -> str:
    """The client's ``X-Request-ID`` if it is a sane token, else a new random one."""
    for name, value in scope.get("headers", ()):
        if name == REQUEST_ID_HEADER.encode():
            text: str = value.decode("latin-1")
            if _SANE_REQUEST_ID.match(text):
                return text
            break
    return uuid.uuid4().hex


class RequestIdMiddleware:
    """Gives each HTTP request an id, echoed as ``X-Request-ID`` and carried into its log records."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = request_id_of(scope)
        scope.setdefault("state", {})["request_id"] = request_id
        header = (REQUEST_ID_HEADER.encode(), request_id.encode())

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), header]
            await send(message)

        token = current_request_id.set(request_id)
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            current_request_id.reset(token)

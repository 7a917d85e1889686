"""uvicorn's httptools protocol, with the bounds on request heads and idle connections it lacks.

uvicorn (0.3x-0.5x, httptools) limits neither the size of a request line and its headers nor the
time they take to arrive: its keep-alive timer is cancelled by any byte and armed again only
after a response, so a client sending a header byte every few seconds (slowloris), or one that
connects and sends nothing, holds its connection for ever; and a body announced longer than it
is, on a route that answers without reading it, keeps the connection reading it. This protocol
adds, per connection:

- ``header_timeout``: the request line and headers arrive within this many seconds of the
  connection's opening or of the request's first byte; otherwise a 408 (or, when nothing at all
  came, the connection is just closed);
- ``max_request_line`` and ``max_header_bytes``: a longer request target is a 414, a longer head
  (request line and header fields) a 431; the connection is closed after either;
- ``body_timeout``: a body the application answered without reading is read and dropped for at
  most this long, then the connection is closed.

Idle keep-alive connections are uvicorn's ``timeout_keep_alive``; a slow body while the
application reads it is :mod:`gateway.serving.body`'s.
"""

from __future__ import annotations

import asyncio
import logging
from asyncio import TimerHandle
from dataclasses import dataclass
from typing import Any, ClassVar

import orjson
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

__all__ = ["HttpLimits", "guarded_protocol"]

logger = logging.getLogger("gateway.http")


@dataclass(frozen=True)
class HttpLimits:
    """Bounds on one HTTP connection's request heads and leftover bodies (see the module docstring)."""

    header_timeout: float = 10.0
    max_request_line: int = 8192
    max_header_bytes: int = 65536
    body_timeout: float = 30.0


_TITLES = {408: "Request timeout", 414: "URI too long", 431: "Request header fields too large"}


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """:class:`HttpToolsProtocol` with :class:`HttpLimits`; made by :func:`guarded_protocol`."""

    limits: ClassVar[HttpLimits] = HttpLimits()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_timer: TimerHandle | None = None
        self._drain_timer: TimerHandle | None = None
        self._in_head = True
        self._head_bytes = 0
        self._message_complete = True
        self._rejected = False

    # Connection events

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timers()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._rejected:
            return
        if self._in_head:
            self._head_bytes += len(data)
        super().data_received(data)
        if self._in_head and not self._rejected and not self.transport.is_closing():
            # Still inside a head after all of `data`: it is at least this long.
            if len(getattr(self, "url", b"")) > self.limits.max_request_line:
                self._reject(414, f"the request target is longer than {self.limits.max_request_line} bytes")
            elif self._head_bytes > self.limits.max_header_bytes:
                self._reject(431, f"the request head is longer than {self.limits.max_header_bytes} bytes")

    # Parser callbacks

    def on_message_begin(self) -> None:
        if self._rejected:
            return
        self._in_head = True
        self._message_complete = False
        self._arm_head_timer()
        super().on_message_begin()

    def on_url(self, url: bytes) -> None:
        if not self._rejected:
            super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self._rejected:
            super().on_header(name, value)

    def on_headers_complete(self) -> None:
        if self._rejected:
            return
        self._in_head = False
        self._cancel(self._head_timer)
        self._head_timer = None
        size = len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers)
        if len(self.url) > self.limits.max_request_line:
            self._reject(414, f"the request target is longer than {self.limits.max_request_line} bytes")
        elif size > self.limits.max_header_bytes:
            self._reject(431, f"the request head is longer than {self.limits.max_header_bytes} bytes")
        else:
            self._head_bytes = 0
            super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        if not self._rejected:
            super().on_body(body)

    def on_message_complete(self) -> None:
        if self._rejected:
            return
        self._message_complete = True
        self._in_head, self._head_bytes = True, 0  # what comes next is the next request's head
        if self._drain_timer is not None:
            # The leftover body is read: the connection may serve another request.
            self._cancel(self._drain_timer)
            self._drain_timer = None
            if not self.pipeline and not self.transport.is_closing():
                self.timeout_keep_alive_task = self.loop.call_later(
                    self.timeout_keep_alive, self.timeout_keep_alive_handler
                )
        super().on_message_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self._message_complete and not self.transport.is_closing():
            # Answered before its body was read: drop the rest of it, for a while.
            self._unset_keepalive_if_required()
            self._drain_timer = self.loop.call_later(self.limits.body_timeout, self._drain_timeout)

    # Timers and rejections

    def _arm_head_timer(self) -> None:
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(self.limits.header_timeout, self._head_timeout)

    def _head_timeout(self) -> None:
        self._head_timer = None
        if self.transport.is_closing() or not self._in_head:
            return
        if self._head_bytes:
            self._reject(408, f"the request head did not arrive within {self.limits.header_timeout:g} s")
        else:
            self.transport.close()  # nothing came: there is no request to answer

    def _drain_timeout(self) -> None:
        self._drain_timer = None
        if not self.transport.is_closing():
            logger.info("%s: closing a connection whose unread request body is still coming", self._peer())
            self.transport.close()

    def _reject(self, status: int, detail: str) -> None:
        """Answer `status` with a JSON error body, and close the connection.

        While an earlier (pipelined) request's answer is still being sent, nothing can be written
        in its midst: the connection is just closed.
        """
        self._rejected = True
        self._cancel_timers()
        logger.info("%s: %d %s", self._peer(), status, detail)
        if self.cycle is None or self.cycle.response_complete:
            body = orjson.dumps({"status": status, "title": _TITLES[status], "detail": detail})
            head = [
                STATUS_LINE[status],
                b"content-type: application/json\r\n",
                b"content-length: " + str(len(body)).encode("ascii") + b"\r\n",
                b"connection: close\r\n\r\n",
            ]
            self.transport.write(b"".join(head) + body)
        self.transport.close()

    def _peer(self) -> str:
        return f"{self.client[0]}:{self.client[1]}" if self.client else "client"

    def _cancel_timers(self) -> None:
        self._cancel(self._head_timer)
        self._cancel(self._drain_timer)
        self._head_timer = self._drain_timer = None

    @staticmethod
    def _cancel(timer: TimerHandle | None) -> None:
        if timer is not None:
            timer.cancel()


def guarded_protocol(limits: HttpLimits) -> type[GuardedHttpToolsProtocol]:
    """The protocol class uvicorn instantiates per connection, bound to `limits`."""
    return type("GatewayHttpProtocol", (GuardedHttpToolsProtocol,), {"limits": limits})

"""An ASGI middleware that bounds how long reading a request body may wait, and how slowly it may come.

uvicorn hands a request body to the application as it arrives and waits for more without limit:
a client announcing 2 GiB and sending ten bytes, or one byte a second, holds a STOW-RS request
(and its temporary files and associations) for ever. Here, every ``receive()`` of a body waits at
most ``timeout`` seconds, and the time spent waiting over the whole body may not exceed
``timeout`` plus one second per ``min_rate`` bytes received (the model of Apache's
mod_reqtimeout ``body=timeout,MinRate=min_rate``). Only time the application spends waiting for
the client counts: a STOW-RS request that reads slowly because the PACS takes its time is not
the client's fault. Past either bound :class:`~gateway.errors.RequestTimeout` (408, connection
closed) is raised from ``receive()``, where the route reading the body sees it.
"""

from __future__ import annotations

import time
from typing import Any

import anyio

from gateway.errors import RequestTimeout

__all__ = ["BodyTimeout"]

Message = dict[str, Any]
Scope = dict[str, Any]


class BodyTimeout:
    """Bound the waits for a request body (see the module docstring).

    Parameters
    ----------
    app
        The ASGI application.
    timeout : float
        Longest wait for the next piece of a body, in seconds.
    min_rate : int
        Bytes per second a body must average while the application waits for it; 0: no minimum.
    """

    def __init__(self, app: Any, *, timeout: float, min_rate: int) -> None:
        self.app = app
        self.timeout = timeout
        self.min_rate = min_rate

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        paced = _PacedReceive(receive, self.timeout, self.min_rate)

        async def send_and_note(message: Message) -> None:
            if message["type"] == "http.response.start":
                # Answered: what receive() waits for now is a disconnect, or a body the answer did not
                # need (the server drains that, for a while).
                paced.answered = True
            await send(message)

        await self.app(scope, paced, send_and_note)


class _PacedReceive:
    """``receive()`` of one request, timed until its body is complete."""

    def __init__(self, receive: Any, timeout: float, min_rate: int) -> None:
        self._receive = receive
        self._timeout = timeout
        self._min_rate = min_rate
        self._complete = False
        self.answered = False
        self._waited = 0.0
        self._received = 0

    def _allowance(self) -> float:
        if not self._min_rate:
            return self._timeout
        budget = self._timeout + self._received / self._min_rate - self._waited
        return max(0.0, min(self._timeout, budget))

    async def __call__(self) -> Message:
        if self._complete or self.answered:
            return dict(await self._receive())
        allowance = self._allowance()
        started = time.monotonic()
        with anyio.move_on_after(allowance) as scope:
            message: Message = dict(await self._receive())
        self._waited += time.monotonic() - started
        if scope.cancelled_caught:
            raise RequestTimeout(self._reason(allowance))
        if message["type"] == "http.request":
            self._received += len(message.get("body", b""))
            self._complete = not message.get("more_body", False)
        else:
            self._complete = True
        return message

    def _reason(self, allowance: float) -> str:
        if allowance >= self._timeout:
            return f"the request body stopped coming: nothing for {self._timeout:g} s (http_body_timeout)"
        return (
            f"the request body comes too slowly: {self._received} bytes in {self._waited:.0f} s of waiting, "
            f"less than {self._min_rate} bytes/s (http_body_min_rate)"
        )

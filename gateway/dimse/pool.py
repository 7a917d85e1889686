"""A bounded pool of associations to one upstream PACS.

Semantics follow jackc/puddle: :meth:`AssociationPool.acquire` hands out an association for one
operation at a time (pynetdicom cannot multiplex operations on one association); the caller
gives it back with :meth:`release` after a clean final status, or :meth:`destroy` after a
timeout, an abort or a cancellation, because then the association's state is unknown.

Never more than ``max_associations`` exist at once, counting those being opened. An acquire that
waits longer than ``acquire_timeout`` raises :class:`~gateway.errors.PoolExhausted` (503). So
does a client request's first acquire when ``max_waiting`` acquires (of any request) are
already waiting, at once: under overload a client is better told to come back than kept waiting
out the whole timeout. Later acquires of a request that got in (the C-FINDs a search fans out,
the retrieve after a C-FIND) wait as usual, so work already begun is not thrown away; requests
are told apart by :func:`begin_request`. Counting every waiting acquire, not only requests, lets
fewer requests in when the ones in flight fan out widely: measured with 150 clients, counting
only requests let p99 grow from 9 s to 86 s (bench/README.md). Idle associations are checked
before reuse and closed after ``idle_timeout``.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.to_thread
from pynetdicom.association import Association

from gateway.dimse.pynetdicom_internals import ReactorNotParked, pause_reactor, wake_waiting_operation
from gateway.errors import PoolExhausted, UpstreamTimeout, UpstreamUnavailable
from gateway.metrics import POOL_WAIT
from gateway.settings import UpstreamSettings

__all__ = ["AssociationPool", "PoolStats", "PooledAssociation", "begin_request"]

logger = logging.getLogger(__name__)

_WAITING_PER_ASSOCIATION = 8
"""Acquires that may wait per association of the pool when ``max_waiting`` is 0 (the default)."""


@dataclass
class _Admission:
    admitted: bool = False


# The client request the current task works for; tasks it starts share the same object.
_request: ContextVar[_Admission | None] = ContextVar("gateway_pool_request", default=None)


def begin_request() -> None:
    """Mark the current task as serving a new client request (call it before any acquire).

    Its first acquire may be turned away when the queue is full; once one succeeded, its later
    acquires, in this task or in tasks started from it, wait. Acquires outside any request are
    treated as first ones.
    """
    _request.set(_Admission())


@dataclass(eq=False)
class PooledAssociation:
    """An established association and what the pool knows about it."""

    assoc: Association
    created: float = field(default_factory=time.monotonic)
    last_used: float = field(default_factory=time.monotonic)
    uses: int = 0
    _message_ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def next_message_id(self) -> int:
        """A message ID unique on this association (PS3.7 §9.1.1.1), wrapping at 65535."""
        return (next(self._message_ids) - 1) % 65535 + 1

    @property
    def reused(self) -> bool:
        """True once the association has carried an operation before the current one."""
        return self.uses > 1


@dataclass(frozen=True)
class PoolStats:
    """A snapshot of a pool, for health checks and metrics."""

    upstream: str
    max_size: int
    total: int
    idle: int
    in_use: int
    waiting: int
    max_waiting: int
    turned_away: int
    opened: int
    destroyed: int
    failed_opens: int


class AssociationPool:
    """Associations to one upstream, opened on demand by `open_association`.

    Parameters
    ----------
    settings : UpstreamSettings
        Size and timeouts.
    open_association : callable
        Blocking constructor: returns an established association or raises
        :class:`~gateway.errors.UpstreamError`. Runs in a worker thread.
    limiter : anyio.CapacityLimiter
        The threads that run blocking pynetdicom calls for this upstream.
    kind : str
        What the pool is for (``query``, ``retrieve``, ``store``), in its metrics.
    """

    def __init__(
        self,
        settings: UpstreamSettings,
        open_association: Callable[[], Association],
        limiter: anyio.CapacityLimiter,
        kind: str = "query",
    ) -> None:
        self.settings = settings
        self._wait_metric = POOL_WAIT.labels(settings.name, kind)
        self._open = open_association
        self._limiter = limiter
        # The slots bound the associations that exist (idle, in use, or being opened). _idle is
        # only touched from the event loop thread, so it needs no lock.
        self._slots = anyio.Semaphore(settings.max_associations)
        self._idle: list[PooledAssociation] = []
        self._in_use: set[PooledAssociation] = set()
        self._waiting = 0
        self.max_waiting = settings.max_waiting or _WAITING_PER_ASSOCIATION * settings.max_associations
        self._turned_away = 0
        self._opened = 0
        self._destroyed = 0
        self._failed_opens = 0
        self._closed = False
        self._warming: anyio.Event | None = None

    async def acquire(self) -> PooledAssociation:
        """Get an association for one operation.

        Raises
        ------
        PoolExhausted
            No association became free within ``acquire_timeout``.
        UpstreamUnavailable, UpstreamTimeout
            A new association was needed and could not be established.
        """
        if self._closed:
            raise UpstreamUnavailable("the gateway is shutting down", upstream=self.settings.name)
        request = _request.get()
        if self._waiting >= self.max_waiting and (request is None or not request.admitted):
            self._turned_away += 1
            raise PoolExhausted(
                f"all {self.settings.max_associations} associations to {self.settings.address} are busy and "
                f"{self._waiting} requests are waiting for one",
                upstream=self.settings.name,
            )
        self._waiting += 1
        started = time.perf_counter()
        try:
            with anyio.move_on_after(self.settings.acquire_timeout) as scope:
                await self._slots.acquire()
        finally:
            self._waiting -= 1
            self._wait_metric.observe(time.perf_counter() - started)
        if scope.cancelled_caught:
            raise PoolExhausted(
                f"all {self.settings.max_associations} associations to {self.settings.address} stayed busy for "
                f"{self.settings.acquire_timeout:g} s",
                upstream=self.settings.name,
            )
        try:
            if not self._idle and self._warming is not None:
                await self._warming.wait()  # the association being opened ahead of need is for us
            conn = await self._take_idle() or await self._open_new()
        except BaseException:
            self._slots.release()
            raise
        conn.uses += 1
        self._in_use.add(conn)
        if request is not None:
            request.admitted = True
        return conn

    async def _take_idle(self) -> PooledAssociation | None:
        now = time.monotonic()
        while self._idle:
            conn = self._idle.pop()  # most recently used first: its socket is the warmest
            if conn.assoc.is_established and now - conn.last_used < self.settings.idle_timeout:
                return conn
            await self._close(conn, conn.assoc.is_established)
        return None

    async def _open_new(self) -> PooledAssociation:
        try:
            assoc = await anyio.to_thread.run_sync(self._open, limiter=self._limiter)
        except (UpstreamUnavailable, UpstreamTimeout, PoolExhausted):
            self._failed_opens += 1
            raise
        self._opened += 1
        return PooledAssociation(assoc)

    async def warm(self) -> None:
        """Open one association ahead of need, when none is open; a failure is only logged.

        For associations that are slow to negotiate (a C-GET's 120 storage contexts take over
        100 ms), so that the next request does not wait for that.
        """
        if self._closed or self._idle or self._in_use:
            return
        try:
            self._slots.acquire_nowait()
        except anyio.WouldBlock:
            return
        self._warming = warming = anyio.Event()
        try:
            conn = await self._open_new()
        except (UpstreamUnavailable, UpstreamTimeout, PoolExhausted) as exc:
            logger.info("upstream %s: could not open an association ahead of need: %s", self.settings.name, exc)
            return
        finally:
            self._slots.release()
            self._warming = None
            warming.set()
        if self._closed:
            await self._close(conn, True)
        else:
            self._idle.append(conn)

    def release(self, conn: PooledAssociation) -> None:
        """Give back an association whose last operation ended with a final status."""
        self._in_use.discard(conn)
        conn.last_used = time.monotonic()
        if self._closed or not conn.assoc.is_established:
            self._spawn_close(conn, release=not self._closed)
            return
        self._idle.append(conn)
        self._slots.release()

    def destroy(self, conn: PooledAssociation) -> None:
        """Abort an association whose state is unknown (timeout, abort, cancellation)."""
        self._in_use.discard(conn)
        self._spawn_close(conn, release=False)

    def _spawn_close(self, conn: PooledAssociation, *, release: bool) -> None:
        # Closing blocks on the network; do it off the caller's path. The slot is freed at once
        # because an aborted association no longer counts against the PACS's limit.
        self._destroyed += 1
        self._slots.release()
        _close_in_background(conn.assoc, release=release)

    async def _close(self, conn: PooledAssociation, release: bool) -> None:
        self._destroyed += 1
        await anyio.to_thread.run_sync(_close_association, conn.assoc, release, limiter=self._limiter)

    async def close(self) -> None:
        """Release idle associations and refuse new acquires; in-use ones close when returned."""
        self._closed = True
        idle, self._idle = self._idle, []
        with anyio.move_on_after(self.settings.acse_timeout + 1):
            async with anyio.create_task_group() as tasks:
                for conn in idle:
                    tasks.start_soon(self._close, conn, True)
        for conn in list(self._in_use):
            conn.assoc.abort(block=False)
            threading.Thread(target=self._wake_operation, args=(conn,), name="assoc-wake", daemon=True).start()

    def _wake_operation(self, conn: PooledAssociation) -> None:
        """Wake the operation still waiting for a response on an association we aborted.

        pynetdicom does not: it would sit out its whole dimse_timeout. The "no response" marker
        must be queued more than once, because the abort restarts the association's own reactor,
        which empties the queue until it notices the abort.
        """
        deadline = time.monotonic() + self.settings.acse_timeout
        while conn in self._in_use and time.monotonic() < deadline:
            wake_waiting_operation(conn.assoc)
            time.sleep(0.05)

    def stats(self) -> PoolStats:
        """A snapshot of the pool's counters."""
        return PoolStats(
            upstream=self.settings.name,
            max_size=self.settings.max_associations,
            total=len(self._idle) + len(self._in_use),
            idle=len(self._idle),
            in_use=len(self._in_use),
            waiting=self._waiting,
            max_waiting=self.max_waiting,
            turned_away=self._turned_away,
            opened=self._opened,
            destroyed=self._destroyed,
            failed_opens=self._failed_opens,
        )


def _close_association(assoc: Association, release: bool) -> None:
    try:
        if release and assoc.is_established:
            # pynetdicom's release() trusts a pause flag that may be stale: park the reactor first.
            try:
                pause_reactor(assoc)
            except ReactorNotParked:
                assoc.abort()
                return
            assoc.release()
        else:
            assoc.abort()
    except Exception:  # closing is best effort: the peer may already be gone
        logger.debug("closing an association failed", exc_info=True)


def _close_in_background(assoc: Any, *, release: bool) -> None:
    threading.Thread(target=_close_association, args=(assoc, release), name="assoc-close", daemon=True).start()

"""A one-producer, one-consumer buffer between a DIMSE worker thread and an async consumer.

Why not a bounded memory stream with backpressure: a C-FIND that blocks on a slow consumer keeps
its association busy, and the consumer may itself be waiting for another association (to count
the series of the study it just received). With every association held by a producer that waits
for its consumer, the pool would deadlock. The spool never blocks the producer, so every C-FIND
runs to completion (or to its C-CANCEL) and frees its association on its own; memory stays
bounded because results beyond `memory_items` are pickled to a temporary file.
"""

from __future__ import annotations

import asyncio
import os
import pickle
import struct
import tempfile
import threading
from collections import deque
from collections.abc import AsyncIterator
from typing import Any

import anyio

__all__ = ["ResultSpool"]

_LENGTH = struct.Struct("<I")


class ResultSpool:
    """Results of one upstream operation, in arrival order.

    The producer (a worker thread) calls :meth:`put` and finally :meth:`finish`; the consumer
    iterates with ``async for``. :attr:`cancelled` tells the producer to stop early.
    """

    def __init__(self, memory_items: int = 1000) -> None:
        self._memory_items = memory_items
        # _lock guards every field below; it is never held while waiting or doing I/O other than
        # the appends and reads of one record.
        self._lock = threading.Lock()
        self._items: deque[Any] = deque()
        self._file: Any = None
        self._written = 0
        self._read = 0
        self._done = False
        self._error: BaseException | None = None
        self._waiting = False
        self._wakeup = anyio.Event()
        self._loop = asyncio.get_running_loop()  # the gateway runs on asyncio (uvicorn)
        self._loop_thread = threading.get_ident()
        self.cancelled = threading.Event()
        self.count = 0

    def put(self, item: Any) -> bool:
        """Append a result (producer side; never blocks on the consumer).

        Returns False, dropping the item, once the consumer has cancelled.
        """
        with self._lock:
            if self.cancelled.is_set():
                return False
            self.count += 1
            if self._file is None and len(self._items) < self._memory_items:
                self._items.append(item)
            else:
                if self._file is None:
                    self._file = tempfile.TemporaryFile(prefix="gateway-spool-")
                record = pickle.dumps(item, protocol=pickle.HIGHEST_PROTOCOL)
                os.pwrite(self._file.fileno(), _LENGTH.pack(len(record)) + record, self._written)
                self._written += _LENGTH.size + len(record)
            wake = self._waiting
        if wake:
            self._notify()
        return True

    def finish(self, error: BaseException | None = None) -> None:
        """Mark the end of the results, with the error that ended them if any."""
        with self._lock:
            self._done = True
            self._error = error
        self._notify()

    def cancel(self) -> list[Any]:
        """Ask the producer to stop (it sends C-CANCEL) and drop what it still produces.

        Returns the results held in memory that the consumer never took, for the caller to
        release whatever they hold; none are added after this returns.
        """
        with self._lock:
            self.cancelled.set()
            left, self._items = list(self._items), deque()
        return left

    def close(self) -> None:
        """Release the temporary file, if one was used."""
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None

    def _notify(self) -> None:
        if threading.get_ident() == self._loop_thread:
            self._wakeup.set()
            return
        # Never wait for the event loop here: the producer is a DIMSE thread whose next answer
        # (a C-STORE response, say) the PACS is waiting for, while the loop may be busy sending.
        try:
            self._loop.call_soon_threadsafe(self._wakeup.set)
        except RuntimeError:  # the event loop is gone (shutdown); nobody is waiting any more
            pass

    def _take(self) -> tuple[bool, Any]:
        with self._lock:
            if self._items:
                return True, self._items.popleft()
            if self._file is not None and self._read < self._written:
                fd = self._file.fileno()
                (length,) = _LENGTH.unpack(os.pread(fd, _LENGTH.size, self._read))
                record = os.pread(fd, length, self._read + _LENGTH.size)
                self._read += _LENGTH.size + length
                return True, pickle.loads(record)
            if self._done:
                if self._error is not None:
                    raise self._error
                return False, None
            self._waiting = True
            self._wakeup = anyio.Event()
            return True, _EMPTY

    async def __aiter__(self) -> AsyncIterator[Any]:
        try:
            while True:
                more, item = self._take()
                if not more:
                    return
                if item is _EMPTY:
                    await self._wakeup.wait()
                    with self._lock:
                        self._waiting = False
                    continue
                yield item
        finally:
            self.close()


_EMPTY = object()

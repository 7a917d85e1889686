"""Log lines about refused instances, bounded per peer so that a flood cannot fill the log."""

from __future__ import annotations

import logging
import threading
import time

__all__ = ["RefusalLog"]

_BURST = 10
_WINDOW = 10.0
_MAX_PEERS = 10_000


class RefusalLog:
    """Warnings about refused instances, at most `burst` per peer every `window` seconds.

    A flood from one peer costs a summary line per window instead of a line per C-STORE.
    """

    def __init__(self, log: logging.Logger, burst: int = _BURST, window: float = _WINDOW) -> None:
        self._log = log
        self._burst = burst
        self._window = window
        self._lock = threading.Lock()
        self._peers: dict[str, tuple[float, int]] = {}  # peer -> (window start, refusals in it)
        self.refused = 0

    def refuse(self, peer: str, message: str, *args: object) -> None:
        """Count one refusal from `peer` and log it unless that peer has used up its window."""
        now = time.monotonic()
        with self._lock:
            self.refused += 1
            started, count = self._peers.get(peer, (now, 0))
            if now - started >= self._window:
                if count > self._burst:
                    self._log.warning(
                        "%d more refused instances from %s in %g s were not logged",
                        count - self._burst,
                        peer,
                        self._window,
                    )
                started, count = now, 0
            count += 1
            self._peers[peer] = (started, count)
            if len(self._peers) > _MAX_PEERS:  # a scan from many addresses: forget the oldest windows
                for stale in [p for p, (t, _) in self._peers.items() if now - t >= self._window]:
                    del self._peers[stale]
        if count <= self._burst:
            self._log.warning(message, *args)

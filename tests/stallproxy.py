"""A TCP proxy on 127.0.0.1 that forwards to a real PACS and then stops reading: a stalled PACS.

Each connection is forwarded PDU by PDU (PS3.8 9.3.1: a 6-byte header with the PDU's length)
from the gateway to the PACS until `stall_after` PDUs have passed, and then the proxy stops
reading from the gateway while keeping the connection open, as a PACS that hangs mid-transfer
does: the gateway's sends fill the socket buffers and block. Answers from the PACS still come
through. :meth:`StallingProxy.close` ends it all.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from dataclasses import dataclass, field


def _read_exactly(sock: socket.socket, count: int) -> bytes:
    data = bytearray()
    while len(data) < count:
        chunk = sock.recv(count - len(data))
        if not chunk:
            raise ConnectionError("closed")
        data += chunk
    return bytes(data)


@dataclass
class StallingProxy:
    """Listens on 127.0.0.1:`port`, forwards to `target`; stops reading after `stall_after` PDUs."""

    target: tuple[str, int]
    stall_after: int
    port: int = 0
    stalled: int = 0
    """Connections that are stalled now (or were, until closed)."""
    _closing: threading.Event = field(default_factory=threading.Event)
    _sockets: list[socket.socket] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __enter__(self) -> StallingProxy:
        self._listener = socket.create_server(("127.0.0.1", self.port))
        self._listener.settimeout(0.2)
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, name="stallproxy", daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def close(self) -> None:
        self._closing.set()
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for sock in [self._listener, *sockets]:
            with contextlib.suppress(OSError):
                sock.close()

    def _accept(self) -> None:
        while not self._closing.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            # A small receive buffer, so that a stalled connection fills up soon.
            client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
            upstream = socket.create_connection(self.target, timeout=5)
            upstream.settimeout(None)
            with self._lock:
                self._sockets += [client, upstream]
            threading.Thread(target=self._forward_pdus, args=(client, upstream), daemon=True).start()
            threading.Thread(target=self._forward_bytes, args=(upstream, client), daemon=True).start()

    def _forward_pdus(self, source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError, ConnectionError):
            for _ in range(self.stall_after):
                header = _read_exactly(source, 6)
                sink.sendall(header + _read_exactly(source, int.from_bytes(header[2:6], "big")))
            with self._lock:
                self.stalled += 1
            self._closing.wait()  # keep the connection open, read nothing more

    def _forward_bytes(self, source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)

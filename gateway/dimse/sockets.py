"""Socket options for upstream associations, chosen per kind of traffic.

A C-FIND is a ping-pong of small PDUs. With default sockets, Nagle's algorithm on one side and
delayed ACKs on the other turn each exchange into a 40 ms stall: measured on loopback, a C-FIND
over a reused association took 88 ms with default sockets, 48 ms with ``TCP_NODELAY`` and 5 ms
with ``TCP_NODELAY`` plus ``TCP_QUICKACK`` re-armed after every read (Linux clears QUICKACK
after it has been used). Bulk receive is the opposite: quick ACKs cost throughput, so
associations that carry C-GET data use :attr:`SocketProfile.BULK`.

pynetdicom creates its sockets in ``AssociationSocket``; :func:`install` swaps in a subclass that
applies the profile of the :class:`TunedAE` that owns the association. Associations of any other
AE keep pynetdicom's defaults for those options. How pynetdicom's internals are reached is
:mod:`gateway.dimse.pynetdicom_internals`' business.

Every association, whatever its AE, also gets a bound on each network wait once connected:
pynetdicom leaves a requested association's socket blocking without a timeout, so a PACS that
keeps the connection open but stops reading blocks the reactor in ``socket.send`` for ever, and
an abort (which waits for the reactor) with it. A send or a read that makes no progress for the
association's ``dimse_timeout`` now closes the connection (:func:`stall_timeout`), and the
operation ends as any unanswered one does.

Over DICOM TLS (see :mod:`gateway.dimse.tls`) the same socket is an :class:`ssl.SSLSocket`. Two
things then differ. A TLS record is decrypted whole: bytes of the next PDU may sit in the SSL
object's buffer, where ``select`` cannot see them, so readiness also asks ``pending()`` (without
it an association would hang with its answer already received). And pynetdicom only logs why a
TLS handshake failed; :class:`TlsSocket` and :func:`tls_failure` keep the reason for the error the
client gets.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import os
import select
import socket
import ssl
from typing import Any

from pynetdicom import AE, evt
from pynetdicom.transport import AddressInformation, AssociationSocket

from gateway.dimse import pynetdicom_internals

__all__ = ["SocketProfile", "TlsSocket", "TunedAE", "install", "stall_timeout", "tls_failure"]

logger = logging.getLogger(__name__)

_QUICKACK = getattr(socket, "TCP_QUICKACK", None)
_REACTOR_WAIT = 0.005  # seconds a reactor waits in select before its housekeeping (timers, kill flag)
_DEFAULT_STALL_TIMEOUT = 60.0


def stall_timeout(assoc: Any) -> float:
    """Seconds a send or read on `assoc`'s connection may make no progress: its DIMSE timeout.

    A peer that reads nothing of a DIMSE message for that long will not answer it in time
    either. Falls back on the network timeout, then on 60 s: never unbounded.
    """
    for value in (getattr(assoc, "dimse_timeout", None), getattr(assoc, "network_timeout", None)):
        if value is not None and value > 0:
            return float(value)
    return _DEFAULT_STALL_TIMEOUT


class SocketProfile(enum.Enum):
    """How an association's socket is tuned."""

    INTERACTIVE = "interactive"
    """TCP_NODELAY and TCP_QUICKACK after each read: small request/response exchanges."""
    BULK = "bulk"
    """TCP_NODELAY only, and whole-PDU reads: large transfers, where delayed ACKs help throughput."""


class TunedAE(AE):
    """A pynetdicom AE whose requested associations use `socket_profile`."""

    def __init__(
        self,
        *args: Any,
        socket_profile: SocketProfile = SocketProfile.INTERACTIVE,
        tls_args: tuple[ssl.SSLContext, str] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        # Its associations need the tuned socket class (reactor checkpoint, bounded waits), whoever
        # builds the AE: the application, the publish command, a benchmark. Installing is idempotent.
        install()
        pynetdicom_internals.adopt(self)
        self.socket_profile = socket_profile
        self.tls_args = tls_args
        """``(context, server_hostname)`` for DICOM TLS on the associations it requests, or None."""


class TlsSocket(ssl.SSLSocket):
    """An SSL socket that remembers why its handshake failed (pynetdicom catches and only logs it).

    Contexts make these with ``context.sslsocket_class = TlsSocket``.
    """

    handshake_error: OSError | None = None

    def do_handshake(self, block: bool = False) -> None:
        try:
            super().do_handshake(block)
        except OSError as exc:
            self.handshake_error = exc
            raise


def tls_failure(assoc: Any) -> OSError | None:
    """Why DICOM TLS failed on `assoc` (handshake, or an alert after it), or None if it did not."""
    sock = getattr(assoc.dul, "socket", None)
    return sock.tls_error if isinstance(sock, _TunedAssociationSocket) else None


class _Waker:
    """A self-pipe: lets a thread blocked in ``select`` on a socket be woken from another thread."""

    def __init__(self) -> None:
        self.fileno, self._write = os.pipe()
        os.set_blocking(self.fileno, False)
        os.set_blocking(self._write, False)

    def wake(self) -> None:
        with contextlib.suppress(OSError):  # full (a wake-up is pending anyway) or closed
            os.write(self._write, b"\0")

    def drain(self) -> None:
        with contextlib.suppress(OSError):
            while os.read(self.fileno, 4096):
                pass

    def close(self) -> None:
        for fd in (self.fileno, self._write):
            with contextlib.suppress(OSError):
                os.close(fd)


class _TunedAssociationSocket(AssociationSocket):
    def __init__(self, assoc: Any, client_socket: socket.socket | None = None, address: Any = None) -> None:
        super().__init__(assoc, client_socket=client_socket, address=address)
        pynetdicom_internals.check_socket(self)
        self._waker: _Waker | None = None
        self.tls_error: OSError | None = None
        profile = self._profile()
        if client_socket is not None:  # accepted: _create_socket and connect are not called
            client_socket.settimeout(stall_timeout(assoc))
            if profile is not None:
                client_socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if profile is not None:  # one of the gateway's associations; its reactor has not started yet
            pynetdicom_internals.install_reactor_checkpoint(assoc)
            pynetdicom_internals.quiet_association(assoc)
            self._wake_on_send(assoc.dul)

    def _wake_on_send(self, dul: Any) -> None:
        """Let the DUL reactor sleep in ``select`` instead of polling every millisecond.

        pynetdicom's reactor checks the socket, then sleeps 1 ms when it found nothing. On a bulk
        transfer that millisecond is paid between PDUs and again before each C-STORE response,
        while the PACS waits for it; on a query, before the request leaves. Here the reactor does
        not sleep but waits in :attr:`ready` for the socket or for a primitive to send (the
        queue's ``put`` wakes it), 5 ms at most: faster, and an idle association wakes 200 times
        a second instead of 1,000.
        """
        waker = self._waker = _Waker()
        pynetdicom_internals.wake_dul_on_send(dul, waker.wake)

    def connect(self, primitive: Any) -> None:
        """Connect, over TLS keep why the handshake failed, then bound every wait on the connection.

        pynetdicom wraps the socket inside ``connect`` and drops it on failure; wrapping it here
        first keeps hold of it. The handshake runs under the connection timeout, as the TCP
        connect does: a peer that accepts TCP but never completes the handshake fails in time.
        """
        tls_args, self.tls_args = self.tls_args, None
        wrapped = None
        if tls_args is not None and self.socket is not None:
            context, server_hostname = tls_args
            wrapped = self.socket = context.wrap_socket(self.socket, server_hostname=server_hostname)
        super().connect(primitive)
        if isinstance(wrapped, TlsSocket) and wrapped.handshake_error is not None:
            self.tls_error = wrapped.handshake_error
        # pynetdicom leaves the connected socket without a timeout: bound every later send and read.
        if self.socket is not None and self._is_connected:
            self.socket.settimeout(stall_timeout(self.assoc))

    @property
    def ready(self) -> bool:
        sock = self.socket
        if isinstance(sock, ssl.SSLSocket) and self._is_connected and sock.pending():
            return True  # decrypted bytes wait in the SSL buffer: select would not see them
        waker = self._waker
        if waker is None or self.socket is None or not self._is_connected:
            return bool(super().ready)
        try:
            connection = self.socket.fileno()
            readable, _, _ = select.select([connection, waker.fileno], [], [], _REACTOR_WAIT)
        except (OSError, ValueError):
            self.event_queue.put("Evt17")  # the connection is gone, as pynetdicom reports it
            return False
        if waker.fileno in readable:
            waker.drain()
        return connection in readable

    def send(self, bytestream: bytes) -> None:
        """Send a PDU; a peer that takes none of it within :func:`stall_timeout` loses the connection.

        As pynetdicom's own ``send``, a failure is reported to the state machine as Evt17
        (transport connection closed), never raised; this one also says why in the log.
        """
        sock = self.socket
        try:
            if sock is None:
                raise OSError("no socket")
            view = memoryview(bytestream)
            while view:
                view = view[sock.send(view) :]
        except TimeoutError:
            peer = getattr(self.assoc, "acceptor" if self.assoc.is_requestor else "requestor", None)
            logger.warning(
                "association with %s: the peer read nothing for %g s; connection closed",
                getattr(peer, "address", "?"),
                stall_timeout(self.assoc),
            )
            self._abandon(sock)
            return
        except ssl.SSLError as exc:
            # An alert met while sending: with TLS 1.3 a PACS may refuse the client's certificate
            # (or its absence) only once the client has finished its handshake.
            self.tls_error = exc
            self._abandon(sock)
            return
        except Exception:
            self._abandon(sock)
            return
        evt.trigger(self.assoc, evt.EVT_DATA_SENT, {"data": bytestream})

    def _abandon(self, sock: socket.socket | None) -> None:
        # The connection is unusable: shut it down at once, so that the peer knows and nothing
        # else of ours waits on it, then let the state machine see it closed (Evt17).
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        self.event_queue.put("Evt17")

    def _create_socket(self, address: AddressInformation) -> socket.socket:
        sock: socket.socket = super()._create_socket(address)
        profile = self._profile()
        if profile is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    def _profile(self) -> SocketProfile | None:
        ae = getattr(self.assoc, "ae", None)
        return ae.socket_profile if isinstance(ae, TunedAE) else None

    def _shutdown_socket(self) -> None:
        # pynetdicom skips close() when shutdown() fails, as it does on a socket whose connect
        # was refused, leaking one file descriptor per failed association attempt.
        sock = self.socket
        super()._shutdown_socket()
        if sock is not None:
            sock.close()
        if self._waker is not None:
            self._waker.close()
            self._waker = None

    def recv(self, nr_bytes: int) -> bytearray:
        try:
            return self._recv(nr_bytes)
        except ssl.SSLError as exc:
            # An alert after the handshake: with TLS 1.3 a PACS refuses the client's certificate
            # (or its absence) only once the client has finished, on the first read.
            self.tls_error = exc
            raise

    def _recv(self, nr_bytes: int) -> bytearray:
        if self._profile() is SocketProfile.BULK and self.socket is not None:
            return self._recv_whole(nr_bytes)
        data: bytearray = super().recv(nr_bytes)
        if _QUICKACK is not None and self.socket is not None and self._profile() is SocketProfile.INTERACTIVE:
            try:
                self.socket.setsockopt(socket.IPPROTO_TCP, _QUICKACK, 1)
            except OSError:  # the socket was closed under us; the DUL notices on its own
                pass
        return data

    def _recv_whole(self, nr_bytes: int) -> bytearray:
        """Read `nr_bytes` straight into one buffer, as few calls as the kernel allows.

        pynetdicom reads 4 KiB at a time and appends: a 64 KiB PDU costs 16 system calls and as
        many copies, which makes its receive loop, not the network, the limit of a C-GET.
        """
        assert self.socket is not None
        buffer = bytearray(nr_bytes)
        view = memoryview(buffer)
        received = 0
        while received < nr_bytes:
            count = self.socket.recv_into(view[received:], nr_bytes - received)
            if count == 0:  # the peer closed the connection: return what there is, as pynetdicom does
                del view
                del buffer[received:]
                return buffer
            received += count
        return buffer


def install() -> None:
    """Make pynetdicom create tuned sockets for the associations a :class:`TunedAE` requests or accepts."""
    pynetdicom_internals.install_socket_class(_TunedAssociationSocket)

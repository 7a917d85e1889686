"""The gateway's own storage SCP: where a PACS sends the instances of a C-MOVE.

A C-MOVE's instances arrive on associations the PACS opens to ``--store-port``, each C-STORE
carrying the Move Originator AE Title and Move Originator Message ID (PS3.7 9.1.1.1) of the
C-MOVE that caused it. :class:`MoveRouter` hands out message IDs that are unique among all moves
in flight (across associations and upstreams), so each instance finds its request even when two
clients move the same study at once. An instance that no move in flight asked for is refused with
a log line. Only the upstreams' AE titles may associate.

With ``store_tls`` the SCP speaks DICOM TLS only (see :mod:`gateway.dimse.tls`).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable

from pynetdicom import evt
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.events import Event, EventHandlerType
from pynetdicom.transport import ThreadedAssociationServer

from gateway.dimse.sockets import SocketProfile, TunedAE
from gateway.dimse.storage import RECEIVED_TRANSFER_SYNTAXES, storage_sop_classes
from gateway.dimse.tls import TlsAssociationServer, server_context
from gateway.dimse.transfer import Transfer
from gateway.errors import UpstreamUnavailable
from gateway.settings import Settings, UpstreamSettings

__all__ = ["MoveRouter", "StorageServer"]

logger = logging.getLogger(__name__)

_NOT_AUTHORIZED = 0x0124  # Refused: Not Authorized (PS3.7 C.5.x general statuses)
_MAX_MESSAGE_ID = 65535


class MoveRouter:
    """The C-MOVEs in flight, by the message ID their instances will carry."""

    def __init__(self, ae_title: str) -> None:
        self.ae_title = ae_title
        self._lock = threading.Lock()
        self._moves: dict[int, Transfer] = {}
        self._last_id = 0

    def register(self, transfer: Transfer) -> int:
        """A message ID for a new C-MOVE, unique among the moves in flight."""
        with self._lock:
            if len(self._moves) >= _MAX_MESSAGE_ID:
                raise RuntimeError("65535 C-MOVEs in flight")
            while True:
                self._last_id = self._last_id % _MAX_MESSAGE_ID + 1
                if self._last_id not in self._moves:
                    self._moves[self._last_id] = transfer
                    return self._last_id

    def __len__(self) -> int:
        """C-MOVEs in flight (waiting for their instances)."""
        with self._lock:
            return len(self._moves)

    def unregister(self, message_id: int) -> None:
        """The C-MOVE with `message_id` has its final response: its instances are all in."""
        with self._lock:
            self._moves.pop(message_id, None)

    def route(self, originator_ae: str | None, message_id: int | None) -> Transfer | None:
        """The transfer an arriving instance belongs to, or None."""
        with self._lock:
            if originator_ae is not None and originator_ae.strip() != self.ae_title:
                return None
            if message_id is not None:
                return self._moves.get(message_id)
            # A PACS that leaves out the originator message ID: unambiguous only with one move in flight.
            return next(iter(self._moves.values())) if len(self._moves) == 1 else None


class StorageServer:
    """The storage SCP on ``store_port``; start with :meth:`start`, stop with :meth:`stop`."""

    def __init__(self, settings: Settings, router: MoveRouter, upstreams: Iterable[UpstreamSettings]) -> None:
        self._settings = settings
        self.router = router
        self._ae = TunedAE(ae_title=settings.ae_title, socket_profile=SocketProfile.BULK)
        moving = list(upstreams)
        # The storage SOP classes of those upstreams, as for C-GET: pynetdicom copies every
        # supported context into each association it accepts, which costs 100 ms for all 170.
        for sop_class in dict.fromkeys(uid for u in moving for uid in storage_sop_classes(u)):
            self._ae.add_supported_context(sop_class, list(RECEIVED_TRANSFER_SYNTAXES))
        self._ae.require_calling_aet = sorted({u.ae_title for u in moving})
        self._ae.network_timeout = max(u.network_timeout for u in settings.upstreams)
        self._ae.dimse_timeout = max(u.dimse_timeout for u in settings.upstreams)
        self._ssl_context = server_context(settings)
        self._handshake_timeout = max(u.acse_timeout for u in settings.upstreams)
        self._server: ThreadedAssociationServer | None = None

    def start(self) -> None:
        """Listen on ``host:store_port``.

        Raises
        ------
        UpstreamUnavailable
            The port cannot be bound.
        """
        address = (self._settings.host, self._settings.store_port)
        handlers: list[EventHandlerType] = [(evt.EVT_C_STORE, self._on_c_store)]
        try:
            if self._ssl_context is None:
                self._server = self._ae.start_server(address, block=False, evt_handlers=handlers)
            else:
                self._server = self._start_tls_server(address, handlers)
        except OSError as exc:
            raise UpstreamUnavailable(
                f"cannot listen for C-MOVE instances on {address[0]}:{address[1]}: {exc}", upstream="*"
            ) from exc
        over = " over DICOM TLS" if self._ssl_context is not None else ""
        logger.info("storage SCP %s listening on %s:%d for C-MOVE%s", self._settings.ae_title, *address, over)

    def _start_tls_server(
        self, address: tuple[str, int], handlers: list[EventHandlerType]
    ) -> ThreadedAssociationServer:
        """What ``AE.start_server(block=False)`` does, with a server whose handshakes cannot block it."""
        server = self._ae.make_server(
            address, ssl_context=self._ssl_context, evt_handlers=handlers, server_class=TlsAssociationServer
        )
        assert isinstance(server, TlsAssociationServer)
        server.handshake_timeout = self._handshake_timeout
        threading.Thread(target=server.serve_forever, name="storage-scp-tls", daemon=True).start()
        self._ae._servers.append(server)  # where AE.start_server keeps it; server.shutdown() takes it out
        return server

    def stop(self) -> None:
        """Stop listening and abort the associations in progress."""
        if self._server is not None:
            self._server.shutdown()
            self._server = None

    def _on_c_store(self, event: Event) -> int:
        request = event.request
        assert isinstance(request, C_STORE)
        originator = request.MoveOriginatorApplicationEntityTitle
        originator_ae = originator.decode(errors="replace") if isinstance(originator, bytes) else originator
        message_id = request.MoveOriginatorMessageID
        transfer = self.router.route(originator_ae, message_id)
        if transfer is None:
            logger.warning(
                "storage SCP: refused %s from %s: no C-MOVE in flight asked for it (originator %s, message %s)",
                request.AffectedSOPInstanceUID,
                event.assoc.requestor.ae_title,
                originator_ae,
                message_id,
            )
            event.dataset_path.unlink(missing_ok=True)
            return _NOT_AUTHORIZED
        return transfer.receive(event.dataset_path)

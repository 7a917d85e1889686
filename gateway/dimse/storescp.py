"""The gateway's own storage SCP: where a PACS sends the instances of a C-MOVE.

A C-MOVE's instances arrive on associations the PACS opens to ``--store-port``, each C-STORE
carrying the Move Originator AE Title and Move Originator Message ID (PS3.7 9.1.1.1) of the
C-MOVE that caused it. Everything in a C-STORE request can be forged by whoever reaches this
port, so an instance is taken only when all of these hold (see docs/conformance.md):

- it names the gateway as Move Originator and the message ID of a C-MOVE in flight. The
  :class:`MoveRouter` draws those IDs at random among the free ones, so they cannot be guessed
  from earlier moves, and a C-STORE without an originator message ID is refused;
- the association's calling AE title is that C-MOVE's upstream's, and its peer address is one
  that upstream may send from (:mod:`gateway.dimse.peers`);
- the data set's own UIDs belong to what the C-MOVE asked for (checked by
  :meth:`~gateway.dimse.transfer.Transfer.receive` from the received header, before anything
  is handed on).

Everything refused is answered with a failure status and logged with the peer's address and AE
title (at most a few lines per peer and window: :class:`~gateway.dimse.refusals.RefusalLog`).

With ``store_tls`` the SCP speaks DICOM TLS only (see :mod:`gateway.dimse.tls`).
"""

from __future__ import annotations

import logging
import secrets
import threading
from collections.abc import Iterable
from dataclasses import dataclass

from pynetdicom import evt
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.events import Event, EventHandlerType
from pynetdicom.transport import ThreadedAssociationServer

from gateway.dimse.peers import SourceAddresses
from gateway.dimse.refusals import RefusalLog
from gateway.dimse.sockets import SocketProfile, TunedAE
from gateway.dimse.storage import RECEIVED_TRANSFER_SYNTAXES, storage_sop_classes
from gateway.dimse.tls import TlsAssociationServer, server_context
from gateway.dimse.transfer import NOT_AUTHORIZED, Transfer
from gateway.errors import UpstreamUnavailable
from gateway.settings import Settings, UpstreamSettings

__all__ = ["MoveRouter", "StorageServer"]

logger = logging.getLogger(__name__)

_MAX_MESSAGE_ID = 65535


@dataclass(frozen=True)
class _Move:
    transfer: Transfer
    upstream_ae: str
    sources: SourceAddresses


class MoveRouter:
    """The C-MOVEs in flight, by the message ID their instances will carry.

    Parameters
    ----------
    ae_title : str
        The gateway's AE title: the Move Originator its instances name.
    upstreams : iterable of UpstreamSettings
        The upstreams that retrieve by C-MOVE, for their AE titles and source addresses.
    """

    def __init__(self, ae_title: str, upstreams: Iterable[UpstreamSettings] = ()) -> None:
        self.ae_title = ae_title
        self._lock = threading.Lock()
        self._moves: dict[int, _Move] = {}
        self._sources = {u.name: SourceAddresses(u) for u in upstreams}

    def register(self, transfer: Transfer, upstream: UpstreamSettings) -> int:
        """A message ID for a new C-MOVE to `upstream`: random among those not in flight.

        Blocking: may resolve the upstream's host names (see :mod:`gateway.dimse.peers`).
        """
        sources = self._sources.get(upstream.name)
        if sources is None:
            sources = self._sources[upstream.name] = SourceAddresses(upstream)
        sources.refresh()
        move = _Move(transfer, upstream.ae_title, sources)
        with self._lock:
            if len(self._moves) >= _MAX_MESSAGE_ID:
                raise RuntimeError("65535 C-MOVEs in flight")
            while True:
                message_id = secrets.randbelow(_MAX_MESSAGE_ID) + 1
                if message_id not in self._moves:
                    self._moves[message_id] = move
                    return message_id

    def __len__(self) -> int:
        """C-MOVEs in flight (waiting for their instances)."""
        with self._lock:
            return len(self._moves)

    def unregister(self, message_id: int) -> None:
        """The C-MOVE with `message_id` has its final response: its instances are all in."""
        with self._lock:
            self._moves.pop(message_id, None)

    def route(
        self, *, calling_ae: str, address: str, originator_ae: str | None, message_id: int | None
    ) -> Transfer | str:
        """The transfer an arriving instance belongs to, or why it is refused.

        Parameters
        ----------
        calling_ae : str
            The calling AE title of the association the instance came on.
        address : str
            The peer's IP address.
        originator_ae, message_id
            The C-STORE's Move Originator AE Title and Message ID.
        """
        if originator_ae is None or originator_ae.strip() != self.ae_title:
            return f"Move Originator AE Title is {originator_ae!r}, not {self.ae_title!r}"
        if message_id is None:
            return "no Move Originator Message ID"
        with self._lock:
            move = self._moves.get(message_id)
        if move is None:
            return f"no C-MOVE in flight has message ID {message_id}"
        if calling_ae.strip() != move.upstream_ae:
            return f"the C-MOVE with message ID {message_id} went to {move.upstream_ae!r}"
        if not move.sources.admits(address):
            return f"{address} is not an address upstream {move.sources.upstream} sends from"
        return move.transfer


class StorageServer:
    """The storage SCP on ``store_port``; start with :meth:`start`, stop with :meth:`stop`."""

    def __init__(self, settings: Settings, router: MoveRouter, upstreams: Iterable[UpstreamSettings]) -> None:
        self._settings = settings
        self.router = router
        self.refusals = RefusalLog(logger)
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
        requestor = event.assoc.requestor
        calling_ae, address = str(requestor.ae_title).strip(), str(requestor.address)
        peer = f"{calling_ae}@{address}"
        originator = request.MoveOriginatorApplicationEntityTitle
        originator_ae = originator.decode(errors="replace") if isinstance(originator, bytes) else originator
        routed = self.router.route(
            calling_ae=calling_ae,
            address=address,
            originator_ae=originator_ae,
            message_id=request.MoveOriginatorMessageID,
        )
        if isinstance(routed, str):
            self.refusals.refuse(
                address, "storage SCP: refused instance %s from %s: %s", request.AffectedSOPInstanceUID, peer, routed
            )
            event.dataset_path.unlink(missing_ok=True)
            return NOT_AUTHORIZED
        return routed.receive(event.dataset_path, str(request.AffectedSOPInstanceUID or ""), peer, self.refusals)

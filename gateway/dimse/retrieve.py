"""C-GET and C-MOVE against one upstream PACS, feeding a :class:`~gateway.dimse.transfer.Transfer`.

- **C-GET** runs on associations of its own pool: they propose the storage SOP classes in the
  SCP role (see :mod:`gateway.dimse.storage`) and use the bulk socket profile, and the instances
  come back on the same association.
- **C-MOVE** runs on the query pool's associations (small messages) and names the gateway's own
  storage SCP as destination; the instances arrive there and are routed back to this transfer by
  the Move Originator Message ID (see :mod:`gateway.dimse.storescp`).

Closing the transfer early (the client went away) sends C-CANCEL, and the association that
carried it is never reused (see :meth:`gateway.dimse.client.UpstreamClient.find` for why).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Literal

import anyio
import anyio.abc
import anyio.to_thread
from pydicom.dataset import Dataset
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import build_context, evt
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.events import Event

from gateway.dimse.client import MOVE_MODEL, UpstreamClient, upstream_ae
from gateway.dimse.pool import AssociationPool, PooledAssociation
from gateway.dimse.pynetdicom_internals import ReactorNotParked, on_gateway_behalf, pause_reactor
from gateway.dimse.refusals import RefusalLog
from gateway.dimse.sockets import SocketProfile
from gateway.dimse.status import CANCEL, PENDING, SUCCESS, no_response_error
from gateway.dimse.storage import storage_contexts, storage_roles, storage_sop_classes
from gateway.dimse.transfer import Transfer
from gateway.errors import GatewayError, UpstreamError
from gateway.metrics import time_dimse_operation

if TYPE_CHECKING:
    from gateway.dimse.storescp import MoveRouter

__all__ = ["GET_MODEL", "RetrieveClient"]

logger = logging.getLogger(__name__)

GET_MODEL = UID("1.2.840.10008.5.1.4.1.2.2.3")  # Study Root Query/Retrieve Information Model - GET
_STORE_REFUSED = 0xA700

Outcome = Literal["done", "cancelled", "timeout", "aborted"]
_Blocking = Callable[[PooledAssociation, Dataset, Transfer], Outcome]
_Responses = Iterator[tuple[Dataset, Dataset | None]]


class RetrieveClient:
    """Retrieves from one upstream by its configured method; use as an async context manager.

    Parameters
    ----------
    finder : UpstreamClient
        The upstream's query client: its settings, and its pool for C-MOVE requests.
    calling_ae_title : str
        The gateway's AE title, also the C-MOVE destination.
    router : MoveRouter, optional
        The gateway's storage SCP router; required when the upstream retrieves by C-MOVE.
    """

    def __init__(self, finder: UpstreamClient, calling_ae_title: str, router: MoveRouter | None = None) -> None:
        self.settings = settings = finder.settings
        self.name = settings.name
        self.method = settings.retrieve
        self._finder = finder
        self._ae_title = calling_ae_title
        self._router = router
        if self.method == "move" and router is None:
            raise ValueError("C-MOVE needs the gateway's storage SCP")
        sop_classes = storage_sop_classes(settings)
        self._contexts = [build_context(GET_MODEL, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])]
        self._contexts += storage_contexts(sop_classes)
        self._roles = storage_roles(sop_classes)
        self._ae = upstream_ae(settings, calling_ae_title, SocketProfile.BULK)
        # Which transfer each C-GET association is carrying right now, for the C-STORE handler.
        self._receiving: dict[Association, Transfer] = {}
        self._receiving_lock = threading.Lock()
        self._limiter = anyio.CapacityLimiter(settings.max_associations + 2)
        self.pool = AssociationPool(settings, self._open_association, self._limiter, kind="retrieve")
        self.refusals = RefusalLog(logger)
        self._tasks: anyio.abc.TaskGroup | None = None

    async def __aenter__(self) -> RetrieveClient:
        self._tasks = anyio.create_task_group()
        await self._tasks.__aenter__()
        if self.method == "get":
            self._tasks.start_soon(self.pool.warm)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.pool.close()
        assert self._tasks is not None
        self._tasks.cancel_scope.cancel()
        await self._tasks.__aexit__(None, None, None)

    def start(self, identifier: Dataset, transfer: Transfer) -> None:
        """Start retrieving what `identifier` names into `transfer` (in the background)."""
        if self._tasks is None:
            raise RuntimeError("RetrieveClient must be entered before use")
        run = self._run_get if self.method == "get" else self._run_move
        self._tasks.start_soon(run, identifier, transfer)

    def _open_association(self) -> Association:
        return self._finder.open_association(
            self._ae, self._contexts, ext_neg=list(self._roles), evt_handlers=[(evt.EVT_C_STORE, self._on_c_store)]
        )

    def _on_c_store(self, event: Event) -> int:
        """A C-STORE sub-operation of a C-GET (association's reactor thread)."""
        with self._receiving_lock:
            transfer = self._receiving.get(event.assoc)
        if transfer is None:
            logger.warning("upstream %s: refused an instance outside any C-GET", self.name)
            event.dataset_path.unlink(missing_ok=True)
            return _STORE_REFUSED
        request = event.request
        assert isinstance(request, C_STORE)
        peer = f"{self.settings.ae_title}@{event.assoc.acceptor.address}"
        return transfer.receive(event.dataset_path, str(request.AffectedSOPInstanceUID or ""), peer, self.refusals)

    async def _run_get(self, identifier: Dataset, transfer: Transfer) -> None:
        await self._run(identifier, transfer, self.pool, self._blocking_get, "C-GET")

    async def _run_move(self, identifier: Dataset, transfer: Transfer) -> None:
        await self._run(identifier, transfer, self._finder.pool, self._blocking_move, "C-MOVE")

    async def _run(
        self, identifier: Dataset, transfer: Transfer, pool: AssociationPool, blocking: _Blocking, operation: str
    ) -> None:
        error: BaseException | None = None
        try:
            for attempt in (1, 2):
                with time_dimse_operation(self.name, operation[2:].lower()) as timer:
                    conn = await pool.acquire()
                    try:
                        outcome = await anyio.to_thread.run_sync(
                            blocking, conn, identifier, transfer, limiter=self._limiter
                        )
                    except BaseException:
                        pool.destroy(conn)
                        raise
                    timer.outcome = {"done": "success"}.get(outcome, outcome)
                if outcome == "done":
                    pool.release(conn)
                    return
                pool.destroy(conn)
                if outcome == "cancelled":
                    if pool is self.pool and self._tasks is not None:
                        self._tasks.start_soon(pool.warm)  # a viewer that cancels one retrieve often asks again
                    return
                # A pooled association the PACS dropped while idle: retry once on a new one.
                if outcome == "aborted" and conn.reused and transfer.received == 0 and attempt == 1:
                    logger.info("upstream %s: pooled association was closed by the PACS; retrying", self.name)
                    continue
                raise no_response_error(operation=operation, upstream=self.name, timed_out=outcome == "timeout")
        except GatewayError as exc:
            error = exc
        except Exception as exc:
            logger.exception("upstream %s: %s of %s failed unexpectedly", self.name, operation, transfer.description)
            error = UpstreamError(f"{operation} failed: {exc}", upstream=self.name)
        finally:
            transfer.finish(error)

    @on_gateway_behalf()
    def _blocking_get(self, conn: PooledAssociation, identifier: Dataset, transfer: Transfer) -> Outcome:
        assoc = conn.assoc
        with self._receiving_lock:
            self._receiving[assoc] = transfer
        try:
            if not _paused(assoc):
                return "aborted"
            msg_id = conn.next_message_id()
            responses = assoc.send_c_get(identifier, GET_MODEL, msg_id=msg_id)
            return self._follow(assoc, responses, msg_id, GET_MODEL, transfer)
        finally:
            with self._receiving_lock:
                self._receiving.pop(assoc, None)

    @on_gateway_behalf()
    def _blocking_move(self, conn: PooledAssociation, identifier: Dataset, transfer: Transfer) -> Outcome:
        assert self._router is not None
        assoc = conn.assoc
        # The message ID must be unique among all moves in flight, whatever their association:
        # it is how the storage SCP tells whose instance has arrived.
        msg_id = self._router.register(transfer, self.settings)
        try:
            if not _paused(assoc):
                return "aborted"
            responses = assoc.send_c_move(identifier, self._ae_title, MOVE_MODEL, msg_id=msg_id)
            return self._follow(assoc, responses, msg_id, MOVE_MODEL, transfer)
        finally:
            self._router.unregister(msg_id)

    def _follow(
        self, assoc: Association, responses: _Responses, msg_id: int, model: UID, transfer: Transfer
    ) -> Outcome:
        """Read the pending responses up to the final one; C-CANCEL if the consumer has gone."""
        cancel_sent = False
        waited_since = time.monotonic()
        try:
            for status, identifier in responses:
                if not status:
                    timed_out = time.monotonic() - waited_since >= self.settings.dimse_timeout * 0.95
                    return "timeout" if timed_out else "aborted"
                waited_since = time.monotonic()
                code = int(status.get("Status", 0xC000))
                transfer.counts.update(status, identifier)
                if code in PENDING:
                    if transfer.cancelled and not cancel_sent:
                        assoc.send_c_cancel(msg_id, query_model=model)
                        cancel_sent = True
                    continue
                transfer.final_status = code
                if cancel_sent or code == CANCEL:
                    return "cancelled"
                if code != SUCCESS:
                    logger.warning(
                        "upstream %s: retrieve of %s ended with status 0x%04X (completed %d, failed %d, warning %d)",
                        self.name,
                        transfer.description,
                        code,
                        transfer.counts.completed,
                        transfer.counts.failed,
                        transfer.counts.warning,
                    )
                return "done"
        except RuntimeError:  # "association must be established": the PACS closed it
            return "aborted"
        return "aborted"


def _paused(assoc: Association) -> bool:
    """Park `assoc`'s reactor for an operation; False if it would not (the association is unusable)."""
    try:
        pause_reactor(assoc)
    except ReactorNotParked:
        logger.warning("an association's reactor did not pause; giving the association up")
        return False
    return True

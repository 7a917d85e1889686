"""Async DIMSE operations against one upstream PACS, over its association pool.

Each operation runs its whole blocking pynetdicom loop in one worker thread (bounded by the
upstream's own :class:`anyio.CapacityLimiter`, so DIMSE work never starves anyio's default
thread pool) and hands results to the async side through a :class:`ResultSpool`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Sequence
from types import TracebackType
from typing import Literal

import anyio
import anyio.abc
import anyio.to_thread
from pydicom.dataset import Dataset
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import build_context
from pynetdicom.association import Association
from pynetdicom.events import EventHandlerType
from pynetdicom.pdu_primitives import SCP_SCU_RoleSelectionNegotiation, SOPClassExtendedNegotiation
from pynetdicom.presentation import PresentationContext

from gateway.dimse.pool import AssociationPool, PooledAssociation
from gateway.dimse.pynetdicom_internals import NegotiationItem, on_gateway_behalf, pause_reactor
from gateway.dimse.sockets import SocketProfile, TunedAE, tls_failure
from gateway.dimse.spool import ResultSpool
from gateway.dimse.status import CANCEL, PENDING, SUCCESS, failure_for_status, no_response_error
from gateway.dimse.tls import client_context, upstream_tls_error
from gateway.errors import GatewayError, PoolExhausted, UpstreamError, UpstreamTimeout, UpstreamUnavailable
from gateway.metrics import time_dimse_operation
from gateway.settings import UpstreamSettings

__all__ = ["FIND_MODEL", "MOVE_MODEL", "UpstreamClient", "open_association", "upstream_ae"]

logger = logging.getLogger(__name__)

FIND_MODEL = UID("1.2.840.10008.5.1.4.1.2.2.1")  # Study Root Query/Retrieve Information Model - FIND
MOVE_MODEL = UID("1.2.840.10008.5.1.4.1.2.2.2")  # Study Root Query/Retrieve Information Model - MOVE
VERIFICATION = UID("1.2.840.10008.1.1")
_TRANSFER_SYNTAXES: list[str | UID] = [ExplicitVRLittleEndian, ImplicitVRLittleEndian]

Outcome = Literal["ok", "cancelled", "failure", "timeout", "aborted"]


def upstream_ae(settings: UpstreamSettings, ae_title: str, profile: SocketProfile) -> TunedAE:
    """The gateway's AE for associations to one upstream: its timeouts, the socket `profile`, its TLS."""
    ae = TunedAE(ae_title=ae_title, socket_profile=profile, tls_args=client_context(settings))
    ae.connection_timeout = settings.connect_timeout
    ae.acse_timeout = settings.acse_timeout
    ae.dimse_timeout = settings.dimse_timeout
    ae.network_timeout = settings.network_timeout
    return ae


class UpstreamClient:
    """DIMSE operations on one upstream PACS; use as an async context manager.

    Parameters
    ----------
    settings : UpstreamSettings
        Where the PACS is and how to talk to it.
    calling_ae_title : str
        The gateway's own AE title.
    fuzzy_matching : bool
        Propose fuzzy semantic matching of person names (PS3.4 C.2.2.2.1) in extended negotiation.
    """

    def __init__(self, settings: UpstreamSettings, calling_ae_title: str, *, fuzzy_matching: bool = False) -> None:
        self.settings = settings
        self.name = settings.name
        self._ae = upstream_ae(settings, calling_ae_title, SocketProfile.INTERACTIVE)
        self._contexts = [build_context(model, _TRANSFER_SYNTAXES) for model in (FIND_MODEL, MOVE_MODEL, VERIFICATION)]
        # PS3.4 C.5.1.1.1: relational queries, combined date-time matching, fuzzy matching.
        negotiation = SOPClassExtendedNegotiation()
        negotiation.sop_class_uid = FIND_MODEL
        negotiation.service_class_application_information = b"\x01\x01" + (b"\x01" if fuzzy_matching else b"\x00")
        self._ext_neg: list[NegotiationItem] = [negotiation]
        self._limiter = anyio.CapacityLimiter(settings.max_associations + 2)
        self.pool = AssociationPool(settings, self._open_query_association, self._limiter)
        self._tasks: anyio.abc.TaskGroup | None = None

    async def __aenter__(self) -> UpstreamClient:
        self._tasks = anyio.create_task_group()
        await self._tasks.__aenter__()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        # Refuse new work and abort what is in flight, then wait for the worker threads to see it.
        await self.pool.close()
        assert self._tasks is not None
        self._tasks.cancel_scope.cancel()
        await self._tasks.__aexit__(exc_type, exc, tb)

    def _open_query_association(self) -> Association:
        return self.open_association(self._ae, self._contexts, ext_neg=list(self._ext_neg))

    def open_association(
        self,
        ae: TunedAE,
        contexts: list[PresentationContext],
        *,
        ext_neg: Sequence[NegotiationItem | SCP_SCU_RoleSelectionNegotiation] = (),
        evt_handlers: list[EventHandlerType] | None = None,
    ) -> Association:
        """Blocking: establish a new association to this upstream; see :func:`open_association`."""
        return open_association(self.settings, ae, contexts, ext_neg=ext_neg, evt_handlers=evt_handlers)

    async def echo(self) -> None:
        """C-ECHO over a pooled association; raises :class:`UpstreamError` on failure."""
        with time_dimse_operation(self.name, "echo") as timer:
            await self._echo()
            timer.outcome = "success"

    async def _echo(self) -> None:
        conn = await self.pool.acquire()

        @on_gateway_behalf()
        def send_c_echo() -> Dataset:
            pause_reactor(conn.assoc)
            return conn.assoc.send_c_echo()

        try:
            status = await anyio.to_thread.run_sync(send_c_echo, limiter=self._limiter)
        except BaseException:
            self.pool.destroy(conn)
            raise
        if not status or int(status.Status) != SUCCESS:
            self.pool.destroy(conn)
            raise no_response_error(operation="C-ECHO", upstream=self.name, timed_out=not status)
        self.pool.release(conn)

    async def find(self, identifier: Dataset) -> AsyncIterator[Dataset]:
        """C-FIND (Study Root); yields each pending response's identifier.

        Closing the iterator early (``limit`` reached, client gone) sends C-CANCEL upstream.

        Raises
        ------
        UpstreamError
            A failure status, timeout or abort, even after some results (PS3.4 C.4.1.3.1: a
            failure is never a short answer).
        """
        if self._tasks is None:
            raise RuntimeError("UpstreamClient must be entered before use")
        spool = ResultSpool()
        self._tasks.start_soon(self._run_find, identifier, spool)
        try:
            async for dataset in spool:
                yield dataset
        finally:
            spool.cancel()

    async def _run_find(self, identifier: Dataset, spool: ResultSpool) -> None:
        error: BaseException | None = None
        try:
            for attempt in (1, 2):
                with time_dimse_operation(self.name, "find") as timer:
                    conn = await self.pool.acquire()
                    try:
                        outcome, code = await anyio.to_thread.run_sync(
                            self._blocking_find, conn, identifier, spool, limiter=self._limiter
                        )
                    except BaseException:
                        self.pool.destroy(conn)
                        raise
                    timer.outcome = {"ok": "success"}.get(outcome, outcome)
                if outcome == "cancelled":
                    # A PACS may answer the C-CANCEL after the final response (dcmqrscp does), and
                    # pynetdicom does not check which request a response belongs to: a stray
                    # answer would end the next C-FIND on this association. Don't reuse it.
                    self.pool.destroy(conn)
                    return
                if outcome in ("ok", "failure"):
                    self.pool.release(conn)
                    if outcome == "failure":
                        raise failure_for_status(code, operation="C-FIND", upstream=self.name)
                    return
                self.pool.destroy(conn)
                # A pooled association the PACS closed while it was idle fails before any result:
                # that is not the PACS failing the query, so try once more on a fresh association.
                if outcome == "aborted" and conn.reused and spool.count == 0 and attempt == 1:
                    logger.info("upstream %s: pooled association was closed by the PACS; retrying", self.name)
                    continue
                raise no_response_error(operation="C-FIND", upstream=self.name, timed_out=outcome == "timeout")
        except GatewayError as exc:
            error = exc
        except Exception as exc:
            logger.exception("upstream %s: C-FIND failed unexpectedly", self.name)
            error = UpstreamError(f"C-FIND failed: {exc}", upstream=self.name)
        finally:
            spool.finish(error)

    @on_gateway_behalf()
    def _blocking_find(self, conn: PooledAssociation, identifier: Dataset, spool: ResultSpool) -> tuple[Outcome, int]:
        """The whole C-FIND exchange, in a worker thread."""
        assoc = conn.assoc
        msg_id = conn.next_message_id()
        cancel_sent = False
        waited_since = time.monotonic()
        try:
            pause_reactor(assoc)
            responses = assoc.send_c_find(identifier, FIND_MODEL, msg_id=msg_id)
            for status, dataset in responses:
                if not status:
                    timed_out = time.monotonic() - waited_since >= self.settings.dimse_timeout * 0.95
                    return ("timeout" if timed_out else "aborted"), 0
                waited_since = time.monotonic()
                code = int(status.get("Status", 0xC000))
                if code in PENDING:
                    if spool.cancelled.is_set():
                        if not cancel_sent:
                            assoc.send_c_cancel(msg_id, query_model=FIND_MODEL)
                            cancel_sent = True
                    elif dataset is not None:
                        spool.put(dataset)
                    continue
                if code in (SUCCESS, CANCEL):
                    return ("cancelled" if cancel_sent else "ok"), code
                return "failure", code
        except RuntimeError:  # "association must be established" (the PACS closed it), or its reactor is stuck
            return "aborted", 0
        return "aborted", 0


@on_gateway_behalf()
def open_association(
    settings: UpstreamSettings,
    ae: TunedAE,
    contexts: list[PresentationContext],
    *,
    ext_neg: Sequence[NegotiationItem | SCP_SCU_RoleSelectionNegotiation] = (),
    evt_handlers: list[EventHandlerType] | None = None,
) -> Association:
    """Blocking: establish a new association to the upstream of `settings` (runs in a worker thread).

    Raises
    ------
    PoolExhausted
        The PACS is busy (rejected-transient).
    UpstreamUnavailable, UpstreamTimeout
        Refused, rejected, or not accepted in time.
    UpstreamTlsError
        DICOM TLS failed (certificate not trusted, wrong name, client certificate refused).
    """
    started = time.monotonic()
    assoc = ae.associate(
        settings.host,
        settings.port,
        contexts=contexts,
        ae_title=settings.ae_title,
        max_pdu=settings.max_pdu,
        ext_neg=list(ext_neg),
        tls_args=ae.tls_args,
        evt_handlers=evt_handlers,
    )
    if assoc.is_established:
        return assoc
    where = settings.address
    if assoc.is_rejected:
        rejection = assoc.acceptor.primitive
        reason = f"{rejection.result_str}: {rejection.reason_str}" if rejection is not None else "rejected"
        if rejection is not None and rejection.result == 0x02:
            # Rejected-transient (PS3.8 §9.3.4): busy, e.g. its association limit is reached.
            raise PoolExhausted(f"{where} is busy and refused an association ({reason})", upstream=settings.name)
        raise UpstreamUnavailable(
            f"{where} rejected the association ({reason}; check the AE titles)", upstream=settings.name
        )
    tls_error = tls_failure(assoc)  # after a rejection: the PACS may close the connection uncleanly after it
    if tls_error is not None:
        error = upstream_tls_error(tls_error, settings)
        logger.warning("upstream %s: %s", settings.name, error.detail)
        raise error
    if time.monotonic() - started >= min(settings.connect_timeout, settings.acse_timeout) * 0.95:
        raise UpstreamTimeout(f"{where} did not accept an association in time", upstream=settings.name)
    raise UpstreamUnavailable(
        f"cannot open an association to {where} (connection refused or aborted)", upstream=settings.name
    )

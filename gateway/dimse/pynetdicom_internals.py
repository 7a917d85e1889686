"""Every touch of pynetdicom's private state, in one place, checked against the versions it was read from.

The gateway relies on a few of pynetdicom's internals that its public API does not reach:

- the association reactor's checkpoint (``Association._reactor_checkpoint``, ``_is_paused``),
  replaced by a :class:`ReactorCheckpoint` so that an operation can prove the reactor is parked;
- the ``AssociationSocket`` class that ``pynetdicom.ae`` and ``pynetdicom.transport`` create
  sockets from (:func:`install_socket_class`);
- the DUL's outgoing queue and run-loop delay (``to_provider_queue``, ``_run_loop_delay``), to
  wake its reactor on send instead of polling (:func:`wake_dul_on_send`);
- the DIMSE message queue (``dimse.msg_queue``), to wake an operation waiting on an association
  that was aborted under it (:func:`wake_waiting_operation`);
- ``pynetdicom._config`` settings, which pynetdicom reads as process-wide globals: here each one
  only takes the gateway's value on the gateway's own associations (:func:`scope_config`), and
  any other pynetdicom user in the process keeps pynetdicom's behaviour;
- its standard log handlers, dropped from the gateway's associations (:func:`quiet_association`)
  instead of setting ``LOG_HANDLER_LEVEL`` for everyone.

Each is checked to exist, with the expected kind, before it is used (:class:`PynetdicomContractError`
otherwise, never a silently assigned new attribute), and ``tests/unit/test_pynetdicom_contract.py``
checks them all against the installed pynetdicom. Outside :data:`CHECKED_VERSIONS` a warning says
so at import.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
import warnings
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import pynetdicom
import pynetdicom._config
import pynetdicom._handlers
import pynetdicom.ae
import pynetdicom.transport
from pynetdicom import evt
from pynetdicom.ae import ApplicationEntity
from pynetdicom.association import Association
from pynetdicom.pdu_primitives import _UI
from pynetdicom.transport import AssociationSocket

__all__ = [
    "CHECKED_VERSIONS",
    "NegotiationItem",
    "SCOPED_SETTINGS",
    "SOCKET_ATTRIBUTES",
    "SOCKET_METHODS",
    "PynetdicomContractError",
    "ReactorCheckpoint",
    "ReactorNotParked",
    "adopt",
    "check_socket",
    "install_reactor_checkpoint",
    "install_socket_class",
    "on_gateway_behalf",
    "pause_reactor",
    "quiet_association",
    "scope_config",
    "wake_dul_on_send",
    "wake_waiting_operation",
]

logger = logging.getLogger(__name__)

NegotiationItem = _UI
"""pynetdicom's (private) type of the user-information items ``associate`` takes as ``ext_neg``."""

CHECKED_VERSIONS = ("3.0",)
"""pynetdicom release series (major.minor) whose internals this module was read against."""


class PynetdicomContractError(RuntimeError):
    """The installed pynetdicom lacks an internal the gateway relies on (renamed or removed)."""


class ReactorNotParked(RuntimeError):
    """An association's reactor did not park in time: it is busy elsewhere, the association is unusable."""


def supported(version: str) -> bool:
    """True if pynetdicom `version` belongs to a release series listed in :data:`CHECKED_VERSIONS`."""
    return ".".join(version.split(".")[:2]) in CHECKED_VERSIONS


def _check_version() -> None:
    version = pynetdicom.__version__
    if not supported(version):
        warnings.warn(
            f"pynetdicom {version} is not one the gateway was checked against ({', '.join(CHECKED_VERSIONS)}.x): "
            "its internals may have changed; run tests/unit/test_pynetdicom_contract.py",
            RuntimeWarning,
            stacklevel=2,
        )


_check_version()


def require(owner: Any, name: str, kind: type | tuple[type, ...]) -> Any:
    """``owner.name``, which must exist and be a `kind`; raises :class:`PynetdicomContractError` otherwise."""
    try:
        value = getattr(owner, name)
    except AttributeError:
        raise PynetdicomContractError(
            f"pynetdicom {pynetdicom.__version__}: {type(owner).__name__}.{name} is gone; the gateway relies on it"
        ) from None
    if not isinstance(value, kind):
        raise PynetdicomContractError(
            f"pynetdicom {pynetdicom.__version__}: {type(owner).__name__}.{name} is a {type(value).__name__}, "
            f"not the {kind} the gateway relies on"
        )
    return value


class ReactorCheckpoint:
    """A drop-in for the reactor's ``threading.Event`` that also knows whether the reactor waits on it.

    pynetdicom's reactor loop does ``_is_paused = True; checkpoint.wait(); _is_paused = False``
    and its ``send_*`` methods ``clear()`` the event and spin until ``_is_paused``. Both halves
    race: the flag may still be True from a pass whose wait has already returned (the reactor
    then takes the operation's first response), and resetting it to prove a fresh pause loses
    to a reactor that set it but has not yet entered its wait (it then waits with the flag False,
    and the next ``send_*`` spins for ever). Here ``wait`` records that the reactor is parked
    under the same lock as ``clear``, so :meth:`park` knows for sure.
    """

    def __init__(self, is_set: bool = True) -> None:
        self._condition = threading.Condition(threading.Lock())
        self._open = is_set
        self._parked = False

    def is_set(self) -> bool:
        return self._open

    def set(self) -> None:
        with self._condition:
            self._open = True
            self._condition.notify_all()

    def clear(self) -> None:
        with self._condition:
            self._open = False

    def wait(self, timeout: float | None = None) -> bool:
        """The reactor's side: block while the checkpoint is clear, known to be parked meanwhile."""
        with self._condition:
            deadline = None if timeout is None else time.monotonic() + timeout
            while not self._open:
                self._parked = True
                self._condition.notify_all()
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    break
                self._condition.wait(remaining)
            self._parked = False
            return self._open

    def park(self, reactor: threading.Thread, timeout: float) -> bool:
        """The operation's side: clear the checkpoint and wait until `reactor` waits on it or has ended."""
        deadline = time.monotonic() + timeout
        with self._condition:
            self._open = False
            # A reactor that ends does not notify: look again every few milliseconds.
            while not (self._parked or not reactor.is_alive()):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._condition.wait(min(remaining, 0.005))
            return True


def install_reactor_checkpoint(assoc: Association) -> None:
    """Give an association a :class:`ReactorCheckpoint`, before its reactor starts or any operation on it.

    The gateway's associations get one as their socket is made (``gateway.dimse.sockets``). The
    reactor re-reads the attribute on every pass, so one already running switches over on its
    next pass: the original event is set here in case it waits on it.
    """
    original = require(assoc, "_reactor_checkpoint", threading.Event)
    require(assoc, "_is_paused", bool)
    checkpoint = ReactorCheckpoint(original.is_set())
    assoc._reactor_checkpoint = checkpoint  # type: ignore[assignment]
    original.set()


def pause_reactor(assoc: Association, timeout: float = 1.0) -> None:
    """Park the association's reactor thread before an operation takes its messages off the queue.

    Once parked, pynetdicom's ``_is_paused`` is True (the reactor set it before waiting), so its
    ``send_*`` methods go straight on. The reactor stays parked until the operation's final
    response (pynetdicom sets the checkpoint then).

    Raises
    ------
    ReactorNotParked
        The reactor neither parked nor ended within `timeout` seconds (busy in a handler): the
        association must not carry the operation.
    """
    checkpoint = assoc._reactor_checkpoint
    if not isinstance(checkpoint, ReactorCheckpoint):
        raise PynetdicomContractError("pause_reactor needs an association set up by install_reactor_checkpoint")
    if not checkpoint.park(assoc, timeout):
        raise ReactorNotParked(f"the association's reactor did not pause within {timeout:g} s")


# What the AssociationSocket subclass (gateway.dimse.sockets) overrides or calls on its base class.
SOCKET_METHODS = ("connect", "send", "recv", "ready", "event_queue", "_create_socket", "_shutdown_socket")
SOCKET_ATTRIBUTES: dict[str, type] = {"_is_connected": bool}
"""Instance attributes of pynetdicom's ``AssociationSocket`` the subclass reads (checked on each one)."""


def install_socket_class(socket_class: type[AssociationSocket]) -> None:
    """Make pynetdicom create `socket_class` for every association, requested and accepted.

    pynetdicom has no way to choose an association's socket class: ``ae.py`` and ``transport.py``
    each instantiate the ``AssociationSocket`` name of their own module. The subclass applies
    the gateway's tuning only to associations of the gateway's own AEs (:func:`adopt`).
    """
    for module in (pynetdicom.ae, pynetdicom.transport):
        current = require(module, "AssociationSocket", type)
        if not issubclass(current, AssociationSocket):
            raise PynetdicomContractError(f"{module.__name__}.AssociationSocket is not pynetdicom's socket class")
    for name in SOCKET_METHODS:
        member = getattr(AssociationSocket, name, None)
        if not (callable(member) or isinstance(member, property)):
            raise PynetdicomContractError(f"pynetdicom {pynetdicom.__version__}: AssociationSocket.{name} is gone")
    pynetdicom.ae.AssociationSocket = socket_class  # type: ignore[attr-defined]
    pynetdicom.transport.AssociationSocket = socket_class  # type: ignore[misc]


def check_socket(sock: AssociationSocket) -> None:
    """Check that a new socket has the instance attributes :data:`SOCKET_ATTRIBUTES`."""
    for name, kind in SOCKET_ATTRIBUTES.items():
        require(sock, name, kind)


def wake_dul_on_send(dul: Any, wake: Callable[[], None]) -> None:
    """Call `wake` after every primitive queued for the DUL to send, and stop its 1 ms poll sleep.

    The DUL thread otherwise sleeps ``_run_loop_delay`` each turn; with `wake` it can wait on its
    socket and the queue at once instead (see ``gateway.dimse.sockets``).
    """
    outgoing = require(dul, "to_provider_queue", queue.Queue)
    require(dul, "_run_loop_delay", (int, float))
    put = outgoing.put

    def put_and_wake(item: Any, block: bool = True, timeout: float | None = None) -> None:
        put(item, block, timeout)
        wake()

    outgoing.put = put_and_wake
    dul._run_loop_delay = 0


def wake_waiting_operation(assoc: Association) -> None:
    """Queue pynetdicom's "no response" marker for the operation waiting on `assoc`'s DIMSE messages.

    An operation whose association was aborted under it would otherwise sit out its whole
    ``dimse_timeout``: pynetdicom does not wake it.
    """
    messages = require(require(assoc, "dimse", object), "msg_queue", queue.Queue)
    messages.put((None, None))


# The gateway's AEs: their associations get the gateway's values of the scoped settings.
_gateway_aes: weakref.WeakSet[ApplicationEntity] = weakref.WeakSet()
_behalf = threading.local()


def adopt(ae: ApplicationEntity) -> None:
    """Count `ae`'s associations as the gateway's own (see :func:`scope_config`)."""
    scope_config()
    _gateway_aes.add(ae)


@contextlib.contextmanager
def on_gateway_behalf() -> Iterator[None]:
    """Within this block, the current thread works for the gateway (a worker running its operation).

    pynetdicom reads some settings in the thread that calls ``associate`` or ``send_*``, where
    nothing says which association is meant.
    """
    _behalf.depth = getattr(_behalf, "depth", 0) + 1
    try:
        yield
    finally:
        _behalf.depth -= 1


def _for_gateway() -> bool:
    """True if the current thread works for one of the gateway's associations."""
    if getattr(_behalf, "depth", 0):
        return True
    thread = threading.current_thread()
    # An association's reactor is the Association thread; its DUL thread knows its association.
    assoc = thread if isinstance(thread, Association) else getattr(thread, "assoc", None)
    return getattr(assoc, "ae", None) in _gateway_aes


class _ScopedSetting:
    """A ``pynetdicom._config`` value that is the gateway's on the gateway's threads, pynetdicom's elsewhere."""

    def __init__(self, name: str, gateway: bool, others: bool) -> None:
        self.name = name
        self.gateway = gateway
        self.others = others

    def __bool__(self) -> bool:
        return self.gateway if _for_gateway() else self.others

    def __repr__(self) -> str:
        return f"<{self.name}: {self.gateway} for the gateway, {self.others} for others>"


SCOPED_SETTINGS: dict[str, bool] = {
    # Received instances are written to a file as their fragments arrive, not gathered in memory
    # twice: a 1 GB multi-frame instance would otherwise take 2 GB.
    "STORE_RECV_CHUNKED_DATASET": True,
    # Instances given as a file path are sent straight from the file, in PDU-sized chunks.
    "STORE_SEND_CHUNKED_DATASET": True,
    # pynetdicom formats every request and response identifier for its log, whatever the log
    # level: more CPU than decoding the answers, and it decodes every element on the way.
    "LOG_REQUEST_IDENTIFIERS": False,
    "LOG_RESPONSE_IDENTIFIERS": False,
}
"""``pynetdicom._config`` settings and the gateway's value of each."""


def scope_config() -> None:
    """Give each of :data:`SCOPED_SETTINGS` its gateway value on the gateway's associations only."""
    for name, value in SCOPED_SETTINGS.items():
        current = require(pynetdicom._config, name, (bool, _ScopedSetting))
        if not isinstance(current, _ScopedSetting):
            setattr(pynetdicom._config, name, _ScopedSetting(name, value, current))


_STANDARD_LOG_HANDLERS = {
    evt.EVT_DIMSE_RECV: "standard_dimse_recv_handler",
    evt.EVT_DIMSE_SENT: "standard_dimse_sent_handler",
    evt.EVT_PDU_RECV: "standard_pdu_recv_handler",
    evt.EVT_PDU_SENT: "standard_pdu_sent_handler",
}


def quiet_association(assoc: Association) -> None:
    """Drop pynetdicom's standard log handlers from `assoc` (one of the gateway's).

    They describe every PDU and DIMSE message as it goes, at any log level: 6% of the CPU of a
    C-GET. Only worth it when someone reads pynetdicom's debug log; its ``LOG_HANDLER_LEVEL``
    would turn them off for every association in the process.
    """
    if logging.getLogger("pynetdicom").isEnabledFor(logging.DEBUG):
        return
    for event, name in _STANDARD_LOG_HANDLERS.items():
        handler = require(pynetdicom._handlers, name, Callable)  # type: ignore[arg-type]
        bound = assoc.get_handlers(event)  # a notification event's: a list of (handler, arguments)
        if isinstance(bound, list) and any(entry[0] is handler for entry in bound):
            assoc.unbind(event, handler)

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
- ``pynetdicom._config`` settings, scoped to the gateway's own associations (:func:`scope_config`).

Each is checked to exist, with the expected kind, before it is used (:class:`PynetdicomContractError`
otherwise, never a silently assigned new attribute), and ``tests/unit/test_pynetdicom_contract.py``
checks them all against the installed pynetdicom. Outside :data:`CHECKED_VERSIONS` a warning says
so at import.
"""

from __future__ import annotations

import logging
import threading
import time
import warnings
from typing import Any

import pynetdicom
from pynetdicom.association import Association

__all__ = [
    "CHECKED_VERSIONS",
    "PynetdicomContractError",
    "ReactorCheckpoint",
    "ReactorNotParked",
    "install_reactor_checkpoint",
    "pause_reactor",
]

logger = logging.getLogger(__name__)

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
    """Give a just-established association a :class:`ReactorCheckpoint` (before any operation on it).

    The reactor re-reads the attribute on every pass; the original event is set at this point
    (nothing has paused the reactor yet), so a reactor still waiting on it goes on at once.
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

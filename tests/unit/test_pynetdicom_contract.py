"""The pynetdicom internals the gateway relies on are still there, as they were read.

Everything here is checked against the installed pynetdicom, so that an upgrade that renames or
removes one of them fails these tests by name instead of the gateway failing silently (an
assignment to a renamed attribute raises nothing). See gateway/dimse/pynetdicom_internals.py.
"""

from __future__ import annotations

import inspect
import queue
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pynetdicom
import pynetdicom._config
import pynetdicom._handlers
import pynetdicom.ae
import pynetdicom.dimse_messages
import pynetdicom.dul
import pynetdicom.transport
import pytest
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.transport import AssociationSocket

from gateway.dimse import pynetdicom_internals as internals
from gateway.dimse import sockets
from gateway.dimse.sockets import SocketProfile, TunedAE

GATEWAY = Path(__file__).resolve().parents[2] / "gateway"


@pytest.fixture
def association() -> Iterator[Association]:
    """An established association of a gateway AE to an in-process Verification SCP."""
    sockets.install()
    scp = AE(ae_title="ECHOSCP")
    scp.add_supported_context(Verification)
    server = scp.start_server(("127.0.0.1", 0), block=False)
    try:
        ae = TunedAE(ae_title="GATEWAY", socket_profile=SocketProfile.INTERACTIVE)
        ae.add_requested_context(Verification)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 5
        assoc = ae.associate("127.0.0.1", server.server_address[1], ae_title="ECHOSCP")
        assert assoc.is_established
        try:
            yield assoc
        finally:
            assoc.abort()
    finally:
        server.shutdown()


def test_the_installed_version_is_one_the_internals_were_checked_against() -> None:
    assert internals.supported(pynetdicom.__version__)
    assert not internals.supported("3.1.0") and not internals.supported("2.1.1")


def test_another_version_is_warned_about(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pynetdicom, "__version__", "4.0.0")
    with pytest.warns(RuntimeWarning, match="pynetdicom 4.0.0 is not one the gateway was checked against"):
        internals._check_version()


def test_a_missing_or_changed_internal_fails_loudly() -> None:
    with pytest.raises(internals.PynetdicomContractError, match="_run_loop_delay is gone"):
        internals.wake_dul_on_send(SimpleNamespace(to_provider_queue=queue.Queue()), lambda: None)
    with pytest.raises(internals.PynetdicomContractError, match="msg_queue is a list"):
        internals.wake_waiting_operation(SimpleNamespace(dimse=SimpleNamespace(msg_queue=[])))  # type: ignore[arg-type]


def test_the_reactor_parks_on_its_checkpoint_as_read() -> None:
    # _run_reactor: flag, wait on the checkpoint, flag again, then take a message off the queue.
    source = inspect.getsource(Association._run_reactor)
    parked = source.index("self._is_paused = True")
    waits = source.index("self._reactor_checkpoint.wait()", parked)
    resumes = source.index("self._is_paused = False", waits)
    assert parked < waits < resumes < source.index("self.dimse.get_msg(block=False)", resumes)
    # The send_* methods clear the checkpoint and spin on the flag before sending.
    for name in ("send_c_echo", "send_c_find", "send_c_get", "send_c_move", "send_c_store", "release"):
        method = inspect.getsource(getattr(Association, name))
        assert "self._reactor_checkpoint.clear()" in method and "while not self._is_paused" in method, name


def test_an_association_has_the_internals_the_gateway_uses(association: Association) -> None:
    assert isinstance(association._reactor_checkpoint, internals.ReactorCheckpoint)  # installed on open
    assert isinstance(association._is_paused, bool)
    assert isinstance(association.dimse.msg_queue, queue.Queue)
    assert isinstance(association.dul, pynetdicom.dul.DULServiceProvider)
    assert association.dul.to_provider_queue.put.__name__ == "put_and_wake"
    assert association.dul._run_loop_delay == 0
    assert isinstance(association.dul.socket, sockets._TunedAssociationSocket)
    assert isinstance(association.dul.socket._is_connected, bool)
    assert association.is_alive()  # the reactor is the association's own thread


def test_a_paused_reactor_lets_operations_through(association: Association) -> None:
    for _ in range(50):
        internals.pause_reactor(association)
        assert association._is_paused  # what pynetdicom's send_* spin on
        status = association.send_c_echo()
        assert status.Status == 0x0000


def test_a_plain_association_gets_a_checkpoint_the_reactor_honours() -> None:
    scp = AE(ae_title="ECHOSCP")
    scp.add_supported_context(Verification)
    server = scp.start_server(("127.0.0.1", 0), block=False)
    try:
        ae = AE(ae_title="PLAIN")
        ae.add_requested_context(Verification)
        assoc = ae.associate("127.0.0.1", server.server_address[1], ae_title="ECHOSCP")
        assert isinstance(assoc._reactor_checkpoint, threading.Event)  # pynetdicom's own, untouched
        internals.install_reactor_checkpoint(assoc)
        internals.pause_reactor(assoc)
        assert assoc.send_c_echo().Status == 0x0000
        assoc.release()
        assert assoc.is_released
    finally:
        server.shutdown()


def test_the_socket_classes_and_their_methods_are_where_they_were() -> None:
    sockets.install()
    assert issubclass(pynetdicom.ae.AssociationSocket, AssociationSocket)  # type: ignore[attr-defined]
    assert issubclass(pynetdicom.transport.AssociationSocket, AssociationSocket)
    for name in internals.SOCKET_METHODS:
        assert name in vars(AssociationSocket), name
    assert "self._is_connected" in inspect.getsource(AssociationSocket.connect)


def test_the_config_settings_and_log_handlers_exist_and_are_read_where_they_were() -> None:
    internals.scope_config()
    for name in internals.SCOPED_SETTINGS:
        assert isinstance(getattr(pynetdicom._config, name), internals._ScopedSetting), name
    assert "_config.STORE_RECV_CHUNKED_DATASET" in inspect.getsource(pynetdicom.dimse_messages)
    association_source = inspect.getsource(Association)
    for name in ("STORE_SEND_CHUNKED_DATASET", "LOG_REQUEST_IDENTIFIERS", "LOG_RESPONSE_IDENTIFIERS"):
        assert f"_config.{name}" in association_source, name
    for event, name in internals._STANDARD_LOG_HANDLERS.items():
        handler = getattr(pynetdicom._handlers, name)
        assert callable(handler) and f"evt.{event.name}, {name}" in inspect.getsource(Association._bind_defaults)


def test_the_gateway_associations_drop_the_standard_log_handlers(association: Association) -> None:
    for event in internals._STANDARD_LOG_HANDLERS:
        assert association.get_handlers(event) == []


def test_no_other_module_touches_pynetdicom_internals() -> None:
    private = re.compile(
        r"pynetdicom\._|from pynetdicom\S* import .*\b_[A-Za-z]|\._reactor_checkpoint|\._is_paused|\.msg_queue"
        r"|\.to_provider_queue|\._run_loop_delay|pynetdicom\.(ae|transport)\.AssociationSocket"
    )
    for path in GATEWAY.rglob("*.py"):
        if path.name == "pynetdicom_internals.py":
            continue
        touched = private.findall(path.read_text())
        assert not touched, f"{path.relative_to(GATEWAY.parent)} touches pynetdicom's internals: {touched}"


def test_a_flag_is_the_gateways_only_on_its_behalf() -> None:
    internals.scope_config()
    flag = pynetdicom._config.STORE_RECV_CHUNKED_DATASET
    assert not flag
    with internals.on_gateway_behalf():
        assert flag
    assert not flag
    seen: list[bool] = []
    thread = threading.Thread(target=lambda: seen.append(bool(flag)))
    with internals.on_gateway_behalf():  # another thread is not on the gateway's behalf
        thread.start()
        thread.join(5)
    assert seen == [False]

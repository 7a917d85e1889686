"""DICOM TLS: its settings, checked at startup; its SSL contexts; TLS-aware socket reads."""

from __future__ import annotations

import queue
import socket
import ssl
import struct
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest

from gateway.dimse import sockets
from gateway.dimse.sockets import SocketProfile, TunedAE
from gateway.dimse.tls import client_context, server_context, upstream_tls_error
from gateway.errors import UpstreamTimeout, UpstreamTlsError
from gateway.settings import ConfigError, Settings, UpstreamSettings, load_settings
from tests.tlscerts import Pki, make_pki


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def upstream(**options: object) -> UpstreamSettings:
    return UpstreamSettings(name="main", ae_title="PACS", host="127.0.0.1", port=11112, **options)  # type: ignore[arg-type]


def test_config_file_with_tls_to_the_pacs_and_on_the_storage_scp(tmp_path: Path, pki: Pki) -> None:
    config = tmp_path / "gateway.toml"
    config.write_text(
        f"""
[gateway]
store_tls = true
store_tls_cert = "{pki.server.cert}"
store_tls_key = "{pki.server.key}"
store_tls_ca = "{pki.ca}"

[upstreams.main]
ae_title = "PACS"
host = "pacs.example.org"
port = 2762
tls = true
tls_ca = "{pki.ca}"
tls_cert = "{pki.client.cert}"
tls_key = "{pki.client.key}"
"""
    )
    settings = load_settings(config)
    main = settings.default_upstream
    assert main.tls and (main.tls_ca, main.tls_cert, main.tls_key) == (
        str(pki.ca),
        str(pki.client.cert),
        str(pki.client.key),
    )
    assert settings.store_tls and settings.store_tls_ca == str(pki.ca)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"tls_ca": "{ca}"}, "upstreams.main.tls_ca is set but upstreams.main.tls is not true"),
        ({"tls_server_name": "pacs"}, "upstreams.main.tls_server_name is set but upstreams.main.tls is not true"),
        ({"tls": "yes"}, "upstreams.main.tls: 'yes' is not true or false"),
        ({"tls": True, "tls_cert": "{cert}"}, "upstreams.main.tls_cert and upstreams.main.tls_key go together"),
        ({"tls": True, "tls_key": "{key}"}, "upstreams.main.tls_cert and upstreams.main.tls_key go together"),
        ({"tls": True, "tls_ca": "/nonexistent/ca.pem"}, "upstreams.main.tls_ca: '/nonexistent/ca.pem' is not a file"),
        ({"tls": True, "tls_ca": "{dir}"}, "upstreams.main.tls_ca: '{dir}' is not a file"),
        ({"tls": True, "tls_ca": 7}, "upstreams.main.tls_ca: 7 is not a path"),
        ({"tls": True, "tls_server_name": "pacs/1"}, "upstreams.main.tls_server_name: 'pacs/1' is not a DNS name"),
    ],
)
def test_upstream_tls_settings_are_checked_at_startup(pki: Pki, options: dict[str, object], message: str) -> None:
    paths = {"ca": str(pki.ca), "cert": str(pki.client.cert), "key": str(pki.client.key), "dir": str(pki.ca.parent)}
    filled = {key: value.format(**paths) if isinstance(value, str) else value for key, value in options.items()}
    with pytest.raises(ConfigError) as raised:
        upstream(**filled)
    assert message.format(**paths) in str(raised.value)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"store_tls": True}, "gateway.store_tls needs gateway.store_tls_cert and gateway.store_tls_key"),
        (
            {"store_tls": True, "store_tls_cert": "{cert}"},
            "gateway.store_tls_cert and gateway.store_tls_key go together",
        ),
        ({"store_tls": 1}, "gateway.store_tls: 1 is not true or false"),
        ({"store_tls_cert": "{cert}", "store_tls_key": "{key}"}, "gateway.store_tls_cert is set but gateway.store_tls"),
        ({"store_tls_ca": "{ca}"}, "gateway.store_tls_ca is set but gateway.store_tls is not true"),
        (
            {"store_tls": True, "store_tls_cert": "{cert}", "store_tls_key": "/nonexistent/key.pem"},
            "gateway.store_tls_key: '/nonexistent/key.pem' is not a file",
        ),
    ],
)
def test_storage_scp_tls_settings_are_checked_at_startup(pki: Pki, options: dict[str, object], message: str) -> None:
    paths = {"ca": str(pki.ca), "cert": str(pki.server.cert), "key": str(pki.server.key)}
    filled = {key: value.format(**paths) if isinstance(value, str) else value for key, value in options.items()}
    with pytest.raises(ConfigError) as raised:
        Settings(upstreams=(upstream(),), **filled)  # type: ignore[arg-type]
    assert message in str(raised.value)


def test_no_tls_no_context() -> None:
    assert client_context(upstream()) is None
    assert server_context(Settings(upstreams=(upstream(),))) is None


def test_client_context_is_tls_1_2_or_later_verifies_and_names_the_host(pki: Pki) -> None:
    tls_args = client_context(upstream(tls=True, tls_ca=str(pki.ca)))
    assert tls_args is not None
    context, server_name = tls_args
    assert server_name == "127.0.0.1"
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert context.options & ssl.OP_NO_COMPRESSION
    tls12 = [c for c in context.get_ciphers() if c["protocol"] == "TLSv1.2"]
    assert tls12, "no TLS 1.2 cipher suite left"
    # BCP 195: forward secrecy (ECDHE/DHE key exchange) and authenticated encryption only.
    assert all(c["kea"] in ("kx-ecdhe", "kx-dhe") and c["aead"] for c in tls12), tls12
    assert not any("CBC" in c["description"] or "SHA1" in c["name"] for c in tls12)

    named = client_context(upstream(tls=True, tls_ca=str(pki.ca), tls_server_name="pacs.example.org"))
    assert named is not None and named[1] == "pacs.example.org"


def test_without_tls_ca_the_system_trust_store_is_used_not_any_certificate(pki: Pki) -> None:
    tls_args = client_context(upstream(tls=True))
    assert tls_args is not None and tls_args[0].verify_mode == ssl.CERT_REQUIRED
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(pki.server.cert, pki.server.key)
    with pytest.raises(ssl.SSLCertVerificationError), _tls_pair(server, tls_args[0], "127.0.0.1", server_may_fail=True):
        pass  # the test CA is in no system trust store


def test_unreadable_pem_files_are_config_errors_naming_the_key(tmp_path: Path, pki: Pki) -> None:
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    with pytest.raises(ConfigError, match=r"upstreams\.main\.tls_ca: cannot load CA certificates"):
        client_context(upstream(tls=True, tls_ca=str(garbage)))
    with pytest.raises(ConfigError, match=r"upstreams\.main\.tls_cert, upstreams\.main\.tls_key: cannot load"):
        client_context(upstream(tls=True, tls_cert=str(pki.client.cert), tls_key=str(pki.server.key)))  # mismatch
    settings = Settings(
        upstreams=(upstream(),), store_tls=True, store_tls_cert=str(garbage), store_tls_key=str(pki.server.key)
    )
    with pytest.raises(ConfigError, match=r"gateway\.store_tls_cert, gateway\.store_tls_key: cannot load"):
        server_context(settings)


def test_server_context_requires_client_certificates_only_with_store_tls_ca(pki: Pki) -> None:
    base = Settings(
        upstreams=(upstream(),), store_tls=True, store_tls_cert=str(pki.server.cert), store_tls_key=str(pki.server.key)
    )
    open_context = server_context(base)
    assert open_context is not None and open_context.verify_mode == ssl.CERT_NONE
    assert open_context.minimum_version == ssl.TLSVersion.TLSv1_2
    mutual = server_context(replace(base, store_tls_ca=str(pki.ca)))
    assert mutual is not None and mutual.verify_mode == ssl.CERT_REQUIRED


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1_1 is deprecated:DeprecationWarning")
def test_a_tls_1_1_server_is_refused(pki: Pki) -> None:
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        server.maximum_version = ssl.TLSVersion.TLSv1_1
        server.minimum_version = ssl.TLSVersion.TLSv1_1
        server.set_ciphers("ALL:@SECLEVEL=0")
    except (ValueError, ssl.SSLError):
        pytest.skip("this OpenSSL cannot even offer TLS 1.1")
    server.load_cert_chain(pki.server.cert, pki.server.key)
    tls_args = client_context(upstream(tls=True, tls_ca=str(pki.ca)))
    assert tls_args is not None
    with pytest.raises(ssl.SSLError) as raised, _tls_pair(server, tls_args[0], "127.0.0.1"):
        pass
    error = upstream_tls_error(raised.value, upstream(tls=True, tls_ca=str(pki.ca)))
    assert isinstance(error, UpstreamTlsError), error
    assert "TLS with PACS@127.0.0.1:11112 failed: the PACS supports no TLS version the gateway accepts" in error.detail


def test_handshake_timeout_is_a_504_and_certificate_failures_say_why(pki: Pki) -> None:
    settings = upstream(tls=True, tls_ca=str(pki.ca), connect_timeout=2)
    timeout = upstream_tls_error(TimeoutError("timed out"), settings)
    assert isinstance(timeout, UpstreamTimeout) and timeout.status_code == 504
    assert "TLS handshake with PACS@127.0.0.1:11112 did not complete within 2 s" in timeout.detail
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(pki.other_server.cert, pki.other_server.key)
    tls_args = client_context(settings)
    assert tls_args is not None
    with pytest.raises(ssl.SSLCertVerificationError) as raised, _tls_pair(server, tls_args[0], "127.0.0.1"):
        pass
    error = upstream_tls_error(raised.value, settings)
    assert error.status_code == 502 and error.title == "Upstream PACS TLS failure"
    assert "the PACS certificate was not accepted (unable to get local issuer certificate" in error.detail


class _Pair:
    def __init__(self, server: ssl.SSLSocket | None, client: ssl.SSLSocket) -> None:
        self._server, self.client = server, client

    @property
    def server(self) -> ssl.SSLSocket:
        assert self._server is not None, "the server's handshake failed"
        return self._server


@contextmanager
def _tls_pair(
    server_context: ssl.SSLContext, client_context: ssl.SSLContext, name: str, *, server_may_fail: bool = False
) -> Iterator[_Pair]:
    """A connected TLS client and server on loopback, handshakes done (each side in its thread)."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        left = socket.create_connection(listener.getsockname(), timeout=5)
        right, _ = listener.accept()
    left.settimeout(5)
    right.settimeout(5)
    accepted: list[ssl.SSLSocket] = []

    def accept() -> None:
        try:
            accepted.append(server_context.wrap_socket(right, server_side=True))
        except OSError:
            right.close()

    thread = threading.Thread(target=accept)
    thread.start()
    try:
        client = client_context.wrap_socket(left, server_hostname=name)
    except BaseException:
        left.close()
        raise
    finally:
        thread.join(5)
    if not accepted and not server_may_fail:
        client.close()
        raise AssertionError("the server's handshake failed")
    try:
        yield _Pair(accepted[0] if accepted else None, client)
    finally:
        client.close()
        for sock in accepted:
            sock.close()


def _pdu(kind: int, payload: bytes) -> bytes:
    return struct.pack(">BBL", kind, 0, len(payload)) + payload


@pytest.fixture
def tls_connection(pki: Pki) -> Iterator[_Pair]:
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(pki.server.cert, pki.server.key)
    tls_args = client_context(upstream(tls=True, tls_ca=str(pki.ca)))
    assert tls_args is not None
    with _tls_pair(server, tls_args[0], "127.0.0.1") as pair:
        pair.client.settimeout(None)
        yield pair


def _association_socket(sock: socket.socket, profile: SocketProfile) -> sockets._TunedAssociationSocket:
    """The gateway's association socket around a connected `sock`, as for an accepted association."""
    dul = SimpleNamespace(event_queue=queue.Queue(), to_provider_queue=queue.Queue(), _run_loop_delay=0.001)
    ae = TunedAE(ae_title="GATEWAY", socket_profile=profile)
    assoc = SimpleNamespace(
        dul=dul, ae=ae, get_handlers=lambda event: [], _reactor_checkpoint=threading.Event(), _is_paused=False
    )
    return sockets._TunedAssociationSocket(assoc, client_socket=sock)


@pytest.mark.parametrize("profile", list(SocketProfile))
def test_a_pdu_waiting_in_the_ssl_buffer_is_ready(tls_connection: _Pair, profile: SocketProfile) -> None:
    """Two PDUs in one TLS record: once the first is read, the second is in the SSL object, not the kernel.

    ``select`` says "nothing to read"; an association trusting it would wait forever for an answer
    it has already received.
    """
    first, second = _pdu(0x04, b"\x01" * 100), _pdu(0x04, b"\x02" * 50)
    tls_connection.server.sendall(first + second)  # one write: one record
    assoc_socket = _association_socket(tls_connection.client, profile)
    try:
        assert assoc_socket.ready
        assert bytes(assoc_socket.recv(6)) == first[:6]
        assert bytes(assoc_socket.recv(100)) == first[6:]
        assert assoc_socket.ready  # only the SSL buffer holds the second PDU now
        assert bytes(assoc_socket.recv(56)) == second
        assert not assoc_socket.ready
    finally:
        assoc_socket.close()


def test_whole_pdu_reads_span_tls_records(tls_connection: _Pair) -> None:
    """A 1 MiB PDU arrives in 64 TLS records of 16 KiB; the bulk profile's read returns all of it."""
    payload = bytes(range(256)) * 4096
    pdu = _pdu(0x04, payload)
    writer = threading.Thread(target=tls_connection.server.sendall, args=(pdu,))
    writer.start()
    assoc_socket = _association_socket(tls_connection.client, SocketProfile.BULK)
    try:
        assert bytes(assoc_socket.recv(6)) == pdu[:6]
        assert bytes(assoc_socket.recv(len(payload))) == payload
    finally:
        writer.join(5)
        assoc_socket.close()


def test_a_client_certificate_refused_after_the_handshake_is_kept_as_the_tls_failure(pki: Pki) -> None:
    """TLS 1.3: the client's handshake is over before the server checks its certificate.

    The server's alert comes on the first read; the socket keeps it, and it reads as the reason.
    """
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(pki.server.cert, pki.server.key)
    server.load_verify_locations(pki.ca)
    server.verify_mode = ssl.CERT_REQUIRED
    settings = upstream(tls=True, tls_ca=str(pki.ca))
    tls_args = client_context(settings)
    assert tls_args is not None
    with _tls_pair(server, tls_args[0], "127.0.0.1", server_may_fail=True) as pair:
        assert pair.client.version() == "TLSv1.3"
        assoc_socket = _association_socket(pair.client, SocketProfile.INTERACTIVE)
        try:
            with pytest.raises(ssl.SSLError):
                assoc_socket.recv(6)
            assert assoc_socket.tls_error is not None
            error = upstream_tls_error(assoc_socket.tls_error, settings)
        finally:
            assoc_socket.close()
    assert isinstance(error, UpstreamTlsError)
    assert "the PACS requires a client certificate (TLS alert TLSV13_ALERT_CERTIFICATE_REQUIRED)" in error.detail


def test_a_tls_1_2_pacs_requiring_a_client_certificate_fails_in_the_handshake(pki: Pki) -> None:
    """With TLS 1.2 the refusal comes before the handshake ends, as an alert to the client."""
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.maximum_version = ssl.TLSVersion.TLSv1_2
    server.load_cert_chain(pki.server.cert, pki.server.key)
    server.load_verify_locations(pki.ca)
    server.verify_mode = ssl.CERT_REQUIRED
    settings = upstream(tls=True, tls_ca=str(pki.ca))
    tls_args = client_context(settings)
    assert tls_args is not None
    with pytest.raises(ssl.SSLError) as raised, _tls_pair(server, tls_args[0], "127.0.0.1", server_may_fail=True):
        pass
    error = upstream_tls_error(raised.value, settings)
    assert isinstance(error, UpstreamTlsError)
    assert "the PACS refused the handshake (a missing client certificate" in error.detail
    with_cert = client_context(
        upstream(tls=True, tls_ca=str(pki.ca), tls_cert=str(pki.client.cert), tls_key=str(pki.client.key))
    )
    assert with_cert is not None
    with _tls_pair(server, with_cert[0], "127.0.0.1") as pair:
        assert pair.client.version() == "TLSv1.2" and pair.client.cipher()[0].startswith("ECDHE-")

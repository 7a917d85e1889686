"""DICOM TLS: the SSL contexts of the gateway's associations, and what a failed handshake means.

The Secure Transport Connection Profiles of PS3.15 B.9 - B.11 follow BCP 195 (RFC 9325): TLS 1.2
or later, and for TLS 1.2 only cipher suites with forward secrecy and authenticated encryption
(ECDHE or DHE with AES-GCM or ChaCha20-Poly1305). TLS 1.3 suites all qualify. The peer's
certificate is always verified; the gateway never falls back to plain TCP or to an older
protocol version.

- To a PACS (``[upstreams.NAME] tls = true``): the PACS certificate must chain to ``tls_ca`` (or
  to the system's trust store) and name ``tls_server_name`` (default: the upstream's host); the
  gateway presents ``tls_cert`` when the PACS asks for a client certificate (mutual TLS).
- The C-MOVE storage SCP (``[gateway] store_tls = true``): it presents ``store_tls_cert``, and
  with ``store_tls_ca`` requires a client certificate signed by it from every PACS that connects.

Each handshake runs under a timeout (the connect timeout to a PACS; the ACSE timeout on the
storage SCP), so a peer that accepts TCP and then stays silent costs seconds, not a hang.
"""

from __future__ import annotations

import logging
import socket
import ssl
from typing import Any

from pynetdicom.transport import ThreadedAssociationServer

from gateway.dimse.sockets import TlsSocket
from gateway.errors import UpstreamError, UpstreamTimeout, UpstreamTlsError
from gateway.settings import ConfigError, Settings, UpstreamSettings

__all__ = ["CIPHERS", "TlsAssociationServer", "client_context", "server_context", "upstream_tls_error"]

logger = logging.getLogger(__name__)

CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:DHE+AESGCM:DHE+CHACHA20:!aNULL:!eNULL"
"""TLS 1.2 cipher suites (OpenSSL syntax): forward secrecy and AEAD only, RFC 9325 section 4.2."""

# OpenSSL reasons of alerts a PACS sends when it wants a client certificate, or rejects ours.
_CLIENT_CERTIFICATE_ALERTS = {
    "TLSV13_ALERT_CERTIFICATE_REQUIRED": "the PACS requires a client certificate",
    "SSLV3_ALERT_HANDSHAKE_FAILURE": "the PACS refused the handshake (a missing client certificate, or no common "
    "cipher suite or protocol version)",
    "SSLV3_ALERT_BAD_CERTIFICATE": "the PACS rejected the gateway's client certificate",
    "SSLV3_ALERT_CERTIFICATE_UNKNOWN": "the PACS rejected the gateway's client certificate",
    "TLSV1_ALERT_UNKNOWN_CA": "the PACS does not trust the CA of the gateway's client certificate",
    "SSLV3_ALERT_CERTIFICATE_EXPIRED": "the PACS says the gateway's client certificate has expired",
    "TLSV1_ALERT_PROTOCOL_VERSION": "the PACS supports no TLS version the gateway accepts (1.2 or later)",
}
_NOT_TLS = {"WRONG_VERSION_NUMBER", "PACKET_LENGTH_TOO_LONG", "RECORD_LAYER_FAILURE", "HTTP_REQUEST"}


def _secure_defaults(context: ssl.SSLContext) -> ssl.SSLContext:
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(CIPHERS)
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    return context


def _load_chain(context: ssl.SSLContext, cert: str, key: str, cert_key: str, key_key: str) -> None:
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"{cert_key}, {key_key}: cannot load the certificate {cert!r} with the key {key!r} ({exc}); both must "
            "be PEM, the key unencrypted and matching the certificate"
        ) from exc


def _load_ca(context: ssl.SSLContext, cafile: str, ca_key: str) -> None:
    try:
        context.load_verify_locations(cafile=cafile)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"{ca_key}: cannot load CA certificates from {cafile!r} ({exc}); it must be PEM") from exc


def client_context(settings: UpstreamSettings) -> tuple[ssl.SSLContext, str] | None:
    """``(context, server_hostname)`` for the associations to a PACS, or None without TLS.

    Raises
    ------
    ConfigError
        A certificate, key or CA file that cannot be loaded; the message names the key.
    """
    if not settings.tls:
        return None
    prefix = f"upstreams.{settings.name}"
    context = _secure_defaults(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT))  # verifies the certificate and hostname
    if settings.tls_ca:
        _load_ca(context, settings.tls_ca, f"{prefix}.tls_ca")
    else:
        context.load_default_certs(ssl.Purpose.SERVER_AUTH)
    if settings.tls_cert:
        _load_chain(context, settings.tls_cert, settings.tls_key, f"{prefix}.tls_cert", f"{prefix}.tls_key")
    context.sslsocket_class = TlsSocket
    return context, settings.tls_server_name or settings.host


def server_context(settings: Settings) -> ssl.SSLContext | None:
    """The SSL context of the C-MOVE storage SCP, or None without ``store_tls``.

    Raises
    ------
    ConfigError
        A certificate, key or CA file that cannot be loaded; the message names the key.
    """
    if not settings.store_tls:
        return None
    context = _secure_defaults(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER))
    _load_chain(
        context, settings.store_tls_cert, settings.store_tls_key, "gateway.store_tls_cert", "gateway.store_tls_key"
    )
    if settings.store_tls_ca:
        _load_ca(context, settings.store_tls_ca, "gateway.store_tls_ca")
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def _reason(exc: OSError) -> str:
    """Why a TLS handshake (or the first read after it) failed, in words, from the PACS's side."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        message = (exc.verify_message or str(exc)).rstrip(".")
        if "hostname mismatch" in message.lower() or "IP address mismatch" in message:
            return f"the PACS certificate does not name the host the gateway expects ({message}; see tls_server_name)"
        return f"the PACS certificate was not accepted ({message}; is it signed by a CA in tls_ca?)"
    if isinstance(exc, ssl.SSLError):
        reason = exc.reason or ""
        if reason in _CLIENT_CERTIFICATE_ALERTS:
            return f"{_CLIENT_CERTIFICATE_ALERTS[reason]} (TLS alert {reason})"
        if reason in _NOT_TLS:
            return f"the PACS did not answer in TLS (is DICOM TLS enabled on that port?) ({reason})"
        if isinstance(exc, ssl.SSLEOFError) or reason == "UNEXPECTED_EOF_WHILE_READING":
            return "the PACS closed the connection during the handshake (does it require a client certificate?)"
        return f"{reason or type(exc).__name__}: {exc}"
    if isinstance(exc, ConnectionError):
        return f"the PACS dropped the connection during the handshake ({exc.strerror or exc})"
    return str(exc) or type(exc).__name__


def upstream_tls_error(exc: OSError, settings: UpstreamSettings) -> UpstreamError:
    """The error a client gets for a failed TLS handshake with the PACS of `settings`."""
    where = settings.address
    if isinstance(exc, TimeoutError):
        return UpstreamTimeout(
            f"the TLS handshake with {where} did not complete within {settings.connect_timeout:g} s",
            upstream=settings.name,
        )
    return UpstreamTlsError(f"TLS with {where} failed: {_reason(exc)}", upstream=settings.name)


class TlsAssociationServer(ThreadedAssociationServer):
    """An association server whose TLS handshakes run in each connection's thread, under a timeout.

    pynetdicom's server does the handshake in ``get_request``, in its accept loop and without a
    timeout: one client that connects and stays silent would stop the storage SCP from accepting
    anyone else. Here the accept loop only accepts; a failed handshake is logged and closed.
    """

    handshake_timeout: float = 10.0

    def get_request(self) -> tuple[socket.socket, Any]:
        assert self.socket is not None
        return self.socket.accept()

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        context = self.ssl_context
        if context is not None:
            try:
                request.settimeout(self.handshake_timeout)
                request = context.wrap_socket(request, server_side=True)
                request.settimeout(None)
            except OSError as exc:
                peer = f"{client_address[0]}:{client_address[1]}"
                why = "timed out" if isinstance(exc, TimeoutError) else f"failed: {exc}"
                logger.warning("storage SCP: TLS handshake with %s %s", peer, why)
                request.close()
                return
        super().process_request_thread(request, client_address)

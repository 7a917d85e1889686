"""Certificates for the DICOM TLS tests, made on the spot with ``cryptography``.

:func:`make_pki` writes into a directory: a CA, a certificate for 127.0.0.1 and localhost
signed by it (usable as server and as client: Orthanc presents the same one both ways), a
client certificate for the gateway, and a second, unrelated CA with its own server certificate
for the wrong-certificate cases. Everything is PEM, keys unencrypted (as Orthanc and the
gateway read them).
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["KeyPair", "Pki", "make_pki"]

_Key = ec.EllipticCurvePrivateKey


@dataclass(frozen=True)
class KeyPair:
    """A certificate and its private key, as PEM files."""

    cert: Path
    key: Path


@dataclass(frozen=True)
class Pki:
    """What :func:`make_pki` wrote."""

    ca: Path
    """The CA certificate that signed `server`, `client` and `localhost_only`."""
    server: KeyPair
    """For 127.0.0.1 and localhost; server and client authentication."""
    client: KeyPair
    """The gateway's client certificate (CN GATEWAY)."""
    localhost_only: KeyPair
    """Names localhost only: a PACS reached at 127.0.0.1 with it is a hostname mismatch."""
    other_ca: Path
    """An unrelated CA."""
    other_server: KeyPair
    """For 127.0.0.1, signed by `other_ca`."""


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write_key(key: _Key, path: Path) -> None:
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )


def _ca(directory: Path, stem: str, common_name: str) -> tuple[x509.Certificate, _Key, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )  # keyCertSign, cRLSign
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    path = directory / f"{stem}.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert, key, path


def _leaf(
    directory: Path,
    stem: str,
    common_name: str,
    issuer: tuple[x509.Certificate, _Key],
    *,
    names: list[x509.GeneralName],
) -> KeyPair:
    issuer_cert, issuer_key = issuer
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(issuer_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False)
    )
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    cert = builder.sign(issuer_key, hashes.SHA256())
    pair = KeyPair(directory / f"{stem}.crt", directory / f"{stem}.key")
    pair.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_key(key, pair.key)
    return pair


def make_pki(directory: Path) -> Pki:
    """Write a CA, server and client certificates, and an unrelated CA into `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    loopback: list[x509.GeneralName] = [
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.DNSName("localhost"),
    ]
    ca_cert, ca_key, ca_path = _ca(directory, "ca", "dicomweb-gateway test CA")
    other_cert, other_key, other_path = _ca(directory, "other-ca", "an unrelated CA")
    return Pki(
        ca=ca_path,
        server=_leaf(directory, "server", "127.0.0.1", (ca_cert, ca_key), names=loopback),
        client=_leaf(directory, "client", "GATEWAY", (ca_cert, ca_key), names=[]),
        localhost_only=_leaf(directory, "localhost", "localhost", (ca_cert, ca_key), names=[x509.DNSName("localhost")]),
        other_ca=other_path,
        other_server=_leaf(directory, "other-server", "127.0.0.1", (other_cert, other_key), names=loopback),
    )

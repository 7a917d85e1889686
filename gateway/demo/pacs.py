"""Real PACS on 127.0.0.1, started as subprocesses: the demo's upstream, the tests', the benchmarks'.

Three kinds, three behaviours (measured, see the README):

- :class:`OrthancPacs` (Debian ``orthanc`` + ``orthanc-dicomweb``): capable C-FIND, and a native
  DICOMweb server over the same data, the oracle for differential tests;
- :class:`DcmqrscpPacs` (dcmtk): a strict legacy PACS, hierarchical C-FIND only;
- :class:`QrscpPacs` (pynetdicom's own app): one STUDY answer per instance.

Each is a context manager; every wait has a timeout and :meth:`LocalPacs.stop` never hangs.
"""

from __future__ import annotations

import configparser
import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from pydicom.dataset import Dataset
from pydicom.filewriter import dcmwrite
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE

__all__ = ["DcmqrscpPacs", "LocalPacs", "OrthancPacs", "OrthancTls", "QrscpPacs", "free_port"]

_HOST = "127.0.0.1"
_ORTHANC_DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
_VERIFICATION = "1.2.840.10008.1.1"
_PR_SET_PDEATHSIG = 1


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind((_HOST, 0))
        return int(sock.getsockname()[1])


def _require(binary: str) -> str:
    found = shutil.which(binary)
    if found is None:
        raise RuntimeError(f"{binary} is not installed: run scripts/install-upstreams (Debian packages orthanc, dcmtk)")
    return found


def _die_with_parent() -> None:
    """In the child: be terminated when its starter dies, however it dies.

    Strictly, when the thread that started it ends: every launcher here starts its PACS from the
    main thread.

    A SIGTERM to the demo ends it without running its clean-up (uvicorn re-raises the signal
    once it has shut down), which would otherwise leave the PACS running.
    """
    if sys.platform == "linux":
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _transfer_syntax(ds: Dataset) -> UID:
    meta = getattr(ds, "file_meta", None)
    return UID(meta.TransferSyntaxUID) if meta is not None and "TransferSyntaxUID" in meta else ExplicitVRLittleEndian


class LocalPacs:
    """A PACS process on 127.0.0.1 with a DIMSE port.

    Parameters
    ----------
    workdir : pathlib.Path
        Where its configuration, database, files and log go.
    port : int, optional
        The DIMSE port; a free one by default.
    ae_title : str
        The PACS's AE title.
    move_destinations : dict of str to (str, int), optional
        AE titles the PACS must accept as callers and as C-MOVE destinations.
    """

    kind = "pacs"
    start_timeout = 30.0

    def __init__(
        self,
        workdir: Path,
        *,
        port: int | None = None,
        ae_title: str = "PACS",
        move_destinations: dict[str, tuple[str, int]] | None = None,
    ) -> None:
        self.workdir = Path(workdir)
        self.host = _HOST
        self.port = port or free_port()
        self.ae_title = ae_title
        self.move_destinations = dict(move_destinations or {})
        self.log_path = self.workdir / f"{self.kind}.log"
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def upstream(self) -> str:
        """``AET@127.0.0.1:PORT``, as the gateway's ``--upstream`` takes it."""
        return f"{self.ae_title}@{self.host}:{self.port}"

    def _command(self) -> list[str]:
        raise NotImplementedError

    def _prepare(self) -> None:
        """Write the configuration into the work directory."""

    def _ready(self) -> bool:
        return self.echo()

    def start(self) -> None:
        """Start the process and wait until it answers C-ECHO."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._prepare()
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                self._command(),
                cwd=self.workdir,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                self.stop()
                raise RuntimeError(f"{self.kind} exited at startup:\n{self._log_tail()}")
            if self._ready():
                return
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"{self.kind} did not start within {self.start_timeout:g} s:\n{self._log_tail()}")

    def stop(self) -> None:
        """Terminate the process (and its children); kill it if it does not stop in 10 s."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(process.pid, sig)
            except ProcessLookupError:
                return
            try:
                process.wait(timeout=wait)
                return
            except subprocess.TimeoutExpired:
                continue

    def _log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def echo(self, timeout: float = 2.0) -> bool:
        """Whether the PACS answers a C-ECHO right now."""
        try:
            # pynetdicom leaks the socket of a refused association; don't ask before it listens.
            socket.create_connection((self.host, self.port), timeout=timeout).close()
        except OSError:
            return False
        ae = AE(ae_title="PROBE")
        ae.add_requested_context(_VERIFICATION)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = ae.connection_timeout = timeout
        assoc = ae.associate(self.host, self.port, ae_title=self.ae_title)
        if not assoc.is_established:
            return False
        try:
            status = assoc.send_c_echo()
            return bool(status) and status.Status == 0
        finally:
            assoc.release()

    def store(self, datasets: Iterable[Dataset]) -> int:
        """C-STORE `datasets` over one association; returns how many were stored.

        Raises
        ------
        RuntimeError
            If the association fails or the PACS refuses an instance.
        """
        pending = list(datasets)
        if not pending:
            return 0
        ae = AE(ae_title="LOADER")
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
        # Uncompressed instances may go in either syntax; compressed ones only as they are.
        for sop_class, syntax in sorted({(ds.SOPClassUID, _transfer_syntax(ds)) for ds in pending}):
            syntaxes = [syntax] if syntax.is_compressed else [ExplicitVRLittleEndian, ImplicitVRLittleEndian]
            ae.add_requested_context(sop_class, syntaxes)
        assoc = ae.associate(self.host, self.port, ae_title=self.ae_title)
        if not assoc.is_established:
            raise RuntimeError(f"cannot associate with {self.kind} at {self.upstream}")
        if assoc.dul.socket is not None and assoc.dul.socket.socket is not None:
            assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            for ds in pending:
                status = assoc.send_c_store(ds)
                if not status or status.Status not in (0x0000, 0xB000, 0xB006, 0xB007):
                    code = f"0x{status.Status:04X}" if status else "no response"
                    raise RuntimeError(f"{self.kind} refused {ds.SOPInstanceUID}: {code}")
        finally:
            if assoc.is_established:
                assoc.release()
        return len(pending)

    def __enter__(self) -> LocalPacs:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


class QrscpPacs(LocalPacs):
    """pynetdicom's ``qrscp`` app (needs sqlalchemy)."""

    kind = "qrscp"

    def __init__(self, workdir: Path, *, ae_title: str = "QRSCP", **options: object) -> None:
        super().__init__(workdir, ae_title=ae_title, **options)  # type: ignore[arg-type]

    def _prepare(self) -> None:
        config = configparser.ConfigParser()
        config["DEFAULT"] = {
            "ae_title": self.ae_title,
            "port": str(self.port),
            "max_pdu": "65536",
            "acse_timeout": "30",
            "dimse_timeout": "30",
            "network_timeout": "60",
            "bind_address": self.host,
            "instance_location": str(self.workdir / "instances"),
            "database_location": str(self.workdir / "instances.sqlite"),
            "log_identifier": "False",
        }
        for ae_title, (host, port) in self.move_destinations.items():
            config[ae_title] = {"address": host, "port": str(port)}
        with (self.workdir / "qrscp.ini").open("w") as handle:
            config.write(handle)

    def _command(self) -> list[str]:
        return [sys.executable, "-m", "pynetdicom", "qrscp", "-c", str(self.workdir / "qrscp.ini")]


class DcmqrscpPacs(LocalPacs):
    """dcmtk's ``dcmqrscp``: hierarchical C-FIND only, no computed attributes."""

    kind = "dcmqrscp"

    def __init__(self, workdir: Path, *, ae_title: str = "LEGACY", **options: object) -> None:
        super().__init__(workdir, ae_title=ae_title, **options)  # type: ignore[arg-type]

    def _prepare(self) -> None:
        database = self.workdir / "db"
        database.mkdir(parents=True, exist_ok=True)
        hosts = "\n".join(
            f"{aet.lower()} = ({aet}, {host}, {port})" for aet, (host, port) in self.move_destinations.items()
        )
        (self.workdir / "dcmqrscp.cfg").write_text(
            f"NetworkTCPPort  = {self.port}\n"
            "MaxPDUSize      = 65536\n"
            "MaxAssociations = 32\n"
            f"HostTable BEGIN\n{hosts}\nHostTable END\n"
            "VendorTable BEGIN\nVendorTable END\n"
            f"AETable BEGIN\n{self.ae_title} {database} RW (5000, 4096mb) ANY\nAETable END\n"
        )

    def _command(self) -> list[str]:
        return [_require("dcmqrscp"), "-c", str(self.workdir / "dcmqrscp.cfg")]


@dataclass(frozen=True)
class OrthancTls:
    """DICOM TLS for :class:`OrthancPacs` (Orthanc 1.9 or later), PEM files.

    Orthanc uses one certificate both ways: on its SCP, and as client certificate when it connects
    to a C-MOVE destination, over TLS too (``UseDicomTls``).
    """

    certificate: Path
    private_key: Path
    trusted_certificates: Path
    """The CAs Orthanc trusts for its peers' certificates, incoming and outgoing."""
    remote_certificate_required: bool = True
    """Refuse peers without a certificate (dcmtk's ``--require-peer-cert``)."""


class OrthancPacs(LocalPacs):
    """Orthanc with its DICOMweb plugin: a capable PACS and a native DICOMweb server in one.

    With `tls`, its DICOM port speaks DICOM TLS only and its C-MOVEs go to the move destinations
    over TLS.
    """

    kind = "orthanc"

    def __init__(
        self,
        workdir: Path,
        *,
        ae_title: str = "ORTHANC",
        tls: OrthancTls | None = None,
        dicomweb_servers: dict[str, str] | None = None,
        **options: object,
    ) -> None:
        super().__init__(workdir, ae_title=ae_title, **options)  # type: ignore[arg-type]
        self.http_port = free_port()
        self.tls = tls
        self.dicomweb_servers = dict(dicomweb_servers or {})
        """DICOMweb servers its plugin may act as a client of (``DicomWeb.Servers``), by name: root URL."""

    @property
    def http_url(self) -> str:
        """Orthanc's REST API root."""
        return f"http://{self.host}:{self.http_port}"

    @property
    def dicomweb_url(self) -> str:
        """Orthanc's native DICOMweb root."""
        return f"{self.http_url}/dicom-web"

    def _prepare(self) -> None:
        if not _ORTHANC_DICOMWEB_PLUGIN.exists():
            raise RuntimeError("Orthanc's DICOMweb plugin is missing: run scripts/install-upstreams")
        config = {
            "Name": "dicomweb-gateway test PACS",
            "StorageDirectory": str(self.workdir / "storage"),
            "IndexDirectory": str(self.workdir / "index"),
            "DicomAet": self.ae_title,
            "DicomPort": self.port,
            "HttpPort": self.http_port,
            "HttpServerEnabled": True,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomCheckCalledAet": False,
            "DicomAlwaysAllowEcho": True,
            "DicomAlwaysAllowStore": True,
            "DicomAlwaysAllowFind": True,
            "DicomAlwaysAllowGet": True,
            "DicomAlwaysAllowMove": True,
            "DicomModalities": {aet.lower(): [aet, host, port] for aet, (host, port) in self.move_destinations.items()},
            "DicomScpTimeout": 60,
            "TcpNoDelay": True,
            "StableAge": 1,
            "Plugins": [str(_ORTHANC_DICOMWEB_PLUGIN)],
            "DicomWeb": {
                "Enable": True,
                "Root": "/dicom-web/",
                "EnableWado": True,
                "Servers": {name: [url.rstrip("/") + "/"] for name, url in self.dicomweb_servers.items()},
            },
        }
        if self.tls is not None:
            config |= {
                "DicomTlsEnabled": True,
                "DicomTlsCertificate": str(self.tls.certificate),
                "DicomTlsPrivateKey": str(self.tls.private_key),
                "DicomTlsTrustedCertificates": str(self.tls.trusted_certificates),
                "DicomTlsRemoteCertificateRequired": self.tls.remote_certificate_required,
                "DicomModalities": {
                    aet.lower(): {"AET": aet, "Host": host, "Port": port, "UseDicomTls": True}
                    for aet, (host, port) in self.move_destinations.items()
                },
            }
        (self.workdir / "orthanc.json").write_text(json.dumps(config, indent=2))

    def _command(self) -> list[str]:
        return [_require("Orthanc"), str(self.workdir / "orthanc.json")]

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.http_url}/system", timeout=2) as response:
                if response.status != 200:
                    return False
        except OSError:
            return False
        if self.tls is not None:  # a plain C-ECHO cannot pass; its DICOM port listening is enough
            try:
                socket.create_connection((self.host, self.port), timeout=2).close()
            except OSError:
                return False
            return True
        return self.echo()

    def store(self, datasets: Iterable[Dataset]) -> int:
        """Load through Orthanc's REST API (``POST /instances``), ten times faster than C-STORE."""
        stored = 0
        for ds in datasets:
            path = self.workdir / "upload.dcm"
            dcmwrite(path, ds, enforce_file_format=True)
            request = urllib.request.Request(
                f"{self.http_url}/instances",
                data=path.read_bytes(),
                method="POST",
                headers={"Content-Type": "application/dicom"},
            )
            with urllib.request.urlopen(request, timeout=30) as response:
                if response.status != 200:
                    raise RuntimeError(f"orthanc refused {ds.SOPInstanceUID}: HTTP {response.status}")
            stored += 1
        return stored

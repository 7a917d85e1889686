"""WADO-RS benchmark: the gateway's retrieve against a bare C-GET and against Orthanc's WADO-RS.

One run, one Orthanc holding one CT study of ``--slices`` 512x512 slices (loaded through its
REST API), and the same study fetched every way:

- ``c-get``: pynetdicom's C-GET into memory at its best: every socket option and maximum PDU
  size in :data:`C_GET_CONFIGS` is tried and the fastest is kept (the floor for a DIMSE gateway
  written on pynetdicom);
- ``orthanc``: Orthanc's native WADO-RS study retrieve over the same data;
- ``gateway get`` / ``gateway move``: ``GET /studies/{uid}`` from the gateway's CLI started with
  ``--retrieve get`` or ``--retrieve move``, a fresh process (and an empty cache) for every run,
  so that its peak RSS (VmHWM) is the retrieve's own;
- a viewer pass as OHIF v3 makes it: the series metadata, then every frame one request at a
  time on ``--concurrency`` connections, cold (fresh gateway, empty cache) then warm (again).

Prints Markdown tables (time, MB/s, time to first byte, peak RSS, the ratios and the issue's
targets) and writes the raw numbers as JSON. Talks only to 127.0.0.1 and stops by itself.

    .venv/bin/python bench/wado.py [--slices 300] [--runs 3] [--concurrency 6] [--out bench/results/wado.json]

``--observability`` measures instead the gateway (``--retrieve get``) with /metrics and JSON logs
on against the same gateway with both off: two processes in front of the same Orthanc, the study
retrieve and a warm viewer pass on each, in ``--runs`` alternating rounds.

    .venv/bin/python bench/wado.py --observability [--slices 300] [--runs 5]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import queue
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import harness
import httpx
import pynetdicom.ae
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, build_role, evt
from pynetdicom.transport import AddressInformation, AssociationSocket

from gateway.demo.pacs import OrthancPacs, free_port
from gateway.demo.samples import SOP_CLASSES, iter_ct_volume

GET_MODEL = "1.2.840.10008.5.1.4.1.2.2.3"  # Study Root Query/Retrieve Information Model - GET
CT_IMAGE_STORAGE = SOP_CLASSES["CT"]
GATEWAY_AE = "GATEWAY"
STUDY_ACCEPT = 'multipart/related; type="application/dicom"; transfer-syntax=*'
FRAME_ACCEPT = "multipart/related; type=application/octet-stream; transfer-syntax=*"
METADATA_ACCEPT = "application/dicom+json"
MB = 1_000_000
_QUICKACK = getattr(socket, "TCP_QUICKACK", None)

Result = dict[str, Any]


@dataclass(frozen=True)
class CGetConfig:
    """How the bare C-GET's association is set up."""

    nodelay: bool
    quickack: bool
    max_pdu: int
    """What we tell Orthanc it may send us (0: no limit); Orthanc fragments its P-DATA to fit."""
    whole_reads: bool = False
    """Patch pynetdicom's receive loop (4 KiB reads appended one by one) to read each PDU whole,
    as the gateway's bulk sockets do: not bare pynetdicom any more, so never "at its best"."""

    @property
    def label(self) -> str:
        sockets = (
            "default sockets" if not self.nodelay else "TCP_NODELAY" + (" + QUICKACK/read" if self.quickack else "")
        )
        return f"{sockets}, max PDU {self.max_pdu or 'unlimited'}" + (", whole-PDU reads" if self.whole_reads else "")


C_GET_CONFIGS = [
    CGetConfig(nodelay=False, quickack=False, max_pdu=16382),  # pynetdicom's defaults
    CGetConfig(nodelay=True, quickack=False, max_pdu=16382),
    CGetConfig(nodelay=True, quickack=False, max_pdu=65536),
    CGetConfig(nodelay=True, quickack=False, max_pdu=262144),
    CGetConfig(nodelay=True, quickack=False, max_pdu=0),
    CGetConfig(nodelay=True, quickack=True, max_pdu=65536),  # what suits C-FIND; expected to cost here
    CGetConfig(nodelay=True, quickack=False, max_pdu=65536, whole_reads=True),  # the gateway's receive loop
]


class HttpFailure(RuntimeError):
    """An HTTP answer that is not the one asked for; keeps what is needed to report it."""

    def __init__(self, url: str, status: int, headers: httpx.Headers, body: bytes, elapsed_ms: float) -> None:
        self.detail: dict[str, Any] = {
            "url": url,
            "status": status,
            "headers": dict(headers),
            "body": body[:400].decode("utf-8", "replace"),
            "elapsed_ms": round(elapsed_ms, 1),
        }
        super().__init__(f"HTTP {status} from {url} after {elapsed_ms:.0f} ms: {self.detail['body'][:200]!r}")


# --- the study ------------------------------------------------------------------------------------


@dataclass
class Study:
    study_uid: str
    series_uid: str
    sop_uids: list[str]
    dataset_bytes: int
    """Sum of the encoded datasets (what a C-GET receives), without Part 10 headers."""


def load_study(orthanc: OrthancPacs, slices: int) -> Study:
    """Store one CT volume in Orthanc through its REST API and remember its UIDs."""
    sop_uids: list[str] = []
    study_uid = series_uid = ""

    def remember() -> Iterator[Dataset]:
        nonlocal study_uid, series_uid
        for ds in iter_ct_volume(slices):
            study_uid, series_uid = ds.StudyInstanceUID, ds.SeriesInstanceUID
            sop_uids.append(ds.SOPInstanceUID)
            yield ds

    orthanc.store(remember())
    return Study(study_uid, series_uid, sop_uids, 0)


# --- bare C-GET -------------------------------------------------------------------------------------


class _BenchSocket(AssociationSocket):
    """pynetdicom's socket with the options of the C-GET being measured, from its creation on."""

    config = CGetConfig(nodelay=False, quickack=False, max_pdu=16382)

    def _create_socket(self, address: AddressInformation) -> socket.socket:
        sock: socket.socket = super()._create_socket(address)
        if self.config.nodelay:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    def recv(self, nr_bytes: int) -> bytearray:
        if self.config.whole_reads and self.socket is not None:
            buffer = bytearray(nr_bytes)
            view = memoryview(buffer)
            received = 0
            while received < nr_bytes:
                count = self.socket.recv_into(view[received:], nr_bytes - received)
                if count == 0:
                    break
                received += count
            view.release()
            del buffer[received:]
            return buffer
        data: bytearray = super().recv(nr_bytes)
        if self.config.quickack and _QUICKACK is not None and self.socket is not None:
            # Linux clears TCP_QUICKACK once used: re-arm it after every read, as for C-FIND.
            with contextlib.suppress(OSError):
                self.socket.setsockopt(socket.IPPROTO_TCP, _QUICKACK, 1)
        return data


pynetdicom.ae.AssociationSocket = _BenchSocket  # type: ignore[attr-defined]  # this process only


def bare_c_get(orthanc: OrthancPacs, study: Study, config: CGetConfig, port: int | None = None) -> Result:
    """C-GET the study into memory with pynetdicom and nothing else.

    Times from the association request (a fresh gateway has to open one too) to the final
    C-GET response; the first sub-operation is when pynetdicom hands over the first complete
    C-STORE, which is also when the gateway can first write it.
    """
    received: list[bytes] = []
    first_store: list[float] = []

    def on_store(event: evt.Event) -> int:
        if not first_store:
            first_store.append(time.perf_counter())
        received.append(event.request.DataSet.getvalue())  # type: ignore[union-attr]
        return 0x0000

    _BenchSocket.config = config
    ae = AE(ae_title="BENCH")
    ae.maximum_pdu_size = config.max_pdu
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 60
    ae.add_requested_context(GET_MODEL)
    ae.add_requested_context(CT_IMAGE_STORAGE, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "STUDY"
    identifier.StudyInstanceUID = study.study_uid

    cpu_before = time.process_time()
    started = time.perf_counter()
    assoc = ae.associate(
        orthanc.host,
        port or orthanc.port,
        ae_title=orthanc.ae_title,
        ext_neg=[build_role(CT_IMAGE_STORAGE, scp_role=True)],
        evt_handlers=[(evt.EVT_C_STORE, on_store)],
    )
    if not assoc.is_established:
        raise RuntimeError("the C-GET association failed")
    requested = time.perf_counter()
    final = None
    try:
        for status, _ in assoc.send_c_get(identifier, GET_MODEL):
            if not status:
                raise RuntimeError("C-GET: no response (timeout or abort)")
            final = status.Status
    finally:
        finished = time.perf_counter()
        if assoc.is_established:
            assoc.release()
    cpu = time.process_time() - cpu_before
    if final != 0x0000 or len(received) != len(study.sop_uids):
        raise RuntimeError(f"C-GET ended with status {final} after {len(received)} of {len(study.sop_uids)}")
    total = sum(len(data) for data in received)
    seconds = finished - started
    return {
        "seconds": seconds,
        "bytes": total,
        "mb_per_s": total / MB / seconds,
        "first_ms": (first_store[0] - started) * 1000,
        "first_at": first_store[0],
        "started_at": started,
        "first_after_request_ms": (first_store[0] - requested) * 1000,
        "association_ms": (requested - started) * 1000,
        "client_cpu_s": cpu,
        "parts": len(received),
    }


# --- HTTP ------------------------------------------------------------------------------------------


def _content_type_params(value: str) -> tuple[str, dict[str, str]]:
    kind, *params = (piece.strip() for piece in value.split(";"))
    parsed = {}
    for param in params:
        key, _, val = param.partition("=")
        parsed[key.strip().lower()] = val.strip().strip('"')
    return kind.lower(), parsed


class _PartCounter:
    """Counts multipart delimiters in a stream and notes when the first part's payload begins."""

    def __init__(self, boundary: str) -> None:
        self.delimiter = b"--" + boundary.encode()
        self.count = 0
        self._tail = b""
        self._head = bytearray()
        self.payload_started = False
        self.first_part_is_dicom: bool | None = None

    def feed(self, chunk: bytes) -> bool:
        """Count `chunk`; return True when this chunk holds the first byte of the first part's payload."""
        data = self._tail + chunk
        self.count += data.count(self.delimiter)
        self._tail = data[-(len(self.delimiter) - 1) :]
        if self.payload_started:
            return False
        self._head += chunk
        start = self._head.find(self.delimiter)
        end = self._head.find(b"\r\n\r\n", start) if start >= 0 else -1
        if end < 0 or len(self._head) <= end + 4:
            return False
        self.payload_started = True
        return True

    def check_dicom(self) -> None:
        start = self._head.find(self.delimiter)
        end = self._head.find(b"\r\n\r\n", start) + 4
        if len(self._head) >= end + 132:
            self.first_part_is_dicom = self._head[end + 128 : end + 132] == b"DICM"

    @property
    def parts(self) -> int:
        return max(self.count - 1, 0)  # the close delimiter ("--boundary--") is not a part


def http_retrieve(url: str, accept: str) -> Result:
    """GET a multipart answer, streamed; time to headers, to the first part's payload and to the end."""
    cpu_before = time.process_time()
    with httpx.Client(timeout=httpx.Timeout(120, connect=10)) as client:
        started = time.perf_counter()
        with client.stream("GET", url, headers={"Accept": accept}) as response:
            headers_at = time.perf_counter()
            if response.status_code != 200:
                raise HttpFailure(
                    url, response.status_code, response.headers, response.read(), (headers_at - started) * 1000
                )
            kind, params = _content_type_params(response.headers.get("content-type", ""))
            if kind != "multipart/related" or "boundary" not in params:
                body = response.read()
                raise HttpFailure(url, response.status_code, response.headers, body, (headers_at - started) * 1000)
            counter = _PartCounter(params["boundary"])
            first_byte = first_payload = None
            total = 0
            for chunk in response.iter_raw():
                if first_byte is None:
                    first_byte = time.perf_counter()
                total += len(chunk)
                if counter.feed(chunk):
                    first_payload = time.perf_counter()
                    counter.check_dicom()
            finished = time.perf_counter()
    seconds = finished - started
    return {
        "seconds": seconds,
        "bytes": total,
        "mb_per_s": total / MB / seconds,
        "headers_ms": (headers_at - started) * 1000,
        "first_body_byte_ms": ((first_byte or finished) - started) * 1000,
        "first_ms": ((first_payload or finished) - started) * 1000,
        "first_at": first_payload or finished,
        "started_at": started,
        "client_cpu_s": time.process_time() - cpu_before,
        "parts": counter.parts,
        "first_part_is_dicom": counter.first_part_is_dicom,
        "content_type": response.headers.get("content-type"),
        "transfer_encoding": response.headers.get("transfer-encoding"),
        "content_length": response.headers.get("content-length"),
    }


# --- a wire tap for the first sub-operation -------------------------------------------------------


_C_STORE_RQ = b"\x00\x00\x00\x01\x02\x00\x00\x00\x01\x00"  # (0000,0100) CommandField, length 2, 0x0001


class WireTap:
    """A TCP relay on 127.0.0.1 that notes when the first C-STORE has wholly passed through it.

    Put between the gateway and Orthanc (the gateway's C-GET association, or Orthanc's C-MOVE
    sub-association to the gateway's storage SCP), it gives the moment the gateway has the first
    sub-operation in its socket, on the same clock as the HTTP client: the first-byte delay
    measured on the wire rather than estimated. It copies every byte through Python, so the
    retrieves it watches are timed for their first byte only.

    Parameters
    ----------
    target_port : int
        Where to relay connections to.
    watch_replies : bool
        True to parse what the target sends back (C-GET: Orthanc answers the gateway's request
        with C-STOREs); False to parse what the connecting side sends (C-MOVE: Orthanc connects).
    """

    def __init__(self, target_port: int, *, watch_replies: bool) -> None:
        self.target_port = target_port
        self.watch_replies = watch_replies
        self.first_store_at: float | None = None
        self.first_connection_at: float | None = None
        self.events: list[tuple[float, str, str]] = []
        """(time, who sent it, what) for every PDU and DIMSE command up to the first C-STORE."""
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._closed = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self._closed.set()
        self._listener.close()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if self.first_connection_at is None:
                self.first_connection_at = time.perf_counter()
            self._note("PACS" if not self.watch_replies else "gateway", "TCP connection")
            upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=10)
            upstream.settimeout(None)
            for sock in (client, upstream):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            threading.Thread(target=self._relay, args=(client, upstream), daemon=True).start()

    def _relay(self, client: socket.socket, upstream: socket.socket) -> None:
        watched, plain = (upstream, client) if self.watch_replies else (client, upstream)
        other = threading.Thread(target=self._pump, args=(plain, watched, False), daemon=True)
        other.start()
        self._pump(watched, plain, True)
        other.join(timeout=60)
        client.close()
        upstream.close()

    def _pump(self, source: socket.socket, sink: socket.socket, watched: bool) -> None:
        side = "PACS" if watched else "gateway"
        pending = bytearray()
        in_store = False
        command = bytearray()
        try:
            while True:
                chunk = source.recv(1 << 20)
                if not chunk:
                    break
                completed = False
                if self.first_store_at is None:
                    pending += chunk
                    # PS3.8 9.3.1: PDU type (1), reserved (1), length (4); P-DATA-TF items are
                    # length (4), presentation context (1), message control header (1), fragment.
                    while len(pending) >= 6 and not completed:
                        length = int.from_bytes(pending[2:6], "big")
                        if len(pending) < 6 + length:
                            break
                        pdu, pending = bytes(pending[: 6 + length]), pending[6 + length :]
                        if pdu[0] != 0x04:
                            self._note(side, _PDU_TYPES.get(pdu[0], f"PDU {pdu[0]:#x}"))
                            continue
                        offset = 6
                        while offset < len(pdu):
                            item = int.from_bytes(pdu[offset : offset + 4], "big")
                            control, fragment = pdu[offset + 5], pdu[offset + 6 : offset + 4 + item]
                            offset += 4 + item
                            if control & 0x01:  # a command fragment
                                command += fragment
                                if control & 0x02:
                                    self._note(side, _command_name(command))
                                    in_store, command = watched and _C_STORE_RQ in command, bytearray()
                            elif in_store and control & 0x02:  # the last fragment of the C-STORE's dataset
                                completed = True
                sink.sendall(chunk)
                if completed:
                    self.first_store_at = time.perf_counter()
                    self._note(side, "first C-STORE dataset passed on")
            with contextlib.suppress(OSError):
                sink.shutdown(socket.SHUT_WR)  # pass the end of the stream on, as a half-close
        except OSError:
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def _note(self, side: str, what: str) -> None:
        if len(self.events) < 40:
            self.events.append((time.perf_counter(), side, what))


_PDU_TYPES = {
    0x01: "A-ASSOCIATE-RQ",
    0x02: "A-ASSOCIATE-AC",
    0x03: "A-ASSOCIATE-RJ",
    0x05: "A-RELEASE-RQ",
    0x06: "A-RELEASE-RP",
    0x07: "A-ABORT",
}
_COMMANDS = {
    0x0001: "C-STORE-RQ",
    0x8001: "C-STORE-RSP",
    0x0010: "C-GET-RQ",
    0x8010: "C-GET-RSP",
    0x0020: "C-FIND-RQ",
    0x8020: "C-FIND-RSP",
    0x0021: "C-MOVE-RQ",
    0x8021: "C-MOVE-RSP",
    0x0030: "C-ECHO-RQ",
    0x8030: "C-ECHO-RSP",
    0x0FFF: "C-CANCEL-RQ",
}


def _command_name(command: bytes | bytearray) -> str:
    at = command.find(_C_STORE_RQ[:8])  # (0000,0100) with length 2, implicit VR little endian
    if at < 0:
        return "command"
    field = int.from_bytes(command[at + 8 : at + 10], "little")
    return _COMMANDS.get(field, f"command {field:#06x}")


# --- the gateway process ---------------------------------------------------------------------------


def _proc_status_kb(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


GATEWAY_LOG_PROBLEMS: list[str] = []
"""Warnings and errors the gateway processes logged, for the report."""


class Gateway:
    """The gateway's CLI in its own process, with an empty cache, watched through /proc."""

    def __init__(
        self,
        orthanc: OrthancPacs,
        retrieve: str,
        store_port: int,
        workdir: Path,
        upstream: str | None = None,
        options: tuple[list[str], dict[str, str]] = ([], {}),
    ) -> None:
        """`options`: more flags (the last of a repeated flag wins) and environment variables."""
        self.port = free_port()
        self.root = f"http://127.0.0.1:{self.port}/dicom-web"
        self.workdir = workdir
        self.cache_dir = Path(tempfile.mkdtemp(prefix=f"cache-{retrieve}-", dir=workdir))
        self.log_path = workdir / f"gateway-{retrieve}-{self.port}.log"
        self.command = [
            str(Path(sys.executable).with_name("dicomweb-gateway")),
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--upstream",
            upstream or orthanc.upstream,
            "--ae-title",
            GATEWAY_AE,
            "--retrieve",
            retrieve,
            "--store-port",
            str(store_port),
            "--log-level",
            "warning",
            "--cache-dir",
            str(self.cache_dir),
            *options[0],
        ]
        self.environ = os.environ | options[1]
        self.process: subprocess.Popen[bytes] | None = None
        self._peak_rss_kb = 0
        self._sampling = threading.Event()

    def __enter__(self) -> Gateway:
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(self.command, stdout=log, stderr=subprocess.STDOUT, env=self.environ)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the gateway exited at startup:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=1):
                    return self
            except OSError:
                time.sleep(0.1)
        self.__exit__(None, None, None)
        raise RuntimeError(f"the gateway did not start:\n{self.log_tail()}")

    def __exit__(self, *exc_info: object) -> None:
        self._sampling.clear()
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)
        with contextlib.suppress(OSError):
            for line in self.log_path.read_text(errors="replace").splitlines():
                if " WARNING " in line or " ERROR " in line or "Traceback" in line:
                    GATEWAY_LOG_PROBLEMS.append(f"{self.log_path.name}: {line[:300]}")

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def rss_mb(self, key: str = "VmRSS") -> float:
        return _proc_status_kb(self.pid, key) / 1024

    def cpu_seconds(self) -> float:
        return _cpu_seconds(self.pid)

    @contextlib.contextmanager
    def sampling_rss(self) -> Iterator[dict[str, float]]:
        """Sample VmRSS every 10 ms while the block runs; VmHWM at its end (the kernel's own peak)."""
        found: dict[str, float] = {"rss_before_mb": self.rss_mb(), "cpu_before_s": self.cpu_seconds()}
        self._peak_rss_kb = 0
        self._sampling.set()

        def sample() -> None:
            while self._sampling.is_set():
                with contextlib.suppress(OSError, ValueError):
                    self._peak_rss_kb = max(self._peak_rss_kb, _proc_status_kb(self.pid, "VmRSS"))
                time.sleep(0.01)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            yield found
        finally:
            self._sampling.clear()
            sampler.join(timeout=2)
            found["rss_sampled_peak_mb"] = self._peak_rss_kb / 1024
            found["vmhwm_mb"] = self.rss_mb("VmHWM")
            found["gateway_cpu_s"] = self.cpu_seconds() - found.pop("cpu_before_s")

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


def set_move_destination(orthanc: OrthancPacs, port: int) -> None:
    """Point Orthanc's C-MOVE destination GATEWAY at `port` (its REST API, ``PUT /modalities``)."""
    request = urllib.request.Request(
        f"{orthanc.http_url}/modalities/{GATEWAY_AE.lower()}",
        data=json.dumps({"AET": GATEWAY_AE, "Host": "127.0.0.1", "Port": port}).encode(),
        method="PUT",
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        if response.status != 200:
            raise RuntimeError(f"Orthanc refused the modality update: HTTP {response.status}")


def tapped_first_byte(orthanc: OrthancPacs, study: Study, method: str, store_port: int, workdir: Path) -> Result:
    """The gateway's first-byte delay measured on the wire: first payload byte at the client
    minus the moment the first C-STORE has passed into the gateway's socket."""
    if method == "get":
        tap = WireTap(orthanc.port, watch_replies=True)
        upstream = f"{orthanc.ae_title}@127.0.0.1:{tap.port}"
    else:
        tap = WireTap(store_port, watch_replies=False)
        upstream = orthanc.upstream
        set_move_destination(orthanc, tap.port)
    try:
        with Gateway(orthanc, method, store_port, workdir, upstream=upstream) as gateway:
            try:
                retrieved = http_retrieve(f"{gateway.root}/studies/{study.study_uid}", STUDY_ACCEPT)
            except HttpFailure as failure:
                failure.detail["gateway_log"] = gateway.log_tail(15)
                raise
    finally:
        tap.close()
        if method == "move":
            set_move_destination(orthanc, store_port)
    if tap.first_store_at is None:
        raise RuntimeError("no C-STORE went through the wire tap")
    connected = tap.first_connection_at or tap.first_store_at
    return {
        "first_byte_delay_ms": (retrieved["first_at"] - tap.first_store_at) * 1000,
        "first_ms": retrieved["first_ms"],
        # Breakdown on the same clock: request -> the first connection through the tap (the C-GET
        # association, or Orthanc's C-MOVE sub-association) -> the first C-STORE -> the first byte.
        "request_to_connection_ms": (connected - retrieved["started_at"]) * 1000,
        "timeline_ms": [f"{(at - retrieved['started_at']) * 1000:.1f} {side}: {what}" for at, side, what in tap.events]
        + [f"{retrieved['first_ms']:.1f} client: first byte of the first part"],
        "connection_to_first_store_ms": (tap.first_store_at - connected) * 1000,
        "parts": retrieved["parts"],
    }


def tapped_bare_c_get(orthanc: OrthancPacs, study: Study, config: CGetConfig) -> Result:
    """The same wire tap in front of the bare C-GET: how long pynetdicom itself takes to hand
    over a C-STORE that has arrived (the part of the delay no pynetdicom gateway can avoid)."""
    tap = WireTap(orthanc.port, watch_replies=True)
    try:
        retrieved = bare_c_get(orthanc, study, config, port=tap.port)
    finally:
        tap.close()
    if tap.first_store_at is None:
        raise RuntimeError("no C-STORE went through the wire tap")
    return {
        "first_byte_delay_ms": (retrieved["first_at"] - tap.first_store_at) * 1000,
        "first_ms": retrieved["first_ms"],
        "timeline_ms": [
            f"{(at - retrieved['started_at']) * 1000:.1f} {side.replace('gateway', 'bench')}: {what}"
            for at, side, what in tap.events
        ]
        + [f"{retrieved['first_ms']:.1f} bench: C-STORE handler called"],
    }


# --- the viewer pass -------------------------------------------------------------------------------


def viewer_pass(root: str, study: Study, concurrency: int) -> Result:
    """Series metadata, then every frame one request at a time on `concurrency` connections (OHIF v3)."""
    series_url = f"{root}/studies/{study.study_uid}/series/{study.series_uid}"
    started = time.perf_counter()
    with httpx.Client(timeout=60) as client:
        response = client.get(f"{series_url}/metadata", headers={"Accept": METADATA_ACCEPT})
        metadata_ms = (time.perf_counter() - started) * 1000
        if response.status_code != 200:
            raise HttpFailure(
                response.url.__str__(), response.status_code, response.headers, response.content, metadata_ms
            )
        instances = response.json()
    ordered = sorted(instances, key=lambda item: int(item.get("00200013", {}).get("Value", [0])[0]))
    sop_uids = [item["00080018"]["Value"][0] for item in ordered]
    if sorted(sop_uids) != sorted(study.sop_uids):
        raise RuntimeError(f"series metadata lists {len(sop_uids)} instances, expected {len(study.sop_uids)}")

    pending: queue.SimpleQueue[str] = queue.SimpleQueue()
    for uid in sop_uids:
        pending.put(uid)
    latencies: list[float] = []
    failures: list[dict[str, Any]] = []
    lock = threading.Lock()
    pixel_bytes = 512 * 512 * 2

    def worker() -> None:
        with httpx.Client(timeout=60) as frames:
            while True:
                try:
                    uid = pending.get_nowait()
                except queue.Empty:
                    return
                url = f"{series_url}/instances/{uid}/frames/1"
                asked = time.perf_counter()
                answer = frames.get(url, headers={"Accept": FRAME_ACCEPT})
                elapsed = (time.perf_counter() - asked) * 1000
                kind, _ = _content_type_params(answer.headers.get("content-type", ""))
                with lock:
                    if answer.status_code != 200 or kind != "multipart/related" or len(answer.content) < pixel_bytes:
                        failures.append(
                            HttpFailure(url, answer.status_code, answer.headers, answer.content, elapsed).detail
                        )
                    else:
                        latencies.append(elapsed)

    frames_started = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=600)
    finished = time.perf_counter()
    if failures:
        raise RuntimeError(f"{len(failures)} of {len(sop_uids)} frame requests failed; first: {failures[0]}")
    latencies.sort()
    return {
        "seconds": finished - started,
        "metadata_ms": metadata_ms,
        "frames_seconds": finished - frames_started,
        "frames": len(latencies),
        "frames_per_s": len(latencies) / (finished - started),
        "frame_p50_ms": statistics.median(latencies),
        "frame_p95_ms": latencies[max(int(len(latencies) * 0.95) - 1, 0)],
    }


# --- the run ---------------------------------------------------------------------------------------


def _median_run(runs: list[Result]) -> Result:
    """The run with the median time (a real run, so its other numbers belong together)."""
    ordered = sorted(runs, key=lambda run: run["seconds"])
    return dict(ordered[(len(ordered) - 1) // 2])


def _attempt(results: dict[str, Any], name: str, run: Any, *args: Any) -> Result | None:
    try:
        value: Result = run(*args)
        return value
    except HttpFailure as failure:
        results.setdefault("failures", {}).setdefault(name, []).append(failure.detail)
    except Exception as failure:  # a benchmark reports what broke and goes on with the rest
        results.setdefault("failures", {}).setdefault(name, []).append(
            {"error": f"{type(failure).__name__}: {failure}"}
        )
    print(f"  {name} failed: {results['failures'][name][-1]}", file=sys.stderr, flush=True)
    return None


def run_benchmark(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    results: dict[str, Any] = {
        "slices": args.slices,
        "runs": args.runs,
        "cores": os.cpu_count(),
        "load_average_before": os.getloadavg(),
    }
    store_port = free_port()
    orthanc = OrthancPacs(tmp / "orthanc", move_destinations={GATEWAY_AE: ("127.0.0.1", store_port)})
    with orthanc:
        loading = time.perf_counter()
        study = load_study(orthanc, args.slices)
        print(f"  loaded {args.slices} slices in {time.perf_counter() - loading:.1f} s", file=sys.stderr, flush=True)
        warm = bare_c_get(orthanc, study, C_GET_CONFIGS[2])  # Orthanc's files are in the page cache now
        study.dataset_bytes = warm["bytes"]
        results["study"] = {"study_uid": study.study_uid, "instances": len(study.sop_uids), "bytes": warm["bytes"]}

        sweep: dict[str, list[Result]] = {config.label: [] for config in C_GET_CONFIGS}
        for _ in range(args.runs):
            for config in C_GET_CONFIGS:
                sweep[config.label].append(bare_c_get(orthanc, study, config))
        bare = [config.label for config in C_GET_CONFIGS if not config.whole_reads]
        best = max(bare, key=lambda label: _median_run(sweep[label])["mb_per_s"])
        results["c_get_sweep"] = {label: _median_run(runs) | {"config": label} for label, runs in sweep.items()}
        print(f"  bare C-GET: best is {best}", file=sys.stderr, flush=True)
        best_config = next(config for config in C_GET_CONFIGS if config.label == best)

        # The best C-GET is measured again between the others, so that the ratios compare runs
        # made at the same time (other work on the machine changes from minute to minute).
        retrieves: dict[str, list[Result]] = {"c-get": [], "orthanc": [], "gateway get": [], "gateway move": []}
        for _ in range(args.runs):
            retrieves["c-get"].append(bare_c_get(orthanc, study, best_config) | {"config": best})
            native = _attempt(
                results, "orthanc", http_retrieve, f"{orthanc.dicomweb_url}/studies/{study.study_uid}", STUDY_ACCEPT
            )
            if native:
                retrieves["orthanc"].append(native)
            for method in ("get", "move"):
                with Gateway(orthanc, method, store_port, tmp) as gateway, gateway.sampling_rss() as memory:
                    retrieved = _attempt(
                        results,
                        f"gateway {method}",
                        http_retrieve,
                        f"{gateway.root}/studies/{study.study_uid}",
                        STUDY_ACCEPT,
                    )
                    if retrieved is None:
                        results["failures"][f"gateway {method}"][-1]["gateway_log"] = gateway.log_tail(15)
                if retrieved:
                    retrieves[f"gateway {method}"].append(retrieved | memory)
        for name, runs in retrieves.items():
            if runs:
                results[name] = _median_run(runs)
                if name.startswith("gateway"):
                    results[name]["vmhwm_max_mb"] = max(run["vmhwm_mb"] for run in runs)
                results[name]["all_seconds"] = [round(run["seconds"], 3) for run in runs]
        print("  measured the study retrieves", file=sys.stderr, flush=True)
        tapped: dict[str, list[Result]] = {"c-get": [], "gateway get": [], "gateway move": []}
        for _ in range(args.runs):
            calibration = _attempt(results, "tapped c-get", tapped_bare_c_get, orthanc, study, best_config)
            if calibration:
                tapped["c-get"].append(calibration)
            for method in ("get", "move"):
                name = f"gateway {method}"
                delay = _attempt(results, f"tapped {name}", tapped_first_byte, orthanc, study, method, store_port, tmp)
                if delay:
                    tapped[name].append(delay)
        results["first_byte_delay"] = {
            name: sorted(run["first_byte_delay_ms"] for run in runs)[(len(runs) - 1) // 2]
            for name, runs in tapped.items()
            if runs
        }
        results["first_byte_delay_runs"] = tapped
        print("  measured the first-byte delays on the wire", file=sys.stderr, flush=True)

        viewer: dict[str, Result] = {}
        for method in args.viewer_retrieve:
            with Gateway(orthanc, method, store_port, tmp) as gateway:
                for temperature in ("cold", "warm"):
                    name = f"gateway {method} {temperature}"
                    passed = _attempt(results, name, viewer_pass, gateway.root, study, args.concurrency)
                    if passed:
                        viewer[name] = passed
                viewer_rss = gateway.rss_mb("VmHWM")
                for name in (f"gateway {method} cold", f"gateway {method} warm"):
                    if name in viewer:
                        viewer[name]["vmhwm_mb"] = viewer_rss
        # Orthanc keeps no frame cache: one pass is its reference.
        passed = _attempt(results, "orthanc viewer", viewer_pass, orthanc.dicomweb_url, study, args.concurrency)
        if passed:
            viewer["orthanc -"] = passed
        results["viewer"] = viewer
        print("  measured the viewer passes", file=sys.stderr, flush=True)
    results["load_average_after"] = os.getloadavg()
    results["gateway_log_problems"] = GATEWAY_LOG_PROBLEMS
    return results


def run_observability(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    """/metrics and JSON logs on vs. off: the study retrieve and a warm viewer pass, alternating."""
    store_port = free_port()
    results: dict[str, Any] = {"slices": args.slices, "runs": args.runs, "load_average_before": os.getloadavg()}
    with OrthancPacs(tmp / "orthanc") as orthanc:
        study = load_study(orthanc, args.slices)
        with contextlib.ExitStack() as stack:
            gateways = {
                name: stack.enter_context(Gateway(orthanc, "get", store_port, tmp, options=options))
                for name, options in harness.OBSERVABILITY.items()
            }
            for gateway in gateways.values():  # warm-up: Orthanc's page cache, the gateway's instance cache
                http_retrieve(f"{gateway.root}/studies/{study.study_uid}", STUDY_ACCEPT)
                viewer_pass(gateway.root, study, args.concurrency)
            retrieves: dict[str, list[Result]] = {name: [] for name in gateways}
            viewers: dict[str, list[Result]] = {name: [] for name in gateways}
            for round_number in range(args.runs):
                order = list(gateways) if round_number % 2 == 0 else list(reversed(gateways))
                for name in order:
                    gateway = gateways[name]
                    cpu = gateway.cpu_seconds()
                    retrieved = http_retrieve(f"{gateway.root}/studies/{study.study_uid}", STUDY_ACCEPT)
                    retrieves[name].append(retrieved | {"gateway_cpu_s": gateway.cpu_seconds() - cpu})
                    cpu = gateway.cpu_seconds()
                    passed = viewer_pass(gateway.root, study, args.concurrency)
                    viewers[name].append(
                        passed | {"gateway_cpu_ms_per_frame": (gateway.cpu_seconds() - cpu) * 1000 / passed["frames"]}
                    )
                print(f"  round {round_number + 1} of {args.runs}", file=sys.stderr, flush=True)
    results["retrieve"] = retrieves
    results["viewer_warm"] = viewers
    results["load_average_after"] = os.getloadavg()
    return results


def report_observability(results: dict[str, Any]) -> str:
    """Medians over the rounds, and the on/off ratios."""

    def median(runs: list[Result], key: str) -> float:
        return float(statistics.median(run[key] for run in runs))

    retrieve, viewer = results["retrieve"], results["viewer_warm"]
    lines = [
        f"WADO-RS, {results['slices']} CT slices, gateway `--retrieve get`, /metrics and JSON logs on vs. off "
        f"(log level info for both), medians of {results['runs']} alternating rounds:",
        "",
        "| gateway | study MB/s | MB/s of each round | gateway CPU s/study | warm viewer frames/s | frame p50 ms "
        "| gateway CPU ms/frame |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name in retrieve:
        each = ", ".join(f"{run['mb_per_s']:.1f}" for run in retrieve[name])
        cells = [
            name,
            f"{median(retrieve[name], 'mb_per_s'):.1f}",
            each,
            f"{median(retrieve[name], 'gateway_cpu_s'):.2f}",
            f"{median(viewer[name], 'frames_per_s'):.0f}",
            f"{median(viewer[name], 'frame_p50_ms'):.1f}",
            f"{median(viewer[name], 'gateway_cpu_ms_per_frame'):.2f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    throughput = median(retrieve["on"], "mb_per_s") / median(retrieve["off"], "mb_per_s")
    frames = median(viewer["on"], "frames_per_s") / median(viewer["off"], "frames_per_s")
    cpu = median(retrieve["on"], "gateway_cpu_s") / median(retrieve["off"], "gateway_cpu_s")
    lines += [
        "",
        f"- on / off: study throughput {throughput:.3f} (target: at least 0.97), gateway CPU per study {cpu:.3f}, "
        f"warm frames/s {frames:.3f}",
    ]
    return "\n".join(lines)


# --- the report ------------------------------------------------------------------------------------


def _verdict(value: float, target: float, higher_is_better: bool) -> str:
    met = value >= target if higher_is_better else value < target
    return "met" if met else "**missed**"


def _failure_cell(results: dict[str, Any], key: str) -> str:
    failure = results.get("failures", {}).get(key, [{}])[-1]
    return f"failed: {failure.get('status', failure.get('error', '?'))}"


def report(results: dict[str, Any]) -> str:
    study = results["study"]
    lines = [
        f"WADO-RS study retrieve, {study['instances']} CT slices of 512x512 "
        f"({study['bytes'] / MB:.0f} MB of datasets), Orthanc upstream, {results['cores']} cores, loopback; "
        f"median of {results['runs']} runs (a fresh gateway process for each); load average "
        f"{results['load_average_before'][0]:.1f} before, {results['load_average_after'][0]:.1f} after:",
        "",
        "| method | s | MB | MB/s | first byte ms | parts | peak RSS MB | client CPU s | gateway CPU s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    rows = {
        "c-get": f"bare C-GET ({results['c-get']['config']})",
        "orthanc": "Orthanc WADO-RS",
        "gateway get": "gateway, --retrieve get",
        "gateway move": "gateway, --retrieve move",
    }
    for key, label in rows.items():
        r = results.get(key)
        if r is None:
            lines.append(f"| {label} | {_failure_cell(results, key)} | | | | | | | |")
            continue
        cells = [
            label,
            f"{r['seconds']:.2f}",
            f"{r['bytes'] / MB:.0f}",
            f"{r['mb_per_s']:.0f}",
            f"{r['first_ms']:.0f}",
            f"{r['parts']}",
            f"{r['vmhwm_max_mb']:.0f}" if "vmhwm_max_mb" in r else "",
            f"{r['client_cpu_s']:.2f}",
            f"{r['gateway_cpu_s']:.2f}" if "gateway_cpu_s" in r else "",
        ]
        lines.append("| " + " | ".join(cells) + " |")

    lines += [
        "",
        "Bare C-GET, every configuration tried (median of the runs; first = first C-STORE handed over, "
        "counted from the association request):",
        "",
        "| configuration | s | MB/s | first sub-operation ms | client CPU s |",
        "| --- | --- | --- | --- | --- |",
    ]
    for label, r in results["c_get_sweep"].items():
        lines.append(
            f"| {label} | {r['seconds']:.2f} | {r['mb_per_s']:.0f} | {r['first_ms']:.0f} | {r['client_cpu_s']:.2f} |"
        )

    delays = results.get("first_byte_delay", {})
    if delays:
        lines += [
            "",
            "First-byte delay on the wire (median; from the first C-STORE wholly passed into the receiver's "
            "socket to the first byte of the first part at the client, or to pynetdicom's C-STORE handler):",
            "",
            "| receiver | request -> upstream connection ms | -> first C-STORE ms | -> first byte ms (delay) |",
            "| --- | --- | --- | --- |",
        ]
        for name in ("c-get", "gateway get", "gateway move"):
            label = "bare C-GET (pynetdicom's own hand-over)" if name == "c-get" else name
            cell = f"{delays[name]:.1f}" if name in delays else _failure_cell(results, f"tapped {name}")
            runs = results["first_byte_delay_runs"].get(name, [])
            steps = ["", ""]
            if runs and "request_to_connection_ms" in runs[0]:
                run = sorted(runs, key=lambda r: r["first_byte_delay_ms"])[(len(runs) - 1) // 2]
                steps = [f"{run['request_to_connection_ms']:.0f}", f"{run['connection_to_first_store_ms']:.0f}"]
            lines.append(f"| {label} | {steps[0]} | {steps[1]} | {cell} |")
        origins = {"c-get": "the association request", "gateway get": "the request", "gateway move": "the request"}
        for name, origin in origins.items():
            runs = results["first_byte_delay_runs"].get(name, [])
            if runs:
                run = sorted(runs, key=lambda r: r["first_byte_delay_ms"])[(len(runs) - 1) // 2]
                lines += ["", f"{name}, on the wire (ms from {origin}): " + "; ".join(run["timeline_ms"])]

    viewer = results.get("viewer", {})
    if viewer:
        lines += [
            "",
            f"Viewer pass (series metadata, then {study['instances']} frames one at a time on "
            f"{results['concurrency']} connections):",
            "",
            "| server | pass | total s | metadata ms | frames/s | frame p50 ms | frame p95 ms |",
            "| --- | --- | --- | --- | --- | --- | --- |",
        ]
        for name, r in viewer.items():
            server, _, temperature = name.rpartition(" ")
            lines.append(
                f"| {server} | {temperature} | {r['seconds']:.2f} | {r['metadata_ms']:.0f} | {r['frames_per_s']:.0f} "
                f"| {r['frame_p50_ms']:.1f} | {r['frame_p95_ms']:.1f} |"
            )

    lines += ["", "Ratios and the issue's targets:", ""]
    bare = results["c-get"]
    native = results.get("orthanc")
    patched = next((r for label, r in results["c_get_sweep"].items() if "whole-PDU" in label), None)
    for method in ("get", "move"):
        r = results.get(f"gateway {method}")
        if r is None:
            lines.append(f"- --retrieve {method}: no retrieve result")
            continue
        ratio = r["mb_per_s"] / bare["mb_per_s"]
        estimate = r["first_ms"] - bare["first_ms"]
        wire = delays.get(f"gateway {method}")
        lines += [
            f"- --retrieve {method}: throughput / bare C-GET = {ratio:.2f} (target >= 0.9: "
            f"{_verdict(ratio, 0.9, True)})"
            + (f"; / Orthanc WADO-RS = {r['mb_per_s'] / native['mb_per_s']:.2f}" if native else "")
            + (f"; / C-GET with whole-PDU reads = {r['mb_per_s'] / patched['mb_per_s']:.2f}" if patched else ""),
            f"- --retrieve {method}: peak RSS {r['vmhwm_max_mb']:.0f} MB (target < 200 MB: "
            f"{_verdict(r['vmhwm_max_mb'], 200, False)})",
            f"- --retrieve {method}: first-byte delay on the wire "
            + (f"{wire:.1f} ms (target < 50 ms: {_verdict(wire, 50, False)})" if wire is not None else "not measured")
            + f"; estimate first byte - bare first sub-operation = {r['first_ms']:.0f} - {bare['first_ms']:.0f} "
            f"= {estimate:.0f} ms",
        ]
    for method in results.get("viewer_retrieve", []):
        cold, warm = viewer.get(f"gateway {method} cold"), viewer.get(f"gateway {method} warm")
        if cold and warm:
            lines.append(
                f"- viewer, --retrieve {method}: warm / cold time = {warm['seconds'] / cold['seconds']:.2f} "
                f"({cold['frames_per_s']:.0f} -> {warm['frames_per_s']:.0f} frames/s); peak RSS "
                f"{warm['vmhwm_mb']:.0f} MB"
            )
    problems = results.get("gateway_log_problems", [])
    if problems:
        lines.append(f"- the gateway logged {len(problems)} warnings or errors; the first: {problems[0]}")
    for name, failures in results.get("failures", {}).items():
        failure = failures[-1]
        what = f"HTTP {failure['status']}: {failure['body'][:160]}" if "status" in failure else failure["error"][:300]
        lines.append(f"- FAILED {name} ({len(failures)}x): {what}")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--slices", type=int, default=300, help="CT slices in the study (512x512, about 0.5 MB each)")
    parser.add_argument("--runs", type=int, default=3, help="runs of each study retrieve (the median is reported)")
    parser.add_argument("--concurrency", type=int, default=6, help="connections of the viewer pass (a browser's 6)")
    parser.add_argument(
        "--viewer-retrieve",
        type=lambda value: [method for method in value.split(",") if method],
        default=["get", "move"],
        help="gateway retrieve methods for the viewer pass (comma-separated)",
    )
    parser.add_argument("--out", type=Path, default=Path("bench/results/wado.json"))
    parser.add_argument(
        "--observability", action="store_true", help="only compare /metrics and JSON logs on against off"
    )
    args = parser.parse_args()
    if args.observability:
        with tempfile.TemporaryDirectory(prefix="bench-wado-obs-") as tmp:
            observed = run_observability(args, Path(tmp))
        print(report_observability(observed))
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.with_name(args.out.stem + "-observability.json").write_text(json.dumps(observed, indent=2))
        return 0
    with tempfile.TemporaryDirectory(prefix="bench-wado-") as tmp:
        results = run_benchmark(args, Path(tmp))
    results["concurrency"] = args.concurrency
    results["viewer_retrieve"] = args.viewer_retrieve
    results["c_get_configs"] = [asdict(config) for config in C_GET_CONFIGS]
    print(report(results))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

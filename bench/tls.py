"""DICOM TLS benchmark: what TLS costs a WADO-RS study retrieve, next to what it costs a bare C-GET.

Two Orthancs hold the same CT study of ``--slices`` 512x512 slices: one plain, one with DICOM TLS
(client certificates required, its C-MOVEs to the gateway over TLS). The study is fetched from
each, every way, ``--runs`` times (the median run is reported):

- ``bare C-GET``: pynetdicom's C-GET into memory, plain or with ``tls_args``: the cost of TLS
  to pynetdicom itself, the floor;
- ``gateway get`` / ``gateway move``: ``GET /studies/{uid}`` from the gateway's CLI (a fresh
  process, so a fresh association and an empty cache, for every run), plain or over TLS (and for
  C-MOVE a TLS storage SCP); with the CPU time the gateway process used.

The ratio to read is TLS over plain for each method. Certificates are made on the spot
(``tests/tlscerts.py``, with ``cryptography`` from the test extra). Prints a Markdown table,
writes the raw numbers as JSON, talks only to 127.0.0.1 and stops by itself.

    .venv/bin/python bench/tls.py [--slices 200] [--runs 3] [--out bench/results/tls.json]
"""

from __future__ import annotations

import argparse
import json
import os
import ssl
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import harness
import httpx
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, build_role, evt

from gateway.demo.pacs import OrthancPacs, OrthancTls, free_port
from gateway.demo.samples import SOP_CLASSES, iter_ct_volume

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root, for tests.tlscerts
from tests.tlscerts import Pki, make_pki

GET_MODEL = "1.2.840.10008.5.1.4.1.2.2.3"
CT_IMAGE_STORAGE = SOP_CLASSES["CT"]
ACCEPT = 'multipart/related; type="application/dicom"; transfer-syntax=*'
MB = 1_000_000
Result = dict[str, Any]


def bare_c_get(pacs: OrthancPacs, study_uid: str, tls_args: tuple[ssl.SSLContext, str] | None) -> Result:
    """C-GET the study into memory with pynetdicom alone (64 KiB PDUs), from association request to final status."""
    received = [0]

    def on_store(event: evt.Event) -> int:
        received[0] += len(event.request.DataSet.getvalue())  # type: ignore[union-attr]
        return 0x0000

    ae = AE(ae_title="BENCH")
    ae.maximum_pdu_size = 65536
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 120
    ae.add_requested_context(GET_MODEL)
    ae.add_requested_context(CT_IMAGE_STORAGE, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "STUDY"
    identifier.StudyInstanceUID = study_uid
    started = time.perf_counter()
    assoc = ae.associate(
        pacs.host,
        pacs.port,
        ae_title=pacs.ae_title,
        ext_neg=[build_role(CT_IMAGE_STORAGE, scp_role=True)],
        evt_handlers=[(evt.EVT_C_STORE, on_store)],
        tls_args=tls_args,
    )
    if not assoc.is_established:
        raise RuntimeError("the bare C-GET could not associate")
    try:
        final = None
        for status, _ in assoc.send_c_get(identifier, GET_MODEL):
            final = status
        if not final or final.Status != 0:
            raise RuntimeError(f"the bare C-GET ended with {final}")
    finally:
        assoc.release()
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "bytes": received[0], "mb_per_s": received[0] / MB / seconds}


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def gateway_retrieve(config: Path, study_uid: str, workdir: Path, name: str) -> Result:
    """One study retrieve from a fresh gateway process started with `config`."""
    process, root = harness.start_gateway(["--config", str(config), "--log-level", "warning"], workdir / f"{name}.log")
    try:
        cpu_before = _cpu_seconds(process.pid)
        started = time.perf_counter()
        total = 0
        with httpx.Client(timeout=httpx.Timeout(300, connect=10)) as client:
            with client.stream("GET", f"{root}/studies/{study_uid}", headers={"Accept": ACCEPT}) as response:
                if response.status_code != 200:
                    raise RuntimeError(f"{name}: HTTP {response.status_code}: {response.read()[:300]!r}")
                for chunk in response.iter_raw():
                    total += len(chunk)
        seconds = time.perf_counter() - started
        cpu = _cpu_seconds(process.pid) - cpu_before
    finally:
        process.terminate()
        process.wait(timeout=15)
    return {"seconds": seconds, "bytes": total, "mb_per_s": total / MB / seconds, "gateway_cpu_s": cpu}


def write_config(path: Path, pacs: OrthancPacs, retrieve: str, store_port: int, pki: Pki | None) -> Path:
    lines = ["[gateway]", 'ae_title = "GATEWAY"', f"store_port = {store_port}"]
    if pki is not None:
        lines += [
            "store_tls = true",
            f'store_tls_cert = "{pki.server.cert}"',
            f'store_tls_key = "{pki.server.key}"',
            f'store_tls_ca = "{pki.ca}"',
        ]
    lines += [
        "",
        "[upstreams.main]",
        f'ae_title = "{pacs.ae_title}"',
        f'host = "{pacs.host}"',
        f"port = {pacs.port}",
        'profile = "orthanc"',
        f'retrieve = "{retrieve}"',
    ]
    if pki is not None:
        lines += [
            "tls = true",
            f'tls_ca = "{pki.ca}"',
            f'tls_cert = "{pki.client.cert}"',
            f'tls_key = "{pki.client.key}"',
        ]
    path.write_text("\n".join(lines) + "\n")
    return path


def client_tls_args(pki: Pki) -> tuple[ssl.SSLContext, str]:
    context = ssl.create_default_context(cafile=str(pki.ca))
    context.load_cert_chain(pki.client.cert, pki.client.key)
    return context, "127.0.0.1"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--slices", type=int, default=200)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("bench/results/tls.json"))
    args = parser.parse_args()

    results: dict[str, dict[str, list[Result]]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-tls-") as tmp:
        workdir = Path(tmp)
        pki = make_pki(workdir / "pki")
        store_ports = {"plain": free_port(), "tls": free_port()}
        tls = OrthancTls(pki.server.cert, pki.server.key, pki.ca)
        volume = list(iter_ct_volume(args.slices))
        study_uid = str(volume[0].StudyInstanceUID)
        megabytes = 0.0
        with (
            OrthancPacs(workdir / "plain", move_destinations={"GATEWAY": ("127.0.0.1", store_ports["plain"])}) as plain,
            OrthancPacs(
                workdir / "tls", tls=tls, move_destinations={"GATEWAY": ("127.0.0.1", store_ports["tls"])}
            ) as secure,
        ):
            for pacs in (plain, secure):
                pacs.store(volume)
            print(f"  loaded {args.slices} slices into both Orthancs", file=sys.stderr, flush=True)
            configs = {
                (link, method): write_config(
                    workdir / f"{link}-{method}.toml", pacs, method, store_ports[link], pki if link == "tls" else None
                )
                for link, pacs in (("plain", plain), ("tls", secure))
                for method in ("get", "move")
            }
            # Plain and TLS alternate, run after run, so that a change in the machine's load hits both.
            for run in range(args.runs):
                for link, pacs in (("plain", plain), ("tls", secure)):
                    tls_args = client_tls_args(pki) if link == "tls" else None
                    measured = {"bare C-GET": bare_c_get(pacs, study_uid, tls_args)}
                    for method in ("get", "move"):
                        name = f"{link}-{method}"
                        measured[f"gateway {method}"] = gateway_retrieve(
                            configs[link, method], study_uid, workdir, name
                        )
                    for name, result in measured.items():
                        results.setdefault(name, {}).setdefault(link, []).append(result)
                        megabytes = max(megabytes, result["bytes"] / MB)
                print(f"  run {run + 1} done, load average {os.getloadavg()[0]:.1f}", file=sys.stderr, flush=True)

    def median(runs: list[Result]) -> Result:
        return sorted(runs, key=lambda r: r["seconds"])[len(runs) // 2]

    lines = [
        f"Retrieve of one CT study, {args.slices} slices 512x512 (~{megabytes:.0f} MB), from Orthanc 1.10, plain and "
        f"DICOM TLS (TLS 1.3, mutual), median of {args.runs} runs, {os.cpu_count()} cores, loopback, "
        f"load average {os.getloadavg()[0]:.1f} at the end:",
        "",
        "| method | plain s | plain MB/s | TLS s | TLS MB/s | TLS / plain time | gateway CPU s plain / TLS |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, links in results.items():
        p, t = median(links["plain"]), median(links["tls"])
        cpu = f"{p['gateway_cpu_s']:.2f} / {t['gateway_cpu_s']:.2f}" if "gateway_cpu_s" in p else ""
        cells = [
            name,
            f"{p['seconds']:.2f}",
            f"{p['mb_per_s']:.0f}",
            f"{t['seconds']:.2f}",
            f"{t['mb_per_s']:.0f}",
            f"{t['seconds'] / p['seconds']:.2f}",
            cpu,
        ]
        lines.append("| " + " | ".join(cells) + " |")
    print("\n".join(lines))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"slices": args.slices, "runs": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

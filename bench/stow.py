"""STOW-RS benchmark: the gateway's upload against storescu and a tuned pynetdicom C-STORE loop.

One run, one Orthanc, the same 512x512 CT volume (a fresh copy of its UIDs for each method, so
that every method stores new instances):

- ``storescu``: dcmtk's C-STORE SCU, one association, the files as they are;
- ``c-store loop``: pynetdicom at its best: one association, TCP_NODELAY and TCP_QUICKACK after
  every read, each instance streamed from its file (what the gateway does upstream);
- ``gateway cN``: one STOW-RS request (``multipart/related``, streamed from the files) to the
  gateway's CLI in its own process, with ``store_concurrency = N``; with the peak RSS of the
  gateway process (``VmHWM``).

Prints a Markdown table and the ratios, writes the raw numbers as JSON. Talks only to 127.0.0.1
and stops by itself.

    .venv/bin/python bench/stow.py [--slices 300] [--out bench/results/stow.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import harness
import httpx
from pydicom import dcmwrite

from gateway.demo.pacs import OrthancPacs
from gateway.demo.samples import iter_ct_volume
from gateway.dimse import sockets
from gateway.dimse.sockets import SocketProfile, TunedAE

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
BOUNDARY = "bench-stow-boundary"


def write_volume(directory: Path, slices: int, seed: int) -> list[Path]:
    """The CT volume as Part 10 files, its UIDs made distinct by `seed`."""
    directory.mkdir(parents=True)
    paths = []
    for ds in iter_ct_volume(slices, seed=seed):
        path = directory / f"{ds.InstanceNumber:04d}.dcm"
        dcmwrite(path, ds, enforce_file_format=True)
        paths.append(path)
    return paths


def run_storescu(pacs: OrthancPacs, paths: list[Path]) -> None:
    storescu = shutil.which("storescu")
    if storescu is None:
        raise RuntimeError("storescu (dcmtk) is not installed: run scripts/install-upstreams")
    command = [storescu, "-aet", "BENCH", "-aec", pacs.ae_title, pacs.host, str(pacs.port), *map(str, paths)]
    subprocess.run(command, check=True, timeout=600, capture_output=True)


def run_loop(pacs: OrthancPacs, paths: list[Path]) -> None:
    sockets.install()  # TCP_NODELAY, TCP_QUICKACK after each read, chunked sends from files
    import pynetdicom._config

    pynetdicom._config.STORE_SEND_CHUNKED_DATASET = True
    ae = TunedAE(ae_title="BENCH", socket_profile=SocketProfile.INTERACTIVE)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 60
    ae.add_requested_context(CT_IMAGE_STORAGE, ["1.2.840.10008.1.2.1"])
    assoc = ae.associate(pacs.host, pacs.port, ae_title=pacs.ae_title)
    if not assoc.is_established:
        raise RuntimeError("association failed")
    try:
        for path in paths:
            status = assoc.send_c_store(path)
            if not status or status.Status != 0:
                raise RuntimeError(f"C-STORE of {path} failed: {status}")
    finally:
        assoc.release()


def multipart_body(paths: list[Path]) -> Iterator[bytes]:
    for path in paths:
        yield f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        with path.open("rb") as handle:
            while chunk := handle.read(1 << 20):
                yield chunk
        yield b"\r\n"
    yield f"--{BOUNDARY}--\r\n".encode()


def start_gateway(pacs: OrthancPacs, workdir: Path, concurrency: int) -> tuple[subprocess.Popen[bytes], str]:
    config = workdir / f"gateway-c{concurrency}.toml"
    config.write_text(
        f'[gateway]\nlog_level = "warning"\n\n'
        f'[upstreams.orthanc]\nae_title = "{pacs.ae_title}"\nhost = "{pacs.host}"\nport = {pacs.port}\n'
        f'profile = "orthanc"\nstore_concurrency = {concurrency}\nmax_store_associations = {concurrency}\n'
    )
    return harness.start_gateway(["--config", str(config)], workdir / f"gateway-c{concurrency}.log")


def peak_rss_mb(pid: int) -> float:
    """The process's peak resident set size (VmHWM), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def run_gateway(root: str, paths: list[Path]) -> None:
    headers = {
        "Content-Type": f'multipart/related; type="application/dicom"; boundary={BOUNDARY}',
        "Content-Length": str(
            sum(p.stat().st_size + 2 for p in paths)
            + sum(len(f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n") for _ in paths)
            + len(f"--{BOUNDARY}--\r\n")
        ),
        "Accept": "application/dicom+json",
    }
    response = httpx.post(f"{root}/studies", content=multipart_body(paths), headers=headers, timeout=600)
    if response.status_code != 200:
        raise RuntimeError(f"STOW-RS answered {response.status_code}: {response.text[:500]}")
    stored = len(response.json()["00081199"]["Value"])
    if stored != len(paths):
        raise RuntimeError(f"STOW-RS stored {stored} of {len(paths)}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--out", type=Path, default=Path("bench/results/stow.json"))
    args = parser.parse_args()

    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-stow-") as tmp, OrthancPacs(Path(tmp) / "orthanc") as orthanc:
        workdir = Path(tmp)
        methods = ["storescu", "c-store loop", "gateway c1", "gateway c2", "gateway c4"]
        volumes = {
            name: write_volume(workdir / f"volume-{i}", args.slices, seed=i + 1) for i, name in enumerate(methods)
        }
        megabytes = sum(p.stat().st_size for p in volumes["storescu"]) / 1e6
        for name in methods:
            paths = volumes[name]
            gateway = None
            try:
                if name.startswith("gateway"):
                    gateway, root = start_gateway(orthanc, workdir, int(name[-1]))
                started = time.perf_counter()
                if name == "storescu":
                    run_storescu(orthanc, paths)
                elif name == "c-store loop":
                    run_loop(orthanc, paths)
                else:
                    run_gateway(root, paths)
                seconds = time.perf_counter() - started
                results[name] = {
                    "seconds": seconds,
                    "ms_per_instance": seconds * 1000 / len(paths),
                    "instances_per_s": len(paths) / seconds,
                    "mb_per_s": megabytes / seconds,
                    "peak_rss_mb": peak_rss_mb(gateway.pid) if gateway is not None else float("nan"),
                }
                print(f"  measured {name}: {seconds:.2f} s", file=sys.stderr, flush=True)
            finally:
                if gateway is not None:
                    gateway.terminate()
                    gateway.wait(timeout=15)

    loop = results["c-store loop"]["instances_per_s"]
    lines = [
        f"STOW of {args.slices} CT instances 512x512 ({megabytes:.0f} MB) into Orthanc, "
        f"{os.cpu_count()} cores, loopback:",
        "",
        "| method | seconds | ms/instance | instances/s | MB/s | vs. C-STORE loop | gateway peak RSS MB |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, r in results.items():
        rss = "" if r["peak_rss_mb"] != r["peak_rss_mb"] else f"{r['peak_rss_mb']:.0f}"
        cells = [
            name,
            f"{r['seconds']:.2f}",
            f"{r['ms_per_instance']:.1f}",
            f"{r['instances_per_s']:.0f}",
            f"{r['mb_per_s']:.0f}",
            f"{r['instances_per_s'] / loop:.2f}",
            rss,
        ]
        lines.append("| " + " | ".join(cells) + " |")
    print("\n".join(lines))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""QIDO-RS benchmark: the gateway against a plain C-FIND and against Orthanc's own QIDO-RS.

One run, one Orthanc holding the sample studies, three ways to ask it the same question
("studies with a CT series"), each at concurrency 1 and 16:

- ``gateway``: the gateway's QIDO-RS, served by its CLI in its own process, in front of Orthanc's
  DIMSE port (pooled associations, tuned sockets), with the ``orthanc`` profile, which passes
  Orthanc's own ModalitiesInStudy and counts through (``bench/fresh.py`` measures deriving them);
- ``c-find``: what a naive integration does: pynetdicom, a new association per query, default
  sockets, the same identifier the gateway sends;
- ``orthanc-qido``: Orthanc's native DICOMweb plugin on the same data.

Prints a Markdown table (p50 and p95 latency in ms, throughput in requests/s) and the ratios, and
writes the raw numbers as JSON. Talks only to 127.0.0.1 and stops by itself.

    .venv/bin/python bench/qido.py [--studies 48] [--requests 200] [--out bench/results/qido.json]

``--observability`` measures instead the gateway with /metrics and JSON logs on against the same
gateway with both off, two processes in front of the same Orthanc, in alternating rounds.

    .venv/bin/python bench/qido.py --observability [--rounds 6] [--requests 200]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import harness
import httpx
from pynetdicom import AE

from gateway.demo.pacs import DcmqrscpPacs, LocalPacs, OrthancPacs
from gateway.demo.samples import generate_sample_studies, iter_sample_datasets
from gateway.query.attributes import QueryLevel
from gateway.query.identifier import build_identifier
from gateway.query.params import parse_qido_query
from gateway.search.engine import plan_search
from gateway.settings import PROFILES

FIND_MODEL = "1.2.840.10008.5.1.4.1.2.2.1"
QUERY = {"ModalitiesInStudy": "CT"}
# Exactly the identifier the gateway sends for the same query to a capable PACS.
_PLAN = plan_search(parse_qido_query(QueryLevel.STUDY, list(QUERY.items())), PROFILES["orthanc"])
IDENTIFIER = build_identifier(
    QueryLevel.STUDY, _PLAN.upstream_keys[QueryLevel.STUDY], _PLAN.return_tags[QueryLevel.STUDY]
)


def plain_c_find(pacs: LocalPacs) -> Callable[[], int]:
    """A C-FIND over a new association with pynetdicom's defaults; returns the match count."""

    def query() -> int:
        ae = AE(ae_title="BENCH")
        ae.add_requested_context(FIND_MODEL)
        assoc = ae.associate(pacs.host, pacs.port, ae_title=pacs.ae_title)
        if not assoc.is_established:
            raise RuntimeError("association failed")
        matches = sum(1 for status, _ in assoc.send_c_find(IDENTIFIER, FIND_MODEL) if status.Status == 0xFF00)
        assoc.release()
        return matches

    return query


def http_query(url: str, params: dict[str, str] = QUERY) -> Callable[[], int]:
    """A QIDO-RS GET on a client per thread (kept-alive connections, as a viewer has)."""
    local = threading.local()

    def query() -> int:
        client = getattr(local, "client", None)
        if client is None:
            client = local.client = httpx.Client(timeout=30)
        response = client.get(url, params=params, headers={"Accept": "application/dicom+json"})
        response.raise_for_status()
        return len(response.json()) if response.status_code == 200 else 0

    return query


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(query: Callable[[], int], requests: int, concurrency: int, pid: int | None = None) -> dict[str, float]:
    """Run `requests` queries on `concurrency` threads; latency percentiles and throughput.

    With `pid`, also the CPU time that process spent per request (the gateway's own cost).
    """
    for _ in range(10):
        query()
    latencies: list[float] = []
    counts: set[int] = set()
    lock = threading.Lock()
    per_thread = requests // concurrency

    def worker() -> None:
        for _ in range(per_thread):
            started = time.perf_counter()
            count = query()
            elapsed = (time.perf_counter() - started) * 1000
            with lock:
                latencies.append(elapsed)
                counts.add(count)

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    cpu_before = cpu_seconds(pid) if pid is not None else 0.0
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    wall = time.perf_counter() - started
    cpu = cpu_seconds(pid) - cpu_before if pid is not None else float("nan")
    if len(counts) != 1:
        raise RuntimeError(f"answers differ between runs: {counts}")
    latencies.sort()
    return {
        "p50_ms": statistics.median(latencies),
        "p95_ms": latencies[int(len(latencies) * 0.95) - 1],
        "throughput_rps": len(latencies) / wall,
        "server_cpu_ms_per_request": cpu * 1000 / len(latencies),
        "matches": counts.pop(),
        "requests": len(latencies),
    }


def start_gateway(pacs: LocalPacs, workdir: Path, profile: str) -> tuple[subprocess.Popen[bytes], str]:
    config = harness.upstream_config(pacs, workdir / "gateway.toml", profile)
    return harness.start_gateway(["--config", str(config)], workdir / "gateway.log")


def measure_observability(studies: int, requests: int, rounds: int) -> dict[str, list[dict[str, float]]]:
    """/metrics and JSON logs on vs. off: `rounds` alternating rounds of `requests` at concurrency 1 on each."""
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in harness.OBSERVABILITY}
    with tempfile.TemporaryDirectory(prefix="bench-qido-obs-") as tmp, OrthancPacs(Path(tmp) / "orthanc") as orthanc:
        orthanc.store(iter_sample_datasets(generate_sample_studies(studies)))
        gateways = {}
        try:
            for name, (flags, environ) in harness.OBSERVABILITY.items():
                log = Path(tmp) / f"gateway-{name}.log"
                gateways[name] = harness.start_gateway(["--upstream", orthanc.upstream, *flags], log, environ)
            for round_number in range(rounds):
                # Alternate which goes first, so that neither always follows the other.
                order = list(gateways) if round_number % 2 == 0 else list(reversed(gateways))
                for name in order:
                    process, root = gateways[name]
                    runs[name].append(measure(http_query(f"{root}/studies"), requests, 1, process.pid))
                print(f"  round {round_number + 1} of {rounds}", file=sys.stderr, flush=True)
        finally:
            for process, _ in gateways.values():
                process.terminate()
                process.wait(timeout=15)
    return runs


def report_observability(runs: dict[str, list[dict[str, float]]]) -> str:
    """A table of the medians over the rounds, and the on/off ratios."""
    medians = {
        name: {key: statistics.median(run[key] for run in results) for key in results[0] if key != "matches"}
        for name, results in runs.items()
    }
    lines = [
        "QIDO-RS `/studies?ModalitiesInStudy=CT`, concurrency 1, /metrics and JSON logs on vs. off "
        f"(log level info for both), medians of {len(runs['on'])} alternating rounds:",
        "",
        "| gateway | p50 ms | p95 ms | requests/s | gateway CPU ms/request | p50 of each round |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name, m in medians.items():
        each = ", ".join(f"{run['p50_ms']:.1f}" for run in runs[name])
        cells = [
            name,
            f"{m['p50_ms']:.1f}",
            f"{m['p95_ms']:.1f}",
            f"{m['throughput_rps']:.0f}",
            f"{m['server_cpu_ms_per_request']:.2f}",
            each,
        ]
        lines.append("| " + " | ".join(cells) + " |")
    on, off = medians["on"], medians["off"]
    lines += [
        "",
        f"- p50 on / off = {on['p50_ms'] / off['p50_ms']:.3f} (target: at most 1.03); "
        f"gateway CPU per request on / off = {on['server_cpu_ms_per_request'] / off['server_cpu_ms_per_request']:.3f}",
    ]
    return "\n".join(lines)


def measure_legacy(studies: int, requests: int) -> dict[str, dict[str, float]]:
    """The cost of emulation: the same query through the gateway in front of dcmqrscp."""
    with tempfile.TemporaryDirectory(prefix="bench-qido-legacy-") as tmp, DcmqrscpPacs(Path(tmp) / "pacs") as pacs:
        pacs.store(iter_sample_datasets(generate_sample_studies(studies)))
        gateway, root = start_gateway(pacs, Path(tmp), "auto")
        try:
            return {
                "gateway (emulating)": measure(http_query(f"{root}/studies"), requests, 1, gateway.pid),
                "c-find (wrong answer)": measure(plain_c_find(pacs), requests, 1),
            }
        finally:
            gateway.terminate()
            gateway.wait(timeout=15)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--studies", type=int, default=48)
    parser.add_argument("--requests", type=int, default=200, help="requests per method and concurrency")
    parser.add_argument("--out", type=Path, default=Path("bench/results/qido.json"))
    parser.add_argument("--legacy", action="store_true", help="also measure the emulation in front of dcmqrscp")
    parser.add_argument(
        "--observability", action="store_true", help="only compare /metrics and JSON logs on against off"
    )
    parser.add_argument("--rounds", type=int, default=6, help="alternating rounds of --observability")
    args = parser.parse_args()
    if args.observability:
        runs = measure_observability(args.studies, args.requests, args.rounds)
        print(report_observability(runs))
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.with_name(args.out.stem + "-observability.json").write_text(json.dumps(runs, indent=2))
        return 0

    results: dict[str, dict[str, dict[str, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-qido-") as tmp, OrthancPacs(Path(tmp) / "orthanc") as orthanc:
        orthanc.store(iter_sample_datasets(generate_sample_studies(args.studies)))
        gateway, root = start_gateway(orthanc, Path(tmp), "orthanc")
        try:
            methods = {
                "gateway": http_query(f"{root}/studies"),
                "c-find": plain_c_find(orthanc),
                "orthanc-qido": http_query(f"{orthanc.dicomweb_url}/studies"),
            }
            for concurrency in (1, 16):
                for name, query in methods.items():
                    requests = args.requests if concurrency == 1 else args.requests * 2
                    pid = gateway.pid if name == "gateway" else None
                    results.setdefault(name, {})[f"c{concurrency}"] = measure(query, requests, concurrency, pid)
                    print(f"  measured {name} at concurrency {concurrency}", file=sys.stderr, flush=True)
        finally:
            gateway.terminate()
            gateway.wait(timeout=15)

    legacy: dict[str, dict[str, float]] = {}
    if args.legacy:
        legacy = measure_legacy(args.studies, args.requests // 4)

    lines = [
        f"QIDO-RS `/studies?ModalitiesInStudy=CT` ({results['gateway']['c1']['matches']:.0f} of {args.studies} "
        f"studies match), Orthanc upstream, {os.cpu_count()} cores, loopback:",
        "",
        "| method | concurrency | p50 ms | p95 ms | requests/s | gateway CPU ms/request |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for concurrency in ("c1", "c16"):
        for name in results:
            r = results[name][concurrency]
            cpu = "" if name != "gateway" else f"{r['server_cpu_ms_per_request']:.1f}"
            cells = [
                name,
                concurrency[1:],
                f"{r['p50_ms']:.1f}",
                f"{r['p95_ms']:.1f}",
                f"{r['throughput_rps']:.0f}",
                cpu,
            ]
            lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    for concurrency in ("c1", "c16"):
        gateway_p50 = results["gateway"][concurrency]["p50_ms"]
        lines.append(
            f"- concurrency {concurrency[1:]}: gateway p50 / Orthanc QIDO-RS p50 = "
            f"{gateway_p50 / results['orthanc-qido'][concurrency]['p50_ms']:.2f}; "
            f"gateway p50 / plain C-FIND p50 = {gateway_p50 / results['c-find'][concurrency]['p50_ms']:.2f}"
        )
    if legacy:
        lines += [
            "",
            "In front of dcmqrscp (no ModalitiesInStudy, no counts): the gateway gives the same answer as above;",
            "the plain C-FIND returns every study, without ModalitiesInStudy or counts.",
            "",
            "| method | p50 ms | p95 ms | answers |",
            "| --- | --- | --- | --- |",
        ]
        for name, r in legacy.items():
            lines.append(f"| {name} | {r['p50_ms']:.1f} | {r['p95_ms']:.1f} | {r['matches']:.0f} |")
    print("\n".join(lines))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"orthanc": results, "dcmqrscp": legacy}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

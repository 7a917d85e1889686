"""Access-control benchmark: what checking a bearer token costs per request.

Two measurements, one run:

- ``token check``: in process, the time :class:`gateway.auth.tokens.Authenticator` takes to
  check a token with the issuer's keys cached, for RS256 and ES256: a token seen for the first
  time (signature and claims checked: every request of a client that gets a new token each time)
  and one seen before (a viewer's next request: remembered until it expires); and the time the
  whole :class:`gateway.auth.middleware.AuthMiddleware` adds to a request (token, scopes, audit
  line) around an application that answers at once;
- ``QIDO-RS``: the same ``/studies?ModalitiesInStudy=CT`` through two gateway processes in front of
  one Orthanc, one anonymous and one checking tokens of a local issuer (127.0.0.1), at
  concurrency 1 and 16, request by request in turn: p50 with auth next to p50 without.

Prints a Markdown table and writes the raw numbers as JSON. Talks only to 127.0.0.1 and stops by itself.

    .venv/bin/python bench/auth.py [--checks 5000] [--requests 200] [--out bench/results/auth.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import harness
import httpx
import qido

from gateway.auth.middleware import AuthMiddleware
from gateway.auth.ownership import StudyOwnership
from gateway.auth.tokens import Authenticator
from gateway.demo.issuer import AUDIENCE, LocalIssuer
from gateway.demo.pacs import OrthancPacs
from gateway.demo.samples import generate_sample_studies, iter_sample_datasets
from gateway.settings import AuthSettings

SCOPE = "patient/ImagingStudy.rs user/ImagingStudy.rs openid fhirUser launch/patient"


def _percentiles(samples: list[float]) -> dict[str, float]:
    samples.sort()
    return {
        "mean_us": statistics.fmean(samples),
        "p50_us": statistics.median(samples),
        "p99_us": samples[int(len(samples) * 0.99) - 1],
    }


async def _time_checks(check: Callable[[int], Any], count: int) -> dict[str, float]:
    samples = []
    for index in range(count):
        started = time.perf_counter()
        await check(index)
        samples.append((time.perf_counter() - started) * 1e6)
    return _percentiles(samples)


async def measure_checks(issuer: LocalIssuer, count: int) -> dict[str, dict[str, float]]:
    """Microseconds per token check and per request through the middleware, keys cached."""
    results: dict[str, dict[str, float]] = {}
    async with Authenticator(AuthSettings(issuers=(issuer.url,), audience=AUDIENCE)) as authenticator:
        for key in issuer.keys:
            # Distinct tokens (a subject of their own each), minted before the clock starts.
            tokens = [issuer.token(key, scope=SCOPE, patient="PAT0001", sub=f"s{i}") for i in range(count)]
            await authenticator.authenticate(tokens[0])
            results[f"token check {key.algorithm}, first sight"] = await _time_checks(
                lambda index, tokens=tokens: authenticator.authenticate(tokens[index]), count
            )
            results[f"token check {key.algorithm}, seen before"] = await _time_checks(
                lambda index, tokens=tokens: authenticator.authenticate(tokens[0]), count
            )

        async def no_content(scope: Any, receive: Any, send: Any) -> None:
            await send({"type": "http.response.start", "status": 204, "headers": []})
            await send({"type": "http.response.body", "body": b""})

        middleware = AuthMiddleware(
            no_content,
            base_path="/dicom-web",
            authenticator=authenticator,
            ownership=StudyOwnership(),
            upstreams=None,  # type: ignore[arg-type]  # QIDO needs no upstream in the middleware
        )
        token = issuer.token(scope=SCOPE, patient="PAT0001").encode()

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: Any) -> None:
            pass

        def request(index: int) -> Any:
            scope = {
                "type": "http",
                "method": "GET",
                "path": "/dicom-web/studies",
                "headers": [(b"authorization", b"Bearer " + token), (b"accept", b"application/dicom+json")],
                "client": ("127.0.0.1", 50000),
            }
            return middleware(scope, receive, send)

        results["whole middleware, token seen before, with audit line"] = await _time_checks(request, count)
    return results


def http_query(url: str, headers: dict[str, str]) -> Callable[[], int]:
    """A QIDO-RS GET on a kept-alive client per thread."""
    local = threading.local()

    def query() -> int:
        client = getattr(local, "client", None)
        if client is None:
            client = local.client = httpx.Client(timeout=30)
        response = client.get(url, params=qido.QUERY, headers={"Accept": "application/dicom+json", **headers})
        response.raise_for_status()
        return len(response.json())

    return query


def measure_interleaved(
    queries: dict[str, tuple[Callable[[], int], int]], requests: int, concurrency: int
) -> dict[str, dict[str, float]]:
    """Each thread alternates between the gateways request by request, so that the load of a shared
    machine falls on both alike; per gateway: latency percentiles, throughput, CPU per request."""
    for query, _ in queries.values():
        for _ in range(10):
            query()
    latencies: dict[str, list[float]] = {name: [] for name in queries}
    lock = threading.Lock()

    def worker() -> None:
        names = list(queries)
        for round_ in range(requests // concurrency):
            # Which goes first alternates too: the second of a pair meets a PACS just done with the first.
            for name in names if round_ % 2 == 0 else names[::-1]:
                query = queries[name][0]
                started = time.perf_counter()
                query()
                elapsed = (time.perf_counter() - started) * 1000
                with lock:
                    latencies[name].append(elapsed)

    cpu_before = {name: qido.cpu_seconds(pid) for name, (_, pid) in queries.items()}
    started = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=600)
    wall = time.perf_counter() - started
    results = {}
    for name, (_, pid) in queries.items():
        samples = sorted(latencies[name])
        results[name] = {
            "p50_ms": statistics.median(samples),
            "p95_ms": samples[int(len(samples) * 0.95) - 1],
            "throughput_rps": len(samples) / wall,
            "server_cpu_ms_per_request": (qido.cpu_seconds(pid) - cpu_before[name]) * 1000 / len(samples),
            "requests": len(samples),
        }
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checks", type=int, default=5000, help="token checks timed per algorithm")
    parser.add_argument("--studies", type=int, default=48)
    parser.add_argument("--requests", type=int, default=200, help="QIDO-RS requests per gateway and concurrency")
    parser.add_argument("--out", type=Path, default=Path("bench/results/auth.json"))
    args = parser.parse_args()
    # The audit line is built and handed to a handler that drops it: its cost is in the numbers.
    audit = logging.getLogger("gateway.audit")
    audit.addHandler(logging.NullHandler())
    audit.propagate = False
    audit.setLevel(logging.INFO)

    with LocalIssuer() as issuer:
        checks = asyncio.run(measure_checks(issuer, args.checks))
        print("  measured the token checks", file=sys.stderr, flush=True)
        qidos: dict[str, dict[str, dict[str, float]]] = {}
        with tempfile.TemporaryDirectory(prefix="bench-auth-") as tmp, OrthancPacs(Path(tmp) / "orthanc") as orthanc:
            orthanc.store(iter_sample_datasets(generate_sample_studies(args.studies)))
            common = ["--upstream", orthanc.upstream, "--log-level", "warning"]
            secured = [*common, "--auth-issuer", issuer.url, "--auth-audience", AUDIENCE]
            token = {"Authorization": f"Bearer {issuer.token(scope=SCOPE, lifetime=3600)}"}
            gateways = {
                "auth off": (harness.start_gateway(common, Path(tmp) / "off.log"), {}),
                "auth on": (harness.start_gateway(secured, Path(tmp) / "on.log"), token),
            }
            try:
                for concurrency in (1, 16):
                    queries = {
                        name: (http_query(f"{root}/studies", headers), process.pid)
                        for name, ((process, root), headers) in gateways.items()
                    }
                    requests = args.requests if concurrency == 1 else args.requests * 2
                    for name, result in measure_interleaved(queries, requests, concurrency).items():
                        qidos.setdefault(name, {})[f"c{concurrency}"] = result
                    print(f"  measured QIDO-RS at concurrency {concurrency}", file=sys.stderr, flush=True)
            finally:
                for (process, _), _ in gateways.values():
                    process.terminate()
                    process.wait(timeout=15)

    lines = [
        f"Token checks with cached keys ({args.checks} each, one core of {os.cpu_count()}):",
        "",
        "| what | mean µs | p50 µs | p99 µs |",
        "| --- | --- | --- | --- |",
    ]
    for name, r in checks.items():
        lines.append(f"| {name} | {r['mean_us']:.0f} | {r['p50_us']:.0f} | {r['p99_us']:.0f} |")
    lines += [
        "",
        "QIDO-RS `/studies?ModalitiesInStudy=CT`, Orthanc upstream, same run:",
        "",
        "| gateway | concurrency | p50 ms | p95 ms | requests/s | gateway CPU ms/request |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for concurrency in ("c1", "c16"):
        for name in qidos:
            r = qidos[name][concurrency]
            cells = [name, concurrency[1:], f"{r['p50_ms']:.2f}", f"{r['p95_ms']:.2f}", f"{r['throughput_rps']:.0f}"]
            lines.append("| " + " | ".join([*cells, f"{r['server_cpu_ms_per_request']:.2f}"]) + " |")
    lines.append("")
    for concurrency in ("c1", "c16"):
        on, off = qidos["auth on"][concurrency], qidos["auth off"][concurrency]
        lines.append(
            f"- concurrency {concurrency[1:]}: p50 auth on / off = {on['p50_ms'] / off['p50_ms']:.3f} "
            f"({on['p50_ms'] - off['p50_ms']:+.2f} ms); gateway CPU per request on - off = "
            f"{on['server_cpu_ms_per_request'] - off['server_cpu_ms_per_request']:+.2f} ms"
        )
    print("\n".join(lines))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"checks": checks, "qido": qidos}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Load benchmark: many clients mixing searches, metadata, frames and retrieves, for a bounded time.

One run, one Orthanc holding the sample studies, the same load twice:

- ``gateway``: the gateway's CLI in its own process, in front of Orthanc's DIMSE port (defaults:
  4 query associations, 4 retrieve associations, ``max_waiting`` 32 per pool);
- ``orthanc``: Orthanc's own DICOMweb plugin on the same data, the native peer.

``--clients`` clients (default 150) run concurrently for ``--seconds`` (default 30) against each,
each picking its next request at random (seeded): a study search, a series search
(``/series?Modality=PT``), a study's metadata, one frame of an instance, or a series retrieve.
A client that gets a 503 waits what its ``Retry-After`` says (as a well-behaved viewer does),
then goes on. Prints requests/s, p50 and p99 latency over all answers and over the 2xx ones,
and the count of each status, as a Markdown table, and writes the raw numbers as JSON. Talks
only to 127.0.0.1 and stops by itself.

    .venv/bin/python bench/load.py [--clients 150] [--seconds 30] [--studies 48] [--out bench/results/load.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import harness
import httpx

from gateway.demo.pacs import OrthancPacs
from gateway.demo.samples import SampleStudy, generate_sample_studies, iter_sample_datasets

# (kind, weight): what a mix of viewers and worklists asks for.
MIX = (("search", 30), ("series-search", 15), ("metadata", 25), ("frame", 20), ("retrieve", 10))


@dataclass
class Results:
    """Every answer of one run: latency (s) and status, by request kind."""

    latencies: list[tuple[str, int, float]] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    wall: float = 0.0

    def summary(self) -> dict[str, Any]:
        every = sorted(latency for _, _, latency in self.latencies)
        ok = sorted(latency for _, status, latency in self.latencies if 200 <= status < 300)
        return {
            "requests": len(every),
            "requests_per_s": len(every) / self.wall,
            "ok_per_s": len(ok) / self.wall,
            "p50_s": percentile(every, 50),
            "p99_s": percentile(every, 99),
            "ok_p50_s": percentile(ok, 50),
            "ok_p99_s": percentile(ok, 99),
            "max_s": every[-1] if every else float("nan"),
            "statuses": dict(sorted(Counter(str(status) for _, status, _ in self.latencies).items())),
            "by_kind": {
                kind: {
                    "requests": len(values),
                    "p50_s": percentile(values, 50),
                    "p99_s": percentile(values, 99),
                }
                for kind in dict(MIX)
                if (values := sorted(lat for k, _, lat in self.latencies if k == kind))
            },
            "client_errors": dict(self.errors),
        }


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    return values[min(len(values) - 1, max(0, round(p / 100 * len(values)) - 1))]


def request_for(kind: str, studies: list[SampleStudy], rng: random.Random) -> tuple[str, dict[str, str]]:
    """The path (below the DICOMweb root) and headers of one request of `kind`."""
    study = rng.choice(studies)
    series = rng.choice(study.series)
    if kind == "search":
        return f"/studies?ModalitiesInStudy={series.modality}&limit=25", {"Accept": "application/dicom+json"}
    if kind == "series-search":
        return "/series?Modality=PT", {"Accept": "application/dicom+json"}
    if kind == "metadata":
        return f"/studies/{study.study_uid}/metadata", {"Accept": "application/dicom+json"}
    if kind == "frame":
        imaging = [s for st in studies for s in st.series if s.modality in ("CT", "MR", "PT")]
        series = rng.choice(imaging)
        study = next(st for st in studies if series in st.series)
        instance = series.instance_uid(rng.randint(1, series.instance_count))
        path = f"/studies/{study.study_uid}/series/{series.series_uid}/instances/{instance}/frames/1"
        return path, {"Accept": 'multipart/related; type="application/octet-stream"; transfer-syntax=*'}
    return f"/studies/{study.study_uid}/series/{series.series_uid}", {
        "Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'
    }


async def client(
    number: int, root: str, studies: list[SampleStudy], deadline: float, http: httpx.AsyncClient, results: Results
) -> None:
    rng = random.Random(number)
    kinds, weights = zip(*MIX, strict=True)
    while time.monotonic() < deadline:
        kind = rng.choices(kinds, weights)[0]
        path, headers = request_for(kind, studies, rng)
        started = time.monotonic()
        try:
            response = await http.get(root + path, headers=headers)
        except httpx.HTTPError as exc:
            results.errors[type(exc).__name__] += 1
            continue
        results.latencies.append((kind, response.status_code, time.monotonic() - started))
        if response.status_code == 503:
            await asyncio.sleep(min(float(response.headers.get("Retry-After", "1")), 5.0))


async def run(root: str, studies: list[SampleStudy], clients: int, seconds: float) -> Results:
    results = Results()
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(timeout=120, limits=limits) as http:
        started = time.monotonic()
        deadline = started + seconds
        await asyncio.gather(*(client(n, root, studies, deadline, http, results) for n in range(clients)))
        results.wall = time.monotonic() - started
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=150)
    parser.add_argument("--seconds", type=float, default=30.0, help="how long each target is loaded")
    parser.add_argument("--studies", type=int, default=48)
    parser.add_argument("--out", type=Path, default=Path("bench/results/load.json"))
    parser.add_argument("--gateway-only", action="store_true", help="skip Orthanc's own DICOMweb")
    args = parser.parse_args()

    studies = generate_sample_studies(args.studies)
    summaries: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-load-") as tmp, OrthancPacs(Path(tmp) / "orthanc") as orthanc:
        orthanc.store(iter_sample_datasets(studies))
        gateway, root = harness.start_gateway(
            ["--upstream", orthanc.upstream, "--log-level", "error"], Path(tmp) / "gateway.log"
        )
        try:
            targets = [("gateway", root)] + ([] if args.gateway_only else [("orthanc", orthanc.dicomweb_url)])
            for name, url in targets:
                results = asyncio.run(run(url, studies, args.clients, args.seconds))
                summaries[name] = results.summary()
                print(f"  loaded {name} for {results.wall:.0f} s", file=sys.stderr, flush=True)
        finally:
            gateway.terminate()
            gateway.wait(timeout=30)

    lines = [
        f"{args.clients} clients for {args.seconds:.0f} s each, {args.studies} studies in Orthanc, "
        f"{os.cpu_count()} cores, loopback:",
        "",
        "| target | requests/s | 2xx/s | p50 s | p99 s | 2xx p50 s | 2xx p99 s | max s | statuses |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, s in summaries.items():
        statuses = ", ".join(f"{count}x {status}" for status, count in s["statuses"].items())
        cells = [name, f"{s['requests_per_s']:.0f}", f"{s['ok_per_s']:.0f}"]
        cells += [f"{s[key]:.2f}" for key in ("p50_s", "p99_s", "ok_p50_s", "ok_p99_s", "max_s")]
        lines.append("| " + " | ".join([*cells, statuses]) + " |")
    lines += ["", "| target | kind | requests | p50 s | p99 s |", "| --- | --- | --- | --- | --- |"]
    for name, s in summaries.items():
        for kind, k in s["by_kind"].items():
            lines.append(f"| {name} | {kind} | {k['requests']} | {k['p50_s']:.2f} | {k['p99_s']:.2f} |")
    gateway_s, orthanc_s = summaries["gateway"], summaries.get("orthanc")
    if orthanc_s is not None:
        lines.append("")
        lines.append(
            f"- gateway / Orthanc DICOMweb: requests/s {gateway_s['ok_per_s'] / orthanc_s['ok_per_s']:.2f} (2xx), "
            f"p99 {gateway_s['p99_s'] / orthanc_s['p99_s']:.2f}"
        )
    print("\n".join(lines))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summaries, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

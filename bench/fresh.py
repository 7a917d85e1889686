"""Fresh-aggregates benchmark: what deriving ModalitiesInStudy and the counts costs (requirement G5).

One run, two PACS holding the same sample studies, two questions each: "studies with a PT
series" (``/studies?ModalitiesInStudy=PT``) and the default study list (``/studies``), each with
the default return attributes (ModalitiesInStudy, NumberOfStudyRelatedSeries/Instances):

- in front of Orthanc: the gateway on the fresh path (``profile = "orthanc"`` with
  ``trusted_aggregates = false``: derived from SERIES and IMAGE C-FINDs by UID lists), the gateway
  on the trusted path (``profile = "orthanc"``: Orthanc's own values), and Orthanc's native
  QIDO-RS (the bar: the fresh path's p50 within 2x of it);
- in front of dcmqrscp (hierarchical, no aggregates of its own): the gateway, whose only path is
  the fresh one.

For each, the C-FINDs one request runs, by level, counted by running the same search in this
process on a client that counts them. Prints a Markdown table and writes the raw numbers as JSON.
Talks only to 127.0.0.1 and stops by itself.

    .venv/bin/python bench/fresh.py [--studies 48] [--requests 100] [--no-dcmqrscp] [--out bench/results/fresh.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import anyio
import harness
from qido import http_query, measure

from gateway.demo.pacs import DcmqrscpPacs, LocalPacs, OrthancPacs
from gateway.demo.samples import generate_sample_studies, iter_sample_datasets
from gateway.query.attributes import QueryLevel
from gateway.query.params import parse_qido_query
from gateway.search.engine import Searcher, plan_search
from gateway.settings import Capabilities, load_settings

QUERIES = {"ModalitiesInStudy=PT": {"ModalitiesInStudy": "PT"}, "default list": {}}


def c_finds(pacs: LocalPacs, profile: str, trusted: bool | None, params: dict[str, str]) -> dict[str, int]:
    """The C-FINDs the gateway's search for `params` runs, by level (the same code the route runs)."""
    settings = load_settings(None, upstream=pacs.upstream)
    upstream = replace(
        settings.default_upstream, profile=profile, capabilities=Capabilities(trusted_aggregates=trusted)
    )
    caps = upstream.configured_capabilities

    async def run() -> dict[str, int]:
        async with harness.CountingClient(upstream, "BENCH") as client:
            query = parse_qido_query(QueryLevel.STUDY, list(params.items()))
            searcher = Searcher(client, caps, plan_search(query, caps), settings.fanout_concurrency)
            async for _ in searcher.search(query):
                pass
            return dict(client.finds)

    return anyio.run(run)


def start_gateway(
    pacs: LocalPacs, workdir: Path, name: str, profile: str, trusted: bool | None
) -> tuple[subprocess.Popen[bytes], str]:
    flags = {} if trusted is None else {"trusted_aggregates": trusted}
    config = harness.upstream_config(pacs, workdir / f"gateway-{name}.toml", profile, **flags)
    return harness.start_gateway(["--config", str(config)], workdir / f"gateway-{name}.log")


def bench_pacs(
    pacs: LocalPacs, workdir: Path, variants: dict[str, tuple[str, bool | None]], requests: int
) -> dict[str, dict[str, dict[str, object]]]:
    """For each gateway variant (name -> profile, trusted_aggregates) and each query: p50, p95, C-FINDs."""
    results: dict[str, dict[str, dict[str, object]]] = {}
    for name, (profile, trusted) in variants.items():
        gateway, root = start_gateway(pacs, workdir, name, profile, trusted)
        try:
            for label, params in QUERIES.items():
                numbers: dict[str, object] = dict(measure(http_query(f"{root}/studies", params), requests, 1))
                numbers["c_finds"] = c_finds(pacs, profile, trusted, params)
                results.setdefault(name, {})[label] = numbers
                print(f"  measured {name} {label}", file=sys.stderr, flush=True)
        finally:
            gateway.terminate()
            gateway.wait(timeout=15)
    if isinstance(pacs, OrthancPacs):
        for label, params in QUERIES.items():
            numbers = dict(measure(http_query(f"{pacs.dicomweb_url}/studies", params), requests, 1))
            results.setdefault("Orthanc QIDO-RS", {})[label] = numbers
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--studies", type=int, default=48)
    parser.add_argument("--requests", type=int, default=100, help="requests per method and query")
    parser.add_argument("--out", type=Path, default=Path("bench/results/fresh.json"))
    parser.add_argument("--no-dcmqrscp", dest="dcmqrscp", action="store_false", help="in front of Orthanc only")
    args = parser.parse_args()
    studies = generate_sample_studies(args.studies)

    results: dict[str, dict[str, dict[str, dict[str, object]]]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-fresh-") as tmp:
        workdir = Path(tmp)
        with OrthancPacs(workdir / "orthanc") as orthanc:
            orthanc.store(iter_sample_datasets(studies))
            variants = {"gateway fresh": ("orthanc", False), "gateway trusted": ("orthanc", None)}
            results["Orthanc"] = bench_pacs(orthanc, workdir, variants, args.requests)
        if args.dcmqrscp:
            with DcmqrscpPacs(workdir / "dcmqrscp") as dcmqrscp:
                dcmqrscp.store(iter_sample_datasets(studies))
                variants = {"gateway fresh": ("dcmqrscp", None)}
                results["dcmqrscp"] = bench_pacs(dcmqrscp, workdir, variants, args.requests)

    lines = [
        f"Fresh vs trusted aggregates, {args.studies} sample studies, concurrency 1, {os.cpu_count()} cores, loopback:",
        "",
        "| PACS | query | method | answers | p50 ms | p95 ms | C-FINDs (STUDY/SERIES/IMAGE) |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for pacs_name, by_method in results.items():
        for label in QUERIES:
            for method, by_query in by_method.items():
                r = by_query[label]
                finds = r.get("c_finds")
                counted = (
                    ""
                    if not isinstance(finds, dict)
                    else "/".join(str(finds.get(level, 0)) for level in ("STUDY", "SERIES", "IMAGE"))
                )
                cells = [pacs_name, label, method, f"{r['matches']:.0f}", f"{r['p50_ms']:.1f}", f"{r['p95_ms']:.1f}"]
                lines.append("| " + " | ".join([*cells, counted]) + " |")
    lines.append("")
    orthanc = results["Orthanc"]
    for label in QUERIES:
        native = float(orthanc["Orthanc QIDO-RS"][label]["p50_ms"])  # type: ignore[arg-type]
        fresh = float(orthanc["gateway fresh"][label]["p50_ms"])  # type: ignore[arg-type]
        trusted = float(orthanc["gateway trusted"][label]["p50_ms"])  # type: ignore[arg-type]
        lines.append(
            f"- {label}, Orthanc: fresh p50 / native QIDO-RS p50 = {fresh / native:.2f} (target: within 2x); "
            f"trusted / native = {trusted / native:.2f}; fresh / trusted = {fresh / trusted:.2f}"
        )
    print("\n".join(lines))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

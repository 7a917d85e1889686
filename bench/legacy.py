"""Legacy study-list benchmark: QIDO-RS in front of hierarchical PACS, with fresh aggregates.

One run, for each of dcmqrscp (dcmtk) and pynetdicom's qrscp (the demo's PACS), both holding the
same sample studies:

- ``gateway``: the gateway's CLI in its own process, ``profile = "auto"`` (as a new user and the
  demo run it: it probes the PACS, never trusts a PACS's aggregates), asked OHIF's study-list
  query and the demo's example searches (``dicomweb-gateway demo`` prints them);
- ``bare SERIES C-FIND per study``: the bar the issue set: one SERIES C-FIND per study, one after
  the other, on one association whose socket is tuned like the gateway's (``TCP_NODELAY`` and
  ``TCP_QUICKACK``, :mod:`gateway.dimse.sockets`), the study UIDs known beforehand; one sample is
  the whole pass over every study. Each C-FIND first parks pynetdicom's reactor as the gateway
  does (:func:`gateway.dimse.client.pause_reactor`): without it, at this speed, pynetdicom now
  and then takes an answer for a stray message and drops it (seen: 97 series instead of 98).

For each query: p50 and p95 latency (concurrency 1, after warm-up requests), the number of
answers, and the C-FINDs one request runs by level, counted by running the same search in this
process on a client that counts them (the same code the route runs, the same probed
capabilities). Prints a Markdown table and writes the raw numbers as JSON. Talks only to
127.0.0.1 and stops by itself.

    .venv/bin/python bench/legacy.py [--studies 48] [--requests 40] [--out bench/results/legacy.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import anyio
import harness
from pydicom.dataset import Dataset
from qido import http_query, measure

from gateway.demo.pacs import DcmqrscpPacs, LocalPacs, QrscpPacs
from gateway.demo.samples import SampleStudy, generate_sample_studies, iter_sample_datasets
from gateway.dimse import sockets
from gateway.dimse.client import FIND_MODEL, pause_reactor
from gateway.dimse.sockets import SocketProfile, TunedAE
from gateway.query.attributes import QueryLevel
from gateway.query.params import parse_qido_query
from gateway.search.capabilities import CapabilityTracker
from gateway.search.engine import Searcher, plan_search
from gateway.settings import load_settings

OHIF = "OHIF study list"
BARE = "bare SERIES C-FIND per study"


def queries(studies: list[SampleStudy]) -> dict[str, tuple[QueryLevel, str, dict[str, str]]]:
    """Label -> (level, path under the DICOMweb root, parameters): OHIF's list and the demo's searches."""
    study = studies[0].study_uid
    return {
        OHIF: (
            QueryLevel.STUDY,
            "/studies",
            {"limit": "101", "offset": "0", "fuzzymatching": "false", "includefield": "00081030,00080060"},
        ),
        "studies?limit=5": (QueryLevel.STUDY, "/studies", {"limit": "5"}),
        "studies?ModalitiesInStudy=CT,PT": (QueryLevel.STUDY, "/studies", {"ModalitiesInStudy": "CT,PT"}),
        "series?Modality=PT": (QueryLevel.SERIES, "/series", {"Modality": "PT"}),
        "studies?PatientName=doe*": (
            QueryLevel.STUDY,
            "/studies",
            {"PatientName": "doe*", "includefield": "StudyDescription"},
        ),
        "studies/{uid}/series": (QueryLevel.SERIES, f"/studies/{study}/series", {}),
        "studies/{uid}/instances": (QueryLevel.IMAGE, f"/studies/{study}/instances", {}),
    }


def c_finds(pacs: LocalPacs, level: QueryLevel, path: str, params: dict[str, str]) -> dict[str, int]:
    """The C-FINDs the gateway's search runs for one request, by level (after its capability probe)."""
    settings = load_settings(None, upstream=pacs.upstream)
    upstream = replace(settings.default_upstream, profile="auto")
    parts = path.strip("/").split("/")
    scope = {"study_uid": parts[1]} if len(parts) > 2 else {}

    async def run() -> dict[str, int]:
        async with harness.CountingClient(upstream, "BENCH") as client:
            caps = await CapabilityTracker(upstream).get(client)
            client.finds.clear()
            query = parse_qido_query(level, list(params.items()), **scope)
            searcher = Searcher(client, caps, plan_search(query, caps), settings.fanout_concurrency)
            async for _ in searcher.search(query):
                pass
            return dict(client.finds)

    return anyio.run(run)


def series_per_study(pacs: LocalPacs, study_uids: list[str]) -> Callable[[], int]:
    """One pass of SERIES C-FINDs, one study after the other, on one tuned association; returns
    the number of series found."""
    ae = TunedAE(ae_title="BENCH", socket_profile=SocketProfile.INTERACTIVE)
    ae.add_requested_context(FIND_MODEL)
    assoc = ae.associate(pacs.host, pacs.port, ae_title=pacs.ae_title)
    if not assoc.is_established:
        raise RuntimeError("association failed")

    def one_pass() -> int:
        found = 0
        for uid in study_uids:
            identifier = Dataset()
            identifier.QueryRetrieveLevel = "SERIES"
            identifier.StudyInstanceUID = uid
            identifier.SeriesInstanceUID = ""
            identifier.Modality = ""
            pause_reactor(assoc)  # as the gateway does: else pynetdicom may drop the first answer
            for status, _ in assoc.send_c_find(identifier, FIND_MODEL):
                if not status:
                    raise RuntimeError("C-FIND failed")
                found += status.Status in (0xFF00, 0xFF01)
        return found

    one_pass.assoc = assoc  # type: ignore[attr-defined]
    return one_pass


def bench_pacs(
    pacs: LocalPacs, studies: list[SampleStudy], workdir: Path, requests: int
) -> dict[str, dict[str, object]]:
    results: dict[str, dict[str, object]] = {}
    config = harness.upstream_config(pacs, workdir / f"gateway-{pacs.kind}.toml", "auto")
    gateway, root = harness.start_gateway(["--config", str(config)], workdir / f"gateway-{pacs.kind}.log")
    try:
        for label, (level, path, params) in queries(studies).items():
            numbers: dict[str, object] = dict(measure(http_query(f"{root}{path}", params), requests, 1, gateway.pid))
            numbers["c_finds"] = c_finds(pacs, level, path, params)
            results[label] = numbers
            print(f"  {pacs.kind}: {label}: p50 {numbers['p50_ms']:.1f} ms", file=sys.stderr, flush=True)
    finally:
        gateway.terminate()
        gateway.wait(timeout=15)
    bare = series_per_study(pacs, [s.study_uid for s in studies])
    try:
        numbers = dict(measure(bare, requests, 1))
        numbers["c_finds"] = {"SERIES": len(studies)}
        results[BARE] = numbers
    finally:
        bare.assoc.release()  # type: ignore[attr-defined]
    return results


def report(results: dict[str, dict[str, dict[str, object]]], studies: int) -> str:
    lines = [
        f"Legacy PACS, {studies} sample studies, concurrency 1, {os.cpu_count()} cores, loopback, "
        'gateway `profile = "auto"` (fresh aggregates):',
        "",
        "| PACS | query | answers | p50 ms | p95 ms | gateway CPU ms/request | C-FINDs (STUDY/SERIES/IMAGE) |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for pacs_name, by_query in results.items():
        for label, r in by_query.items():
            finds = r["c_finds"]
            assert isinstance(finds, dict)
            counted = "/".join(str(finds.get(level, 0)) for level in ("STUDY", "SERIES", "IMAGE"))
            cpu = float(r["server_cpu_ms_per_request"])  # type: ignore[arg-type]
            cells = [
                pacs_name,
                label,
                f"{r['matches']:.0f}",
                f"{r['p50_ms']:.1f}",
                f"{r['p95_ms']:.1f}",
                "" if cpu != cpu else f"{cpu:.1f}",  # NaN for the bare baseline
                counted,
            ]
            lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    for pacs_name, by_query in results.items():
        ohif = float(by_query[OHIF]["p50_ms"])  # type: ignore[arg-type]
        bare = float(by_query[BARE]["p50_ms"])  # type: ignore[arg-type]
        demo = [float(r["p50_ms"]) for label, r in by_query.items() if label not in (OHIF, BARE)]  # type: ignore[arg-type]
        lines.append(
            f"- {pacs_name}: OHIF study list p50 / bare sequential SERIES C-FIND per study p50 = {ohif / bare:.2f} "
            f"(target: at most 1.00); the demo's searches' p50s: median {statistics.median(demo):.0f} ms, "
            f"highest {max(demo):.0f} ms (target: under 300 ms each)"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--studies", type=int, default=48)
    parser.add_argument("--requests", type=int, default=40, help="requests per query")
    parser.add_argument("--out", type=Path, default=Path("bench/results/legacy.json"))
    args = parser.parse_args()
    sockets.install()  # the baseline's association and the counting client's, tuned as the gateway's
    studies = generate_sample_studies(args.studies)
    results: dict[str, dict[str, dict[str, object]]] = {}
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-legacy-") as tmp:
        workdir = Path(tmp)
        for name, kind in (("dcmqrscp", DcmqrscpPacs), ("qrscp", QrscpPacs)):
            with kind(workdir / name) as pacs:
                pacs.store(iter_sample_datasets(studies))
                results[name] = bench_pacs(pacs, studies, workdir, args.requests)
    print(report(results, args.studies))
    print(f"\n({time.monotonic() - started:.0f} s)", file=sys.stderr)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

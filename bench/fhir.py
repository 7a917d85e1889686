"""FHIR benchmark: ImagingStudy read and search through the gateway, next to the C-FINDs they need.

For each of Orthanc (relational C-FIND) and dcmqrscp (hierarchical only), loaded with the sample
studies, two requests to the gateway's CLI in its own process:

- ``read``: ``GET /fhir/ImagingStudy/{uid}`` of a study with two series (every instance listed);
- ``search``: ``GET /fhir/ImagingStudy?modality=CT&_count=50`` (a page of 50 studies with their
  series and counts).

Next to each, ``bare C-FINDs``: the same C-FINDs the gateway sends for that answer (the number it
reports in ``X-Gateway-C-Finds``), issued in this process with the same client the gateway uses
(:class:`gateway.dimse.client.UpstreamClient`: pooled associations, tuned sockets) in the same
order and with the same concurrency, and nothing else: no HTTP, no FHIR. The ratio is what the
FHIR layer costs on top of the PACS's own answers. Target: read p50 within 1.5x of its C-FINDs'.

    .venv/bin/python bench/fhir.py [--studies 120] [--requests 50] [--out bench/results/fhir.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from contextlib import aclosing
from pathlib import Path

import anyio
import harness
import httpx
from pydicom.dataset import Dataset

from gateway.demo.pacs import DcmqrscpPacs, LocalPacs, OrthancPacs
from gateway.demo.samples import generate_sample_studies, iter_sample_datasets
from gateway.dimse import sockets
from gateway.dimse.client import UpstreamClient
from gateway.fhir.finds import FindCounter, find_unique, gather_bounded, key, run_concurrently, uid_key
from gateway.fhir.study import COUNT_RETURN_KEYS, IMAGE_RETURN_KEYS, SERIES_RETURN_KEYS, STUDY_RETURN_KEYS
from gateway.fhir.values import text
from gateway.query.attributes import QueryLevel
from gateway.query.params import MatchKey
from gateway.settings import UpstreamSettings

PAGE = 50
SEARCH = {"modality": "CT", "_count": str(PAGE)}


async def collect(
    client: UpstreamClient,
    level: QueryLevel,
    keys: list[MatchKey],
    returns: tuple[str, ...],
    counter: FindCounter,
    limit: int | None = None,
) -> list[Dataset]:
    """The answers of one C-FIND; with `limit`, cancelled after that many, as the gateway does."""
    answers: list[Dataset] = []
    async with aclosing(find_unique(client, level, keys, returns, counter)) as found:  # type: ignore[type-var]
        async for dataset in found:
            answers.append(dataset)
            if limit is not None and len(answers) >= limit:
                break
    return answers


async def bare_read(client: UpstreamClient, study_uid: str, relational: bool, counter: FindCounter) -> None:
    """The C-FINDs of a read: STUDY beside SERIES and IMAGE (one over the study, or one per series)."""
    study = [uid_key("StudyInstanceUID", [study_uid])]
    series: list[Dataset] = []

    async def study_level() -> None:
        await collect(client, QueryLevel.STUDY, study, STUDY_RETURN_KEYS, counter)

    async def series_level() -> None:
        series.extend(await collect(client, QueryLevel.SERIES, study, SERIES_RETURN_KEYS, counter))

    async def image_level() -> None:
        await collect(client, QueryLevel.IMAGE, study, IMAGE_RETURN_KEYS, counter)

    if relational:
        await run_concurrently(study_level, series_level, image_level)
        return

    async def lower() -> None:
        await series_level()

        async def images_of(dataset: Dataset) -> None:
            keys = [*study, uid_key("SeriesInstanceUID", [text(dataset, "SeriesInstanceUID")])]
            await collect(client, QueryLevel.IMAGE, keys, IMAGE_RETURN_KEYS, counter)

        await gather_bounded(series, images_of, client.settings.max_associations)

    await run_concurrently(study_level, lower)


async def bare_search(client: UpstreamClient, relational: bool, counter: FindCounter) -> None:
    """The C-FINDs of ``modality=CT&_count=50``, as the gateway's plan sends them."""
    concurrency = client.settings.max_associations
    series_keys = ("StudyInstanceUID", "SeriesInstanceUID", "Modality")
    if relational:
        with_ct = await collect(client, QueryLevel.SERIES, [key("Modality", ["CT"])], series_keys, counter)
        uids = sorted({text(ds, "StudyInstanceUID") for ds in with_ct})
        study_keys = [uid_key("StudyInstanceUID", uids)]
        studies = await collect(client, QueryLevel.STUDY, study_keys, STUDY_RETURN_KEYS, counter, PAGE + 1)
        page = [uid_key("StudyInstanceUID", [text(ds, "StudyInstanceUID") for ds in studies[:PAGE]])]

        async def page_series() -> None:
            await collect(client, QueryLevel.SERIES, page, SERIES_RETURN_KEYS, counter)

        async def page_images() -> None:
            await collect(client, QueryLevel.IMAGE, page, COUNT_RETURN_KEYS, counter)

        await run_concurrently(page_series, page_images)
        return

    studies = await collect(client, QueryLevel.STUDY, [], STUDY_RETURN_KEYS, counter)

    async def series_of(uid: str) -> list[Dataset]:
        keys = [uid_key("StudyInstanceUID", [uid])]
        return await collect(client, QueryLevel.SERIES, keys, SERIES_RETURN_KEYS, counter)

    matching: list[tuple[str, list[Dataset]]] = []
    for start in range(0, len(studies), concurrency):
        batch = [text(ds, "StudyInstanceUID") for ds in studies[start : start + concurrency]]
        answers = await gather_bounded(batch, series_of, concurrency)
        matching += [
            (uid, series) for uid, series in zip(batch, answers, strict=True) if any(s.Modality == "CT" for s in series)
        ]
        if len(matching) > PAGE:
            break
    # The series of the page's studies are those the check fetched: the gateway keeps them too.
    pairs = [(uid, text(s, "SeriesInstanceUID")) for uid, series in matching[:PAGE] for s in series]

    async def images_of(pair: tuple[str, str]) -> None:
        keys = [uid_key("StudyInstanceUID", [pair[0]]), uid_key("SeriesInstanceUID", [pair[1]])]
        await collect(client, QueryLevel.IMAGE, keys, COUNT_RETURN_KEYS, counter)

    await gather_bounded(pairs, images_of, concurrency)


def p50(timings: list[float]) -> float:
    return statistics.median(timings) * 1000


async def interleaved(
    http: httpx.AsyncClient,
    url: str,
    params: dict[str, str],
    bare: Callable[[FindCounter], Awaitable[None]],
    requests: int,
) -> dict[str, float]:
    """Time the gateway's answer and the bare C-FINDs alternately, so that both see the same load."""
    gateway: list[float] = []
    direct: list[float] = []
    response: httpx.Response | None = None
    counter = FindCounter()
    for round_number in range(requests + 5):
        started = time.perf_counter()
        response = await http.get(url, params=params)
        elapsed = time.perf_counter() - started
        response.raise_for_status()
        counter = FindCounter()
        started = time.perf_counter()
        await bare(counter)
        if round_number >= 5:  # the first rounds warm up both (pools, probe, caches)
            gateway.append(elapsed)
            direct.append(time.perf_counter() - started)
    assert response is not None
    body = response.json()
    size = len(body.get("entry", [])) if body["resourceType"] == "Bundle" else len(body.get("series", []))
    return {
        "gateway_p50_ms": p50(gateway),
        "c_finds": int(response.headers["X-Gateway-C-Finds"]),
        "bare_p50_ms": p50(direct),
        "bare_c_finds": counter.count,
        "size": size,
    }


def measure(kind: str, pacs: LocalPacs, study_uid: str, requests: int, workdir: Path) -> dict[str, dict[str, float]]:
    gateway, root = harness.start_gateway(["--upstream", pacs.upstream, "--log-level", "warning"], workdir / "gw.log")
    base = root.removesuffix("/dicom-web") + "/fhir"
    relational = kind == "orthanc"

    async def run() -> dict[str, dict[str, float]]:
        settings = UpstreamSettings("bench", pacs.ae_title, pacs.host, pacs.port)
        async with UpstreamClient(settings, "BENCH") as client, httpx.AsyncClient(timeout=60) as http:
            read = await interleaved(
                http,
                f"{base}/ImagingStudy/{study_uid}",
                {},
                lambda counter: bare_read(client, study_uid, relational, counter),
                requests,
            )
            search = await interleaved(
                http, f"{base}/ImagingStudy", SEARCH, lambda counter: bare_search(client, relational, counter), requests
            )
        return {"read": read, "search": search}

    try:
        return anyio.run(run)
    finally:
        gateway.terminate()
        gateway.wait(timeout=15)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--studies", type=int, default=120)
    parser.add_argument("--requests", type=int, default=50, help="timed requests per measurement")
    parser.add_argument("--out", type=Path, default=Path("bench/results/fhir.json"))
    args = parser.parse_args()
    sockets.install()

    studies = generate_sample_studies(args.studies)
    two_series = next(s for s in studies if len(s.series) == 2 and len(s.modalities) == 2)
    results: dict[str, dict[str, dict[str, float]]] = {}
    for kind, factory in (("orthanc", OrthancPacs), ("dcmqrscp", DcmqrscpPacs)):
        with tempfile.TemporaryDirectory(prefix=f"bench-fhir-{kind}-") as tmp, factory(Path(tmp) / "pacs") as pacs:
            pacs.store(iter_sample_datasets(studies))
            print(f"  loaded {kind}", file=sys.stderr, flush=True)
            results[kind] = measure(kind, pacs, two_series.study_uid, args.requests, Path(tmp))

    ct_studies = sum("CT" in s.modalities for s in studies)
    lines = [
        f"FHIR through the gateway ({args.studies} sample studies, {ct_studies} with a CT series; read: "
        f"{two_series.modalities[0]}+{two_series.modalities[1]} study of {two_series.instance_count} instances; "
        f"search: `modality=CT&_count={PAGE}`), {os.cpu_count()} cores, loopback, p50 of {args.requests}:",
        "",
        "| PACS | request | gateway p50 ms | C-FINDs | bare C-FINDs p50 ms | gateway / bare |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for kind, measured in results.items():
        for request, r in measured.items():
            if r["c_finds"] != r["bare_c_finds"]:
                print(
                    f"  {kind} {request}: {r['c_finds']} C-FINDs through the gateway, {r['bare_c_finds']} bare",
                    file=sys.stderr,
                )
            cells = [
                kind,
                request,
                f"{r['gateway_p50_ms']:.1f}",
                f"{r['c_finds']:.0f}",
                f"{r['bare_p50_ms']:.1f}",
                f"{r['gateway_p50_ms'] / r['bare_p50_ms']:.2f}",
            ]
            lines.append("| " + " | ".join(cells) + " |")
    print("\n".join(lines))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

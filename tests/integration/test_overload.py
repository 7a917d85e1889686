"""Overload against the in-process fake PACS: 503 with Retry-After early, never a 500 or a long wait."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import httpx

from tests.fakepacs import FakePacs
from tests.integration.test_faults import INSTANCES, gateway


def test_a_fan_out_under_load_is_answered_200_or_an_early_503() -> None:
    """`/series?Modality=PT` on a hierarchical PACS fans out C-FINDs; with 2 associations and 4 waiters
    most of 24 concurrent requests must be turned away at once, as one 503, not an exception group."""
    with (
        FakePacs(INSTANCES, delay=0.02) as pacs,
        gateway(pacs, max_associations=2, max_waiting=4, acquire_timeout=20) as root,
    ):

        def search(_: int) -> tuple[int, float, str | None]:
            started = time.monotonic()
            response = httpx.get(f"{root}/series?Modality=PT", timeout=60)
            return response.status_code, time.monotonic() - started, response.headers.get("Retry-After")

        with ThreadPoolExecutor(24) as clients:
            answers = list(clients.map(search, range(24)))
        health = httpx.get(f"{root.rsplit('/', 1)[0]}/health", timeout=10).json()
        after = httpx.get(f"{root}/series?Modality=PT", timeout=30)
    statuses = [status for status, _, _ in answers]
    assert set(statuses) <= {200, 503}, statuses
    assert 503 in statuses and 200 in statuses
    assert all(retry == "1" for status, _, retry in answers if status == 503)
    turned_away = [elapsed for status, elapsed, _ in answers if status == 503]
    assert min(turned_away) < 5  # early, not after acquire_timeout (20 s)
    query_pool = next(p for p in health["pools"] if p["kind"] == "query")
    assert query_pool["turned_away"] >= 1 and query_pool["waiting"] == 0
    assert after.status_code == 200 and len(after.json()) == 8  # one PT series per study, recovered

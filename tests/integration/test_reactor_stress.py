"""Thousands of C-FINDs, with cancels, over one long-lived pool: no request is ever left waiting.

Every operation first parks the association's reactor thread (pynetdicom's DIMSE messages are
taken off one queue, by the reactor or by the operation). A pause that loses a race with the
reactor leaves it parked with nobody to wake it, and the operation spinning in pynetdicom's
``send_*`` for ever: the request never ends and its association and worker are gone for good.
A thread switch interval of 1 µs makes the scheduler interleave the reactor and the operation at
every few bytecodes, so such a race shows within a few hundred operations instead of once in
tens of thousands.
"""

from __future__ import annotations

import sys
import time
from dataclasses import replace

import anyio
import pytest
from pydicom.dataset import Dataset

from gateway.dimse import sockets
from gateway.dimse.client import UpstreamClient
from gateway.settings import load_settings
from tests.fakepacs import FakePacs
from tests.integration.test_faults import INSTANCES

pytestmark = pytest.mark.anyio

OPERATIONS = 2000
CONCURRENCY = 4
REQUEST_TIMEOUT = 10.0  # seconds; an answered C-FIND of 8 studies takes milliseconds, even slowed down
RUN_BUDGET = 45.0  # seconds for all of them, well inside the test's own bound


def study_query() -> Dataset:
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "STUDY"
    identifier.StudyInstanceUID = ""
    identifier.PatientID = ""
    return identifier


async def test_thousands_of_finds_with_cancels_leave_no_request_waiting() -> None:
    sockets.install()
    stuck: list[int] = []
    done = 0
    with FakePacs(INSTANCES, delay=0.001) as pacs:  # a C-CANCEL arrives before the last result
        upstream = load_settings(None, upstream=pacs.upstream).default_upstream
        settings = replace(upstream, max_associations=CONCURRENCY, dimse_timeout=5.0, acquire_timeout=REQUEST_TIMEOUT)
        interval = sys.getswitchinterval()
        sys.setswitchinterval(1e-6)
        try:
            async with UpstreamClient(settings, "GATEWAY") as client:

                async def one(number: int) -> None:
                    nonlocal done
                    # Every third one stops after its first result: the rest is cancelled upstream.
                    wanted = 1 if number % 3 == 0 else len(INSTANCES)
                    with anyio.move_on_after(REQUEST_TIMEOUT) as scope:
                        results = client.find(study_query())
                        try:
                            async for _ in results:
                                wanted -= 1
                                if wanted == 0:
                                    break
                        finally:
                            await results.aclose()
                    if scope.cancelled_caught:
                        stuck.append(number)
                    else:
                        done += 1

                started = time.monotonic()
                slots = anyio.Semaphore(CONCURRENCY)
                async with anyio.create_task_group() as tasks:
                    for number in range(OPERATIONS):
                        if stuck or time.monotonic() - started > RUN_BUDGET:
                            break
                        await slots.acquire()

                        async def run(number: int = number) -> None:
                            try:
                                await one(number)
                            finally:
                                slots.release()

                        tasks.start_soon(run)
        finally:
            sys.setswitchinterval(interval)
    assert not stuck, f"requests {stuck} were left waiting (after {done} completed)"
    assert done > 0 and pacs.cancels > 0

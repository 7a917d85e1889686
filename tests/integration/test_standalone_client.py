"""The DIMSE clients outside the application: a fresh process, as the ``publish`` command and the benchmarks use them.

The application installs the gateway's socket class when it is built; a client made without it
(``dicomweb-gateway publish`` builds its own upstreams) must work all the same.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import pytest

from tests.fakepacs import FakePacs
from tests.integration.test_faults import INSTANCES

SEARCH = """
import sys
import anyio
from pydicom.dataset import Dataset
from gateway.dimse.client import UpstreamClient
from gateway.settings import load_settings

async def main() -> None:
    upstream = load_settings(None, upstream=sys.argv[1]).default_upstream
    async with UpstreamClient(upstream, "GATEWAY") as client:
        for _ in range(3):  # the association is paused and reused between C-FINDs
            query = Dataset()
            query.QueryRetrieveLevel = "STUDY"
            query.StudyInstanceUID = ""
            print(len([answer async for answer in client.find(query)]))

anyio.run(main)
"""


@pytest.fixture(scope="module")
def pacs() -> Iterator[FakePacs]:
    with FakePacs(INSTANCES) as running:
        yield running


def test_a_client_made_outside_the_application_queries_in_a_fresh_process(pacs: FakePacs) -> None:
    done = subprocess.run(
        [sys.executable, "-c", SEARCH, pacs.upstream], capture_output=True, text=True, timeout=60, check=False
    )
    studies = len({str(ds.StudyInstanceUID) for ds in INSTANCES})
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == [str(studies)] * 3

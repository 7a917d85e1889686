"""Whose study is it: the cached, single-flight C-FINDs behind patient-bound WADO-RS and STOW-RS."""

from __future__ import annotations

from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import anyio
import pytest
from pydicom.dataset import Dataset

from gateway.auth.ownership import StudyOwnership
from gateway.errors import Forbidden, NotFound
from gateway.retrieve.service import Target

pytestmark = pytest.mark.anyio

# study -> (PatientID, {series: [instances]})
ARCHIVE = {
    "1.1": ("P1", {"1.1.1": ["1.1.1.1", "1.1.1.2"]}),
    "2.1": ("P2", {"2.1.1": ["2.1.1.1"]}),
}


class CountingFinder:
    """A C-FIND SCP in memory that counts the C-FINDs it answers (slowly, so that they overlap)."""

    def __init__(self) -> None:
        self.finds: list[str] = []

    async def find(self, identifier: Dataset) -> AsyncIterator[Dataset]:
        level = identifier.QueryRetrieveLevel
        self.finds.append(level)
        await anyio.sleep(0.01)
        study = ARCHIVE.get(identifier.StudyInstanceUID)
        if study is None:
            return
        patient, series = study
        if level == "STUDY":
            yield _answer(PatientID=patient)
        elif level == "SERIES":
            for uid in series:
                yield _answer(SeriesInstanceUID=uid)
        else:
            for uid in series.get(identifier.SeriesInstanceUID, []):
                yield _answer(SOPInstanceUID=uid)


def _answer(**values: str) -> Dataset:
    ds = Dataset()
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    return ds


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def upstream() -> Any:
    return SimpleNamespace(name="main", client=CountingFinder())


async def test_concurrent_checks_share_one_c_find_and_later_ones_the_cache(upstream: Any) -> None:
    ownership = StudyOwnership()
    async with anyio.create_task_group() as group:
        for _ in range(20):
            group.start_soon(ownership.check, upstream, Target("1.1", "1.1.1", "1.1.1.2"), "P1")
    assert upstream.client.finds == ["STUDY", "SERIES", "IMAGE"]
    await ownership.check(upstream, Target("1.1", "1.1.1", "1.1.1.1"), "P1")
    assert len(upstream.client.finds) == 3


async def test_another_patient_an_unknown_study_and_a_foreign_series(upstream: Any) -> None:
    ownership = StudyOwnership()
    with pytest.raises(Forbidden):
        await ownership.check(upstream, Target("2.1"), "P1")
    with pytest.raises(NotFound):
        await ownership.check(upstream, Target("9.9"), "P1")
    with pytest.raises(NotFound):
        await ownership.check(upstream, Target("1.1", "2.1.1"), "P1")  # P2's series under P1's study
    with pytest.raises(NotFound):
        await ownership.check(upstream, Target("1.1", "1.1.1", "2.1.1.1"), "P1")


async def test_a_series_stored_after_the_cache_was_filled_is_found(upstream: Any) -> None:
    ownership = StudyOwnership()
    await ownership.check(upstream, Target("1.1", "1.1.1"), "P1")
    ARCHIVE["1.1"][1]["1.1.2"] = ["1.1.2.1"]
    try:
        await ownership.check(upstream, Target("1.1", "1.1.2"), "P1")
    finally:
        del ARCHIVE["1.1"][1]["1.1.2"]


async def test_stow_may_add_to_a_new_study_or_the_patients_own(upstream: Any) -> None:
    ownership = StudyOwnership()
    assert await ownership.study_admits(upstream, "9.9", "P1")
    assert await ownership.study_admits(upstream, "1.1", "P1")
    assert not await ownership.study_admits(upstream, "2.1", "P1")


async def test_entries_expire(upstream: Any) -> None:
    ownership = StudyOwnership(ttl=0.05)
    await ownership.check(upstream, Target("1.1"), "P1")
    await anyio.sleep(0.1)
    await ownership.check(upstream, Target("1.1"), "P1")
    assert upstream.client.finds == ["STUDY", "STUDY"]

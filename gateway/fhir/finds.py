"""The C-FINDs the FHIR side makes: identifiers from keywords, answers collected and de-duplicated."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import aclosing
from typing import TypeVar

import anyio
from pydicom.dataset import Dataset

from gateway.concurrency import gateway_errors_unwrapped
from gateway.dimse.client import UpstreamClient
from gateway.fhir.values import text
from gateway.query.attributes import UNIQUE_KEY, QueryLevel, tag
from gateway.query.identifier import build_identifier
from gateway.query.params import MatchKey, MatchType

__all__ = ["FindCounter", "find_unique", "gather_bounded", "key", "run_concurrently", "uid_key"]

T = TypeVar("T")
R = TypeVar("R")

_VRS = {
    "StudyInstanceUID": "UI",
    "SeriesInstanceUID": "UI",
    "SOPInstanceUID": "UI",
    "PatientID": "LO",
    "AccessionNumber": "SH",
    "StudyDate": "DA",
    "Modality": "CS",
}


def key(keyword: str, values: Sequence[str], match_type: MatchType | None = None) -> MatchKey:
    """A match key on `keyword`: single value for one value, a list for several."""
    kind = match_type or (MatchType.SINGLE if len(values) == 1 else MatchType.LIST)
    return MatchKey((tag(keyword),), keyword, _VRS[keyword], kind, tuple(values))


def uid_key(keyword: str, uids: Iterable[str]) -> MatchKey:
    """A UID match key, a list of UIDs when there are several (PS3.4 C.2.2.2.2)."""
    return key(keyword, sorted(set(uids)))


class FindCounter:
    """How many C-FINDs one FHIR request sent (logged, and reported by the benchmark)."""

    def __init__(self) -> None:
        self.count = 0


async def find_unique(
    client: UpstreamClient,
    level: QueryLevel,
    keys: Iterable[MatchKey],
    returns: Iterable[str],
    counter: FindCounter | None = None,
) -> AsyncIterator[Dataset]:
    """Stream a C-FIND's answers, each of the level's unique keys once (requirement C5)."""
    identifier = build_identifier(level, list(keys), [tag(k) for k in returns])
    if counter is not None:
        counter.count += 1
    seen: set[str] = set()
    async with aclosing(client.find(identifier)) as found:  # type: ignore[type-var]
        async for dataset in found:
            uid = text(dataset, UNIQUE_KEY[level])
            if uid and uid not in seen:
                seen.add(uid)
                yield dataset


async def gather_bounded(items: Sequence[T], function: Callable[[T], Awaitable[R]], concurrency: int) -> list[R]:
    """``[await function(item) for item in items]``, up to `concurrency` at once, in order."""
    results: list[R | None] = [None] * len(items)
    limiter = anyio.CapacityLimiter(max(1, concurrency))

    async def run(index: int, item: T) -> None:
        async with limiter:
            results[index] = await function(item)

    # A PACS failure reaches the caller as one C-FIND's would (a 502/504, not an exception group).
    with gateway_errors_unwrapped():
        async with anyio.create_task_group() as tasks:
            for index, item in enumerate(items):
                tasks.start_soon(run, index, item)
    return results  # type: ignore[return-value]


async def run_concurrently(*functions: Callable[[], Awaitable[None]]) -> None:
    """Run `functions` at once; the first failure is raised as itself (see :func:`gather_bounded`)."""
    await gather_bounded(functions, lambda function: function(), len(functions))

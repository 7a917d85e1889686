"""A stream cut into batches, and calls run together."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from contextlib import aclosing
from typing import Any, TypeVar

import anyio

from gateway.concurrency import gateway_errors_unwrapped

__all__ = ["chunked", "gather"]

In = TypeVar("In")


async def chunked(source: AsyncIterator[In], size: int) -> AsyncIterator[list[In]]:
    """Yield the items of `source` in lists of `size` (the last one shorter), in order."""
    async with aclosing(source):  # type: ignore[type-var]
        batch: list[In] = []
        async for item in source:
            batch.append(item)
            if len(batch) >= size:
                yield batch
                batch = []
        if batch:
            yield batch


async def gather(calls: Sequence[Callable[[], Coroutine[Any, Any, None]]]) -> None:
    """Run `calls` at once and wait for all of them.

    When one fails the others are cancelled and a gateway error is raised as itself, not wrapped
    in an exception group, so that a PACS failure keeps its meaning (a 502, a 504) for the caller.
    """
    if len(calls) == 1:
        await calls[0]()
        return
    with gateway_errors_unwrapped():
        async with anyio.create_task_group() as tasks:
            for call in calls:
                tasks.start_soon(call)

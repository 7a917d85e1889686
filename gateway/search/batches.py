"""Ordered, bounded concurrency over an async stream."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import aclosing
from typing import TypeVar

import anyio

from gateway.concurrency import gateway_errors_unwrapped

__all__ = ["map_ordered"]

In = TypeVar("In")
Out = TypeVar("Out")


async def map_ordered(
    source: AsyncIterator[In], function: Callable[[In], Awaitable[Out]], concurrency: int
) -> AsyncIterator[Out]:
    """Yield ``await function(item)`` for each item of `source`, in order.

    Up to `concurrency` calls run at once. The calls run in batches so that no task group is
    open while this generator is suspended at a ``yield`` (a task group must not span a yield).
    Calls that fail with gateway errors raise the first of them, not an exception group.
    """
    async with aclosing(source):  # type: ignore[type-var]
        iterator = aiter(source)
        exhausted = False
        while not exhausted:
            batch: list[In] = []
            while len(batch) < concurrency:
                try:
                    batch.append(await anext(iterator))
                except StopAsyncIteration:
                    exhausted = True
                    break
            results: list[Out] = [None] * len(batch)  # type: ignore[list-item]
            with gateway_errors_unwrapped():
                async with anyio.create_task_group() as tasks:
                    for index, item in enumerate(batch):
                        tasks.start_soon(_store, function, item, results, index)
            for result in results:
                yield result


async def _store(function: Callable[[In], Awaitable[Out]], item: In, results: list[Out], index: int) -> None:
    results[index] = await function(item)

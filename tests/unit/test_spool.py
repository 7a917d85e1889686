"""ResultSpool: thread producer, async consumer, spill to disk beyond the memory bound."""

from __future__ import annotations

import anyio
import anyio.to_thread
import pytest

from gateway.dimse.spool import ResultSpool


@pytest.mark.anyio
async def test_results_arrive_in_order_and_spill_to_disk() -> None:
    spool = ResultSpool(memory_items=10)

    def produce() -> None:
        for number in range(1000):
            spool.put({"n": number})
        spool.finish()

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(anyio.to_thread.run_sync, produce)
        received = [item["n"] async for item in spool]
    assert received == list(range(1000))


@pytest.mark.anyio
async def test_error_after_results_is_raised_after_them() -> None:
    spool = ResultSpool()
    spool.put(1)
    spool.finish(RuntimeError("upstream failed"))
    received = []
    with pytest.raises(RuntimeError, match="upstream failed"):
        async for item in spool:
            received.append(item)
    assert received == [1]


@pytest.mark.anyio
async def test_cancel_drops_later_results() -> None:
    spool = ResultSpool()
    spool.cancel()
    spool.put(1)
    spool.finish()
    assert [item async for item in spool] == []
    assert spool.cancelled.is_set()

"""Overload is explicit: a bounded queue of waiters per pool, and task-group failures as gateway errors."""

from __future__ import annotations

from typing import Any

import anyio
import pytest
from starlette.requests import Request

from gateway.app import _exception_group
from gateway.concurrency import first_gateway_error, gateway_errors_unwrapped
from gateway.dimse.pool import AssociationPool, begin_request
from gateway.errors import NotFound, PoolExhausted, UpstreamTimeout
from gateway.search.batches import gather
from gateway.settings import UpstreamSettings

pytestmark = pytest.mark.anyio


class _Established:
    """Stands in for an established association: the pool only asks whether it still is."""

    is_established = True

    def release(self) -> None:
        pass

    def abort(self, block: bool = True) -> None:
        pass


def pool(**options: Any) -> AssociationPool:
    settings = UpstreamSettings(name="main", ae_title="PACS", host="127.0.0.1", port=104, **options)
    return AssociationPool(settings, _Established, anyio.CapacityLimiter(4))  # type: ignore[arg-type]


async def test_beyond_max_waiting_a_request_is_turned_away_at_once() -> None:
    busy = pool(max_associations=1, max_waiting=2, acquire_timeout=30)
    held = await busy.acquire()
    outcomes: list[str] = []

    async def wait_for_one() -> None:
        conn = await busy.acquire()
        outcomes.append("served")
        busy.release(conn)

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(wait_for_one)
        tasks.start_soon(wait_for_one)
        await anyio.wait_all_tasks_blocked()
        assert busy.stats().waiting == 2
        with anyio.fail_after(1):  # not the 30 s acquire_timeout
            with pytest.raises(PoolExhausted) as turned_away:
                await busy.acquire()
        assert turned_away.value.headers["Retry-After"] == "1" and "2 requests are waiting" in turned_away.value.detail
        busy.release(held)
    assert outcomes == ["served", "served"]
    stats = busy.stats()
    assert (stats.turned_away, stats.max_waiting, stats.waiting) == (1, 2, 0)


async def acquire_and_release(busy: AssociationPool) -> None:
    busy.release(await busy.acquire())


async def test_a_request_that_got_in_waits_for_its_later_associations() -> None:
    busy = pool(max_associations=1, max_waiting=1, acquire_timeout=30)
    order: list[str] = []

    async def admitted_request() -> None:
        begin_request()
        first = await busy.acquire()  # got in
        busy.release(first)
        await anyio.sleep(0.05)  # meanwhile the queue fills up
        second = await busy.acquire()  # waits instead of being turned away
        order.append("admitted request served")
        busy.release(second)

    held = await busy.acquire()
    busy.release(held)
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(admitted_request)
        await anyio.sleep(0.01)
        held = await busy.acquire()
        tasks.start_soon(acquire_and_release, busy)  # one waiter: the queue is full
        await anyio.sleep(0.1)
        with pytest.raises(PoolExhausted):
            begin_request()
            await busy.acquire()  # a new request is turned away
        assert busy.stats().waiting == 2
        busy.release(held)
    assert order == ["admitted request served"]


async def test_max_waiting_defaults_to_eight_per_association() -> None:
    assert pool(max_associations=4).stats().max_waiting == 32
    assert pool(max_associations=2, max_waiting=5).stats().max_waiting == 5


async def test_a_fan_out_failing_in_several_tasks_raises_one_gateway_error() -> None:
    def busy(n: int) -> Any:
        async def call() -> None:
            await anyio.sleep(0.01 if n % 2 else 0)
            raise PoolExhausted(f"busy {n}", upstream="main")

        return call

    with pytest.raises(PoolExhausted):
        await gather([busy(n) for n in range(6)])


def test_only_groups_of_gateway_errors_are_unwrapped() -> None:
    timeout = UpstreamTimeout("slow", upstream="main")
    nested = ExceptionGroup("outer", [ExceptionGroup("inner", [timeout]), NotFound("gone")])
    assert first_gateway_error(nested) is timeout
    assert first_gateway_error(ExceptionGroup("mixed", [timeout, ValueError("bug")])) is None
    with pytest.raises(UpstreamTimeout), gateway_errors_unwrapped():
        raise nested
    with pytest.raises(ExceptionGroup), gateway_errors_unwrapped():
        raise ExceptionGroup("mixed", [timeout, ValueError("bug")])


async def test_an_exception_group_reaching_the_app_is_answered_as_its_gateway_error() -> None:
    request = Request({"type": "http", "method": "GET", "path": "/dicom-web/series", "headers": []})
    busy = ExceptionGroup("fan-out", [PoolExhausted("busy", upstream="main"), PoolExhausted("busy", upstream="main")])
    response = await _exception_group(request, busy)
    assert response.status_code == 503 and response.headers["Retry-After"] == "1"
    bug = await _exception_group(request, ExceptionGroup("fan-out", [ValueError("bug")]))
    assert bug.status_code == 500

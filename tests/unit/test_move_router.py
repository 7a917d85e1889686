"""Routing C-MOVE instances to the request that asked for them."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.dimse.storescp import MoveRouter
from gateway.dimse.transfer import Transfer
from gateway.retrieve.cache import InstanceCache

pytestmark = pytest.mark.anyio  # a Transfer hands instances to the event loop it was made on


def transfers(tmp_path: Path, count: int) -> list[Transfer]:
    cache = InstanceCache(tmp_path, max_bytes=10**6, ttl=60)
    return [Transfer(cache, f"move {n}") for n in range(count)]


async def test_message_ids_are_unique_among_moves_in_flight(tmp_path: Path) -> None:
    router = MoveRouter("GATEWAY")
    first, second, third = transfers(tmp_path, 3)
    ids = [router.register(first), router.register(second)]
    assert len(set(ids)) == 2
    assert router.route("GATEWAY", ids[0]) is first and router.route("GATEWAY", ids[1]) is second
    router.unregister(ids[0])
    assert router.route("GATEWAY", ids[0]) is None
    assert router.register(third) not in ids[1:]


async def test_instances_for_another_originator_or_no_move_are_refused(tmp_path: Path) -> None:
    router = MoveRouter("GATEWAY")
    (only,) = transfers(tmp_path, 1)
    assert router.route("GATEWAY", 1) is None
    message_id = router.register(only)
    assert router.route("SOMEONE", message_id) is None
    # Without an originator message ID, only an unambiguous guess is made.
    assert router.route(None, None) is only
    router.register(transfers(tmp_path, 1)[0])
    assert router.route(None, None) is None


async def test_message_ids_wrap_around_without_reusing_one_in_flight(tmp_path: Path) -> None:
    router = MoveRouter("GATEWAY")
    long_running, *others = transfers(tmp_path, 3)
    held = router.register(long_running)
    for _ in range(65535):
        router.unregister(router.register(others[0]))
    assert router.register(others[1]) != held

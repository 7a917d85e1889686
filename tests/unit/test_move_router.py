"""Routing C-MOVE instances to the request that asked for them, and refusing everything else."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian

from gateway.dimse.refusals import RefusalLog
from gateway.dimse.storescp import MoveRouter
from gateway.dimse.transfer import CANNOT_UNDERSTAND, NOT_AUTHORIZED, Scope, Transfer
from gateway.retrieve.cache import InstanceCache
from gateway.settings import UpstreamSettings

pytestmark = pytest.mark.anyio  # a Transfer hands instances to the event loop it was made on

PACS = UpstreamSettings(name="main", ae_title="PACS", host="127.0.0.1", port=104)
STUDY = Scope("1.2.3")


def transfers(tmp_path: Path, count: int, scope: Scope = STUDY) -> list[Transfer]:
    cache = InstanceCache(tmp_path, max_bytes=10**6, ttl=60)
    return [Transfer(cache, f"move {n}", scope) for n in range(count)]


def route(router: MoveRouter, message_id: int | None, **overrides: str | None) -> Transfer | str:
    fields: dict[str, str | None] = {"calling_ae": "PACS", "address": "127.0.0.1", "originator_ae": "GATEWAY"}
    fields.update(overrides)
    return router.route(message_id=message_id, **fields)  # type: ignore[arg-type]


def instance(tmp_path: Path, sop: str = "1.2.3.1.1", series: str = "1.2.3.1", study: str = "1.2.3") -> Path:
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = "1.2.840.10008.5.1.4.1.1.2", sop
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    path = tmp_path / f"received-{sop}-{series}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


async def test_message_ids_are_unique_among_moves_in_flight(tmp_path: Path) -> None:
    router = MoveRouter("GATEWAY", [PACS])
    first, second, third = transfers(tmp_path, 3)
    ids = [router.register(first, PACS), router.register(second, PACS)]
    assert len(set(ids)) == 2
    assert route(router, ids[0]) is first and route(router, ids[1]) is second
    router.unregister(ids[0])
    assert isinstance(route(router, ids[0]), str)
    assert router.register(third, PACS) not in ids[1:]


async def test_message_ids_are_not_guessable_from_earlier_ones(tmp_path: Path) -> None:
    router = MoveRouter("GATEWAY", [PACS])
    (move,) = transfers(tmp_path, 1)
    ids = []
    for _ in range(50):
        ids.append(router.register(move, PACS))
        router.unregister(ids[-1])
    steps = {later - earlier for earlier, later in zip(ids, ids[1:], strict=False)}
    assert len(steps) > 40  # counting up would give one step; random IDs give about as many as moves
    assert all(1 <= i <= 65535 for i in ids)


async def test_instances_for_another_originator_or_no_move_are_refused(tmp_path: Path) -> None:
    router = MoveRouter("GATEWAY", [PACS])
    (only,) = transfers(tmp_path, 1)
    assert "no C-MOVE in flight" in str(route(router, 1))
    message_id = router.register(only, PACS)
    assert "Move Originator AE Title" in str(route(router, message_id, originator_ae="SOMEONE"))
    # Without an originator message ID nothing is guessed, even with a single move in flight.
    assert "no Move Originator Message ID" in str(route(router, None))


async def test_instances_are_taken_only_from_the_moves_upstream_ae_title_and_address(tmp_path: Path) -> None:
    other = UpstreamSettings(name="other", ae_title="OTHER", host="127.0.0.1", port=105)
    router = MoveRouter("GATEWAY", [PACS, other])
    (move,) = transfers(tmp_path, 1)
    message_id = router.register(move, PACS)
    assert route(router, message_id) is move
    assert route(router, message_id, address="::ffff:127.0.0.1") is move
    assert "went to 'PACS'" in str(route(router, message_id, calling_ae="OTHER"))
    assert "not an address" in str(route(router, message_id, address="127.0.0.2"))


async def test_move_source_hosts_allow_other_addresses(tmp_path: Path) -> None:
    (move,) = transfers(tmp_path, 1)
    networked = UpstreamSettings(
        name="main", ae_title="PACS", host="localhost", port=104, move_source_hosts=("10.1.0.0/16", "192.0.2.7")
    )
    router = MoveRouter("GATEWAY", [networked])
    message_id = router.register(move, networked)
    for address in ("127.0.0.1", "10.1.200.3", "192.0.2.7"):
        assert route(router, message_id, address=address) is move, address
    assert isinstance(route(router, message_id, address="10.2.0.1"), str)
    anywhere = UpstreamSettings(name="any", ae_title="PACS", host="192.0.2.1", port=104, move_source_hosts=("*",))
    router = MoveRouter("GATEWAY", [anywhere])
    assert route(router, router.register(move, anywhere), address="198.51.100.4") is move


async def test_message_ids_wrap_around_without_reusing_one_in_flight(tmp_path: Path) -> None:
    router = MoveRouter("GATEWAY", [PACS])
    long_running, *others = transfers(tmp_path, 3)
    held = router.register(long_running, PACS)
    for _ in range(5000):
        message_id = router.register(others[0], PACS)
        assert message_id != held
        router.unregister(message_id)
    assert route(router, held) is long_running


async def test_a_transfer_takes_only_instances_inside_its_scope(tmp_path: Path) -> None:
    refusals = RefusalLog(logging.getLogger("test"))
    (series,) = transfers(tmp_path, 1, Scope("1.2.3", "1.2.3.1"))
    assert series.receive(instance(tmp_path), "1.2.3.1.1", "PACS@127.0.0.1", refusals) == 0x0000
    outside = instance(tmp_path, "1.2.3.9.1", series="1.2.3.9")
    assert series.receive(outside, "1.2.3.9.1", "PACS@127.0.0.1", refusals) == NOT_AUTHORIZED
    assert not outside.exists()
    other_study = instance(tmp_path, "9.9.1", series="1.2.3.1", study="9.9")
    assert series.receive(other_study, "9.9.1", "PACS@127.0.0.1", refusals) == NOT_AUTHORIZED
    (one,) = transfers(tmp_path / "one", 1, Scope("1.2.3", "1.2.3.1", "1.2.3.1.1"))
    assert one.receive(instance(tmp_path, "1.2.3.1.2"), "1.2.3.1.2", "PACS@127.0.0.1", refusals) == NOT_AUTHORIZED
    assert (series.received, series.refused, series.rejected, refusals.refused) == (1, 2, 0, 3)


async def test_a_transfer_rejects_unreadable_data_and_data_that_is_not_the_instance_named(tmp_path: Path) -> None:
    refusals = RefusalLog(logging.getLogger("test"))
    (move,) = transfers(tmp_path, 1)
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"\x00" * 200)
    assert move.receive(junk, "1.2.3.1.1", "PACS@127.0.0.1", refusals) == CANNOT_UNDERSTAND
    assert move.receive(instance(tmp_path), "1.2.3.1.7", "PACS@127.0.0.1", refusals) == CANNOT_UNDERSTAND
    assert (move.received, move.rejected, move.lost) == (0, 2, 2)


def test_refusals_are_logged_at_most_a_burst_per_peer_and_window(caplog: pytest.LogCaptureFixture) -> None:
    refusals = RefusalLog(logging.getLogger("test.refusals"), burst=3, window=0.2)
    with caplog.at_level(logging.WARNING, logger="test.refusals"):
        for n in range(100):
            refusals.refuse("10.0.0.1", "refused %d from %s", n, "10.0.0.1")
        refusals.refuse("10.0.0.2", "refused from %s", "10.0.0.2")
        assert len(caplog.records) == 4
        time.sleep(0.25)
        refusals.refuse("10.0.0.1", "refused again from %s", "10.0.0.1")
    assert refusals.refused == 102
    assert "97 more refused instances from 10.0.0.1" in caplog.text and "refused again" in caplog.text

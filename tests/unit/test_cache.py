"""The instance cache: admission, pinning, eviction under its bound, freshness, invalidation."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian

from gateway.part10 import NotDicom
from gateway.retrieve.cache import InstanceCache


def received(tmp_path: Path, sop: str, series: str = "1.2.3.1", size: int = 1000) -> Path:
    """A Part 10 file as pynetdicom leaves it after a C-STORE."""
    ds = Dataset()
    ds.StudyInstanceUID = "1.2.3"
    ds.SeriesInstanceUID = series
    ds.SOPInstanceUID = sop
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.BitsAllocated = 8
    ds.PixelData = b"\x00" * size
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    path = tmp_path / f"incoming-{sop}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.fixture
def cache(tmp_path: Path) -> InstanceCache:
    return InstanceCache(tmp_path / "cache", max_bytes=5000, ttl=60)


def test_admitted_instances_are_moved_in_with_their_uids(cache: InstanceCache, tmp_path: Path) -> None:
    incoming = received(tmp_path, "1.2.3.1.1")
    entry = cache.admit(incoming)
    assert not incoming.exists() and entry.path.exists() and entry.path.parent.parent == cache.directory
    assert (entry.study_uid, entry.series_uid, entry.sop_instance_uid) == ("1.2.3", "1.2.3.1", "1.2.3.1.1")
    assert entry.transfer_syntax == ExplicitVRLittleEndian and entry.pins == 1
    cache.release(entry)
    again = cache.acquire("1.2.3.1.1")
    assert again is entry and again.pins == 1


def test_not_dicom_is_refused_and_deleted(cache: InstanceCache, tmp_path: Path) -> None:
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"not dicom at all")
    with pytest.raises(NotDicom):
        cache.admit(junk)
    assert not junk.exists() and len(cache) == 0


def test_least_recently_used_unpinned_instances_are_evicted(cache: InstanceCache, tmp_path: Path) -> None:
    entries = [cache.admit(received(tmp_path, f"1.2.3.1.{n}")) for n in range(1, 4)]
    for entry in entries:
        cache.release(entry)
    first = cache.acquire("1.2.3.1.1")  # now the most recently used, and pinned
    assert first is not None
    for n in range(4, 8):
        cache.release(cache.admit(received(tmp_path, f"1.2.3.1.{n}")))
    assert cache.size <= cache.max_bytes
    assert cache.acquire("1.2.3.1.2") is None and not entries[1].path.exists()
    assert first.path.exists() and not first.gone
    cache.release(first)


def test_pinned_instances_are_never_evicted_even_over_the_bound(cache: InstanceCache, tmp_path: Path) -> None:
    pinned = [cache.admit(received(tmp_path, f"1.2.3.1.{n}")) for n in range(1, 9)]
    assert all(entry.path.exists() for entry in pinned) and cache.size > cache.max_bytes
    for entry in pinned:
        cache.release(entry)
    assert cache.size <= cache.max_bytes


def test_a_series_is_served_only_while_complete_and_fresh(tmp_path: Path) -> None:
    cache = InstanceCache(tmp_path / "cache", max_bytes=10**6, ttl=0.2)
    for n in (1, 2):
        cache.release(cache.admit(received(tmp_path, f"1.2.3.1.{n}")))
    assert cache.acquire_series("1.2.3", "1.2.3.1") is None
    cache.mark_series_complete("1.2.3", "1.2.3.1", ["1.2.3.1.1", "1.2.3.1.2"])
    members = cache.acquire_series("1.2.3", "1.2.3.1")
    assert members is not None and [m.sop_instance_uid for m in members] == ["1.2.3.1.1", "1.2.3.1.2"]
    for member in members:
        cache.release(member)
    time.sleep(0.25)
    assert cache.acquire_series("1.2.3", "1.2.3.1") is None


def test_forget_drops_the_instance_its_metadata_and_its_series(cache: InstanceCache, tmp_path: Path) -> None:
    entry = cache.admit(received(tmp_path, "1.2.3.1.1"))
    cache.release(entry)
    assert cache.sidecar(entry, ".json", lambda path: b'{"a": 1}') == b'{"a": 1}'
    assert cache.sidecar(entry, ".json", lambda path: b"rebuilt") == b'{"a": 1}'
    cache.mark_series_complete("1.2.3", "1.2.3.1", ["1.2.3.1.1"])
    cache.forget("1.2.3", "1.2.3.1", "1.2.3.1.1")
    assert cache.acquire("1.2.3.1.1") is None and cache.acquire_series("1.2.3", "1.2.3.1") is None
    assert not entry.path.exists() and not entry.path.with_suffix(".json").exists() and entry.gone


def test_a_new_copy_of_the_same_data_set_replaces_the_instance(cache: InstanceCache, tmp_path: Path) -> None:
    old = cache.admit(received(tmp_path, "1.2.3.1.1", size=100))
    cache.sidecar(old, ".json", lambda path: b"old metadata")
    new = cache.admit(received(tmp_path, "1.2.3.1.1", size=100))
    assert old.gone and not new.gone and cache.size == new.size and cache.counters.conflicts == 0
    assert cache.sidecar(new, ".json", lambda path: b"new metadata") == b"new metadata"
    # Whoever is reading the old copy keeps it until done with it.
    assert old.path.exists() and old.path != new.path
    cache.release(old)
    assert not old.path.exists() and not old.path.with_suffix(".json").exists()
    cache.release(new)
    assert cache.acquire("1.2.3.1.1") is new


def test_a_copy_with_other_content_never_replaces_the_cached_one(
    cache: InstanceCache, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cached = cache.admit(received(tmp_path, "1.2.3.1.1", size=100))
    cache.release(cached)
    forged = received(tmp_path, "1.2.3.1.1", series="6.6.6", size=100)
    answered = cache.admit(forged)
    assert answered is cached and answered.pins == 1 and not cached.gone and not forged.exists()
    assert cache.counters.conflicts == 1 and cache.size == cached.size and len(cache) == 1
    assert "other content than the cached copy" in caplog.text and "6.6.6" in caplog.text
    cache.release(answered)
    assert cache.acquire("1.2.3.1.1") is cached


def test_forgetting_an_instance_being_read_deletes_it_after_the_reader(cache: InstanceCache, tmp_path: Path) -> None:
    entry = cache.admit(received(tmp_path, "1.2.3.1.1"))
    cache.forget("1.2.3", "1.2.3.1", "1.2.3.1.1")
    assert entry.path.exists() and cache.size == 0
    cache.release(entry)
    assert not entry.path.exists()

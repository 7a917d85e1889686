"""A bounded on-disk cache of retrieved instances, so viewers' repeated requests stay local.

OHIF-style viewers ask for a series' metadata, then for each instance's frames one request at a
time, often again and again. Every instance the gateway retrieves (by C-GET or C-MOVE) lands here
as a Part 10 file before it is streamed on; metadata, frames, bulk data and rendered images are
then served from these files.

- **Bounded:** least recently used instances are deleted once the files exceed ``max_bytes``.
  Instances being streamed or read are *pinned* and never deleted under a reader, so the cache
  may overshoot by what is in flight.
- **Fresh:** a series counts as cached only if all of it was retrieved within ``ttl`` seconds and
  nothing has been stored into it since (:meth:`InstanceCache.forget`, called by STOW-RS).
- **Consistent:** an instance arriving with the SOP Instance UID of a cached one but other
  content (a PACS that changed it, or a forgery) never replaces it unnoticed: the cached copy
  is kept and served, the arriving one deleted, logged as an error and counted (``conflicts``).
  Only STOW-RS through the gateway (:meth:`InstanceCache.forget`) or eviction replaces it.
- **Concurrent:** the pynetdicom threads that receive instances and the event loop that serves
  them share it through one lock; files are written elsewhere and moved in with an atomic rename,
  so a reader never sees half a file.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import os
import re
import shutil
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from gateway.part10 import InstanceHeader, NotDicom, read_instance_header

__all__ = ["CachedInstance", "InstanceCache"]

logger = logging.getLogger(__name__)

_SAFE_UID = re.compile(r"^[0-9.]{1,64}$")


@dataclass(eq=False)
class CachedInstance:
    """One instance file in the cache."""

    study_uid: str
    series_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax: str
    path: Path
    size: int
    pins: int = 0
    gone: bool = False
    """Deleted or replaced since it was handed out (its file may still be open for reading)."""


@dataclass
class _Series:
    members: tuple[str, ...]
    complete_at: float


@dataclass
class _Counters:
    hits: int = 0
    misses: int = 0
    admitted: int = 0
    evicted: int = 0
    forgotten: int = 0
    conflicts: int = 0
    """Instances received with a cached SOP Instance UID but other content; the cached copy was kept."""


@dataclass
class InstanceCache:
    """Instance files under `directory`, at most about `max_bytes`, series fresh for `ttl` seconds."""

    directory: Path
    max_bytes: int
    ttl: float
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _entries: OrderedDict[str, CachedInstance] = field(default_factory=OrderedDict, repr=False)
    _series: dict[tuple[str, str], _Series] = field(default_factory=dict, repr=False)
    _bytes: int = 0
    _copies: itertools.count[int] = field(default_factory=itertools.count, repr=False)
    counters: _Counters = field(default_factory=_Counters)

    def __post_init__(self) -> None:
        # What an earlier process left here is unknown to the index: start empty.
        for folder in ("instances", "incoming"):
            shutil.rmtree(self.directory / folder, ignore_errors=True)
            (self.directory / folder).mkdir(parents=True, exist_ok=True)

    @property
    def size(self) -> int:
        """Bytes of instance files held now."""
        return self._bytes

    def __len__(self) -> int:
        return len(self._entries)

    def stage(self, received: Path) -> Path:
        """Move a just-received file beside the cache, to be admitted later (one rename).

        Called by the threads that receive instances, while the PACS waits for the C-STORE
        response: reading the header is left to :meth:`admit`, off that path.
        """
        staged = self.directory / "incoming" / f"{next(self._copies)}.dcm"
        _move(received, staged)
        return staged

    def admit(self, received: Path, header: InstanceHeader | None = None) -> CachedInstance:
        """Move a received (or staged) Part 10 file into the cache; returns it pinned.

        Blocking: reads the file's header unless `header` is given. When the cache already holds
        the instance, the copies are compared (after their File Meta Information): the same
        data set replaces the cached copy; another one is deleted and the cached copy returned
        instead (see the module docstring).

        Raises
        ------
        NotDicom
            The file is not DICOM or lacks a study, series or instance UID. It is deleted.
        """
        if header is None:
            try:
                header = read_instance_header(received)
            except NotDicom:
                received.unlink(missing_ok=True)
                raise
        study, series = header.study_instance_uid, header.series_instance_uid
        sop, sop_class, transfer_syntax = header.sop_instance_uid, header.sop_class_uid, header.transfer_syntax
        kept = self._keep_cached(received, header)
        if kept is not None:
            return kept
        # A name of its own for every copy: a reader of an earlier copy keeps reading that one.
        path = self.directory / "instances" / f"{_file_name(sop)}-{next(self._copies)}.dcm"
        size = received.stat().st_size
        _move(received, path)
        entry = CachedInstance(study, series, sop, sop_class, transfer_syntax, path, size, pins=1)
        with self._lock:
            previous = self._entries.pop(sop, None)
            doomed = self._drop(previous) if previous is not None else []
            self._entries[sop] = entry
            self._bytes += size
            self.counters.admitted += 1
            doomed += self._evict()
        _delete(doomed)
        return entry

    def _keep_cached(self, received: Path, header: InstanceHeader) -> CachedInstance | None:
        """The cached copy of `header`'s instance, pinned, if it differs from `received` (then deleted)."""
        with self._lock:
            cached = self._entries.get(header.sop_instance_uid)
            if cached is None:
                return None
            cached.pins += 1
        same_syntax = cached.transfer_syntax == header.transfer_syntax
        if same_syntax and _same_data_set(cached.path, received):
            self.release(cached)
            return None
        received.unlink(missing_ok=True)
        with self._lock:
            if same_syntax:
                self.counters.conflicts += 1
            if cached.sop_instance_uid in self._entries:
                self._entries.move_to_end(cached.sop_instance_uid)
        if same_syntax:
            logger.error(
                "cache: received instance %s (series %s of study %s) with other content than the cached copy "
                "(series %s of study %s); kept the cached copy, discarded the received one",
                header.sop_instance_uid,
                header.series_instance_uid,
                header.study_instance_uid,
                cached.series_uid,
                cached.study_uid,
            )
        else:
            logger.info(
                "cache: received instance %s in %s, cached in %s; kept the cached copy",
                header.sop_instance_uid,
                header.transfer_syntax,
                cached.transfer_syntax,
            )
        return cached

    def acquire(self, sop_instance_uid: str) -> CachedInstance | None:
        """The cached instance, pinned, or None. Give it back with :meth:`release`."""
        with self._lock:
            entry = self._entries.get(sop_instance_uid)
            if entry is None:
                self.counters.misses += 1
                return None
            self._entries.move_to_end(sop_instance_uid)
            entry.pins += 1
            self.counters.hits += 1
            return entry

    def acquire_series(self, study_uid: str, series_uid: str) -> list[CachedInstance] | None:
        """Every instance of a fresh, completely cached series, pinned; None if that is not so."""
        with self._lock:
            series = self._series.get((study_uid, series_uid))
            if series is None or time.monotonic() - series.complete_at > self.ttl:
                self.counters.misses += 1
                return None
            entries = [self._entries.get(sop) for sop in series.members]
            if any(entry is None for entry in entries):
                del self._series[(study_uid, series_uid)]
                self.counters.misses += 1
                return None
            found = [entry for entry in entries if entry is not None]
            for entry in found:
                entry.pins += 1
                self._entries.move_to_end(entry.sop_instance_uid)
            self.counters.hits += 1
            return found

    def release(self, entry: CachedInstance) -> None:
        """Unpin an instance handed out by :meth:`admit`, :meth:`acquire` or :meth:`acquire_series`."""
        with self._lock:
            entry.pins -= 1
            # A copy dropped while it was being read goes once its last reader is done.
            doomed = _files(entry) if entry.gone and entry.pins == 0 else self._evict()
        _delete(doomed)

    def mark_series_complete(self, study_uid: str, series_uid: str, members: Iterable[str]) -> None:
        """Record that `members` are all of the series, as the PACS had it just now."""
        with self._lock:
            self._series[(study_uid, series_uid)] = _Series(tuple(members), time.monotonic())

    def forget(self, study_uid: str, series_uid: str, sop_instance_uid: str) -> None:
        """Drop an instance and the completeness of its series: it was stored anew (STOW-RS)."""
        with self._lock:
            self._series.pop((study_uid, series_uid), None)
            entry = self._entries.pop(sop_instance_uid, None)
            doomed: list[Path] = []
            if entry is not None:
                doomed = self._drop(entry)
                self.counters.forgotten += 1
        _delete(doomed)

    def sidecar(self, entry: CachedInstance, suffix: str, build: Callable[[Path], bytes]) -> bytes:
        """A derived file kept beside the instance (its metadata, say), built once by `build`.

        Blocking. Sidecars live and die with their instance; they are small and not counted.
        """
        path = entry.path.with_suffix(suffix)
        try:
            return path.read_bytes()
        except FileNotFoundError:
            pass
        data = build(entry.path)
        staging = path.with_name(f"{path.name}.{threading.get_ident()}.partial")
        staging.write_bytes(data)
        os.replace(staging, path)
        return data

    def stats(self) -> dict[str, int]:
        """Counters for the health endpoint."""
        return {"instances": len(self._entries), "bytes": self._bytes, **vars(self.counters)}

    def _evict(self) -> list[Path]:
        # Called with the lock held; returns the files to delete once it is released.
        doomed: list[Path] = []
        if self._bytes <= self.max_bytes:
            return doomed
        for sop, entry in list(self._entries.items()):
            if self._bytes <= self.max_bytes:
                break
            if entry.pins > 0:
                continue
            del self._entries[sop]
            doomed += self._drop(entry)
            self.counters.evicted += 1
        return doomed

    def _drop(self, entry: CachedInstance) -> list[Path]:
        # Called with the lock held, for an entry just taken out of the index: the files to delete
        # now, or none if it is being read (then :meth:`release` deletes them).
        entry.gone = True
        self._bytes -= entry.size
        return _files(entry) if entry.pins == 0 else []


def _file_name(sop_instance_uid: str) -> str:
    if _SAFE_UID.match(sop_instance_uid):
        return sop_instance_uid
    return hashlib.sha1(sop_instance_uid.encode(), usedforsecurity=False).hexdigest()


def _move(source: Path, target: Path) -> None:
    try:
        os.replace(source, target)
    except OSError:  # another file system: copy, then rename within ours
        staging = target.with_suffix(".partial")
        shutil.move(source, staging)
        os.replace(staging, target)


def _data_set_offset(file: BinaryIO) -> int:
    """Where the data set starts in a Part 10 file: after the preamble and File Meta Information.

    PS3.10 7.1: a 128-byte preamble, ``DICM``, then group 0002 in explicit VR little endian,
    led by its group length (0002,0000) UL. A file without them is compared from its start.
    """
    lead = file.read(144)
    if len(lead) < 144 or lead[128:132] != b"DICM" or lead[132:138] != b"\x02\x00\x00\x00UL":
        return 0
    return 144 + int.from_bytes(lead[140:144], "little")


def _same_data_set(first: Path, second: Path, chunk: int = 1 << 20) -> bool:
    """True if two Part 10 files hold the same data set, byte for byte (their File Meta may differ)."""
    try:
        with first.open("rb") as a, second.open("rb") as b:
            a.seek(_data_set_offset(a))
            b.seek(_data_set_offset(b))
            while True:
                block = a.read(chunk)
                if block != b.read(chunk):
                    return False
                if not block:
                    return True
    except OSError:
        return False


def _files(entry: CachedInstance) -> list[Path]:
    """The instance file and the files derived from it."""
    return [entry.path, entry.path.with_suffix(".json")]


def _delete(paths: list[Path]) -> None:
    for path in paths:
        path.unlink(missing_ok=True)

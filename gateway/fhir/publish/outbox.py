"""The publication queue: one small JSON file per study, so that a restart loses nothing.

``queue_dir/{upstream}/{StudyInstanceUID}.json`` exists while the study waits to be published
(or to be retried). A study queued again while it waits is the same file (publications
coalesce); the queue holds at most ``max_studies`` of them and refuses new ones beyond that.
Files are written whole to a temporary name and renamed over the old one, so a crash leaves
either the old or the new file, never a torn one; they are not fsync'ed (a power cut may lose
the last few, a process crash or restart loses none).

Every method is synchronous and runs on the event loop: the files are a few hundred bytes, and
one thread owning the state needs no lock.
"""

from __future__ import annotations

import heapq
import logging
import os
import re
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson

__all__ = ["Outbox", "QueuedStudy", "valid_study_uid"]

logger = logging.getLogger(__name__)

_UID = re.compile(r"^[0-9]+(?:\.[0-9]+)*$")  # PS3.5 §9.1: digits and dots, at most 64 characters
_SUFFIX = ".json"

Key = tuple[str, str]


def valid_study_uid(uid: str) -> bool:
    """True for a syntactically valid UID (it becomes a file name, so nothing else may pass)."""
    return len(uid) <= 64 and _UID.match(uid) is not None


@dataclass
class QueuedStudy:
    """A study waiting to be published."""

    upstream: str
    study_uid: str
    queued_at: float
    """Wall-clock time it was first queued."""
    not_before: float
    """Wall-clock time before which it is not attempted (the coalescing delay, then the backoff)."""
    attempts: int = 0
    """Failed attempts so far."""
    last_error: str = ""
    revision: int = 0
    """Bumped each time the study is queued again; kept in memory only. A publication that started
    at an older revision may have built the study before the newest STOW-RS: it does not dequeue it."""

    @property
    def key(self) -> Key:
        return (self.upstream, self.study_uid)

    def to_json(self) -> bytes:
        return orjson.dumps(
            {
                "upstream": self.upstream,
                "study": self.study_uid,
                "queued_at": self.queued_at,
                "not_before": self.not_before,
                "attempts": self.attempts,
                "last_error": self.last_error,
            }
        )


class Outbox:
    """The queued studies, in memory and on disk.

    Parameters
    ----------
    directory : pathlib.Path
        Where the files live; created if missing (an ``OSError`` if it cannot be).
    max_studies : int
        The most studies it holds; :meth:`add` refuses a new one beyond that.
    clock : callable, optional
        Wall-clock seconds (queued times survive restarts, so not a monotonic clock).
    """

    def __init__(self, directory: Path, max_studies: int, clock: Callable[[], float] = time.time) -> None:
        self.directory = directory
        self.max_studies = max_studies
        self._clock = clock
        self._studies: dict[Key, QueuedStudy] = {}
        directory.mkdir(parents=True, exist_ok=True)

    def __len__(self) -> int:
        return len(self._studies)

    def __iter__(self) -> Iterator[QueuedStudy]:
        return iter(self._studies.values())

    def get(self, key: Key) -> QueuedStudy | None:
        """The queued study under `key`, if it is queued."""
        return self._studies.get(key)

    def load(self, upstreams: Iterable[str]) -> int:
        """Read the studies a previous run left queued, for the configured `upstreams`; returns how many.

        A file that cannot be read is queued afresh (its name is the study); leftover temporary
        files are removed. Studies of an upstream no longer configured stay on disk, unpublished.
        """
        names = set(upstreams)
        for folder in sorted(p for p in self.directory.iterdir() if p.is_dir()):
            if folder.name not in names:
                count = sum(1 for _ in folder.glob(f"*{_SUFFIX}"))
                if count:
                    logger.warning(
                        "FHIR publish: %d queued studies of upstream %r, which is not configured, stay in %s",
                        count,
                        folder.name,
                        folder,
                    )
                continue
            for path in folder.iterdir():
                if path.name.startswith(".") and path.name.endswith(".tmp"):
                    path.unlink(missing_ok=True)
                elif path.name.endswith(_SUFFIX) and valid_study_uid(path.name[: -len(_SUFFIX)]):
                    study = self._read(folder.name, path)
                    self._studies[study.key] = study
        return len(self._studies)

    def _read(self, upstream: str, path: Path) -> QueuedStudy:
        study_uid = path.name[: -len(_SUFFIX)]
        now = self._clock()
        try:
            saved = orjson.loads(path.read_bytes())
            return QueuedStudy(
                upstream,
                study_uid,
                queued_at=float(saved["queued_at"]),
                not_before=float(saved["not_before"]),
                attempts=int(saved["attempts"]),
                last_error=str(saved.get("last_error", "")),
            )
        except (OSError, ValueError, KeyError, TypeError) as exc:
            logger.warning("FHIR publish: %s is unreadable (%s); the study is queued afresh", path, exc)
            return QueuedStudy(upstream, study_uid, queued_at=now, not_before=now)

    def add(self, upstream: str, study_uid: str, delay: float) -> bool:
        """Queue a study, or mark an already queued one as changed; False if the queue is full.

        A new study waits `delay` seconds; a queued one keeps its place and its wait.
        """
        queued = self._studies.get((upstream, study_uid))
        if queued is not None:
            queued.revision += 1
            return True
        if len(self._studies) >= self.max_studies:
            return False
        now = self._clock()
        study = QueuedStudy(upstream, study_uid, queued_at=now, not_before=now + delay)
        self._studies[study.key] = study
        self.save(study)
        return True

    def save(self, study: QueuedStudy) -> None:
        """Write the study's file (atomically); a failure is logged, the study stays queued in memory."""
        folder = self.directory / study.upstream
        temporary = folder / f".{study.study_uid}.tmp"
        try:
            folder.mkdir(exist_ok=True)
            temporary.write_bytes(study.to_json())
            os.replace(temporary, folder / f"{study.study_uid}{_SUFFIX}")
        except OSError as exc:
            logger.error("FHIR publish: cannot save study %s in %s: %s (kept in memory)", study.study_uid, folder, exc)

    def remove(self, study: QueuedStudy) -> None:
        """Dequeue the study and delete its file."""
        self._studies.pop(study.key, None)
        try:
            (self.directory / study.upstream / f"{study.study_uid}{_SUFFIX}").unlink(missing_ok=True)
        except OSError as exc:
            logger.error("FHIR publish: cannot delete the queue file of study %s: %s", study.study_uid, exc)

    def due(self, now: float, busy: set[Key], limit: int) -> list[QueuedStudy]:
        """At most `limit` studies that may be attempted at `now` and are not being published, longest waiting first."""
        ready = (s for s in self._studies.values() if s.not_before <= now and s.key not in busy)
        return heapq.nsmallest(limit, ready, key=lambda s: (s.not_before, s.queued_at))

    def next_due(self, busy: set[Key]) -> float | None:
        """When the next study not being published becomes due; ``None`` if there is none."""
        return min((s.not_before for s in self._studies.values() if s.key not in busy), default=None)

"""The background publisher: studies queued by STOW-RS, published one attempt at a time, retried with backoff.

:meth:`Publisher.enqueue` never waits and never raises: a STOW-RS answer does not depend on the
FHIR server. A scheduler task starts up to ``publish_concurrency`` attempts of due studies; each
attempt ends in one of four ways (:class:`~gateway.fhir.publish.upsert.Outcome`):

- published: the study is dequeued, unless it was queued again meanwhile (then it goes again);
- gone (the PACS has no such study): logged and dequeued; nothing is deleted on the FHIR server;
- retry: it waits the server's ``Retry-After`` or an exponential backoff with jitter, and when the
  FHIR server itself failed, every other study waits as long (the server is down or throttling:
  don't hammer it); after ``publish_attempts`` failed attempts it is given up;
- failed (a 4xx other than 429, or 401 after a fresh token): logged with the server's
  OperationOutcome, counted, dequeued.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from types import TracebackType
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc

from gateway.fhir.publish.outbox import Key, Outbox, QueuedStudy, valid_study_uid
from gateway.fhir.publish.retry import backoff_delay
from gateway.fhir.publish.upsert import Outcome, Publication, StudyPublisher
from gateway.settings import ConfigError, FhirPublishSettings, Settings

if TYPE_CHECKING:
    from gateway.upstreams import Upstreams

__all__ = ["Publisher", "PublisherFactory"]

logger = logging.getLogger(__name__)

PublisherFactory = Callable[[Settings, "Upstreams"], "Publisher | None"]
"""Makes the app's publisher from its settings and upstreams (``None``: publishing is not configured)."""


def _timestamp(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="seconds")


class Publisher:
    """Queues studies and publishes them in the background; ``async with`` runs the worker.

    Parameters
    ----------
    settings : FhirPublishSettings
        The queue's place and bounds, the retry policy.
    study_publisher : StudyPublisher
        Makes one attempt for one study.
    upstreams : iterable of str
        The configured upstream names (studies queued for others by an earlier run stay on disk).
    clock : callable, optional
        Wall-clock seconds; ``rng`` draws the backoff jitter. Tests replace them.

    Raises
    ------
    ConfigError
        The queue directory cannot be created.
    """

    def __init__(
        self,
        settings: FhirPublishSettings,
        study_publisher: StudyPublisher,
        upstreams: Iterable[str],
        *,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        self.settings = settings
        self.study_publisher = study_publisher
        self._upstreams = tuple(upstreams)
        self._clock = clock
        self._rng = rng or random.Random()
        try:
            self.outbox = Outbox(settings.resolved_queue_dir, settings.queue_max, clock)
        except (OSError, RuntimeError) as exc:  # RuntimeError: no home directory for the default one
            raise ConfigError(f"fhir.queue_dir: cannot create {settings.queue_dir or 'the default'}: {exc}") from exc
        self._busy: set[Key] = set()
        self._paused_until = 0.0
        self._wake = anyio.Event()
        self._tasks: anyio.abc.TaskGroup | None = None
        self.published = 0
        self.failed = 0
        self.gone = 0
        self.refused = 0
        self.retried = 0
        self.last_error = ""
        self._last_error_at: float | None = None
        self._last_published_at: float | None = None

    async def __aenter__(self) -> Publisher:
        await self.study_publisher.__aenter__()
        loaded = self.outbox.load(self._upstreams)
        logger.info(
            "FHIR publish: to %s (%s), queue in %s, %d studies waiting",
            self.study_publisher.server.base,
            self.settings.publish_version,
            self.outbox.directory,
            loaded,
        )
        self._tasks = anyio.create_task_group()
        await self._tasks.__aenter__()
        self._tasks.start_soon(self._schedule)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        # Attempts in flight are abandoned; their studies are still on disk for the next start.
        assert self._tasks is not None
        self._tasks.cancel_scope.cancel()
        await self._tasks.__aexit__(None, None, None)
        self._tasks = None
        await self.study_publisher.__aexit__(exc_type, exc, tb)
        logger.info("FHIR publish: stopped, %d studies queued in %s", len(self.outbox), self.outbox.directory)

    def enqueue(self, upstream: str, study_uid: str) -> bool:
        """Queue a study for publication (after a STOW-RS stored some of it); False if it was refused.

        Never blocks and never raises: a full queue or an invalid UID is logged and counted.
        """
        try:
            if not valid_study_uid(study_uid):
                logger.warning("FHIR publish: %r is not a valid StudyInstanceUID; not queued", study_uid)
                self.refused += 1
                return False
            if not self.outbox.add(upstream, study_uid, self.settings.publish_delay):
                self.refused += 1
                logger.error(
                    "FHIR publish: queue full (%d studies): study %s of upstream %s is not queued (%d refused so far)",
                    len(self.outbox),
                    study_uid,
                    upstream,
                    self.refused,
                )
                return False
        except Exception:  # the STOW-RS answer must not fail because of publishing
            logger.exception("FHIR publish: cannot queue study %s", study_uid)
            self.refused += 1
            return False
        self._wake.set()
        return True

    def stats(self) -> dict[str, Any]:
        """What ``/health`` shows under ``fhir_publish``."""
        return {
            "url": self.study_publisher.server.base,
            "version": self.settings.publish_version,
            "queued": len(self.outbox),
            "in_flight": len(self._busy),
            "published": self.published,
            "failed": self.failed,
            "gone": self.gone,
            "refused": self.refused,
            "retried": self.retried,
            "last_error": self.last_error or None,
            "last_error_at": _timestamp(self._last_error_at) if self._last_error_at is not None else None,
            "last_published_at": _timestamp(self._last_published_at) if self._last_published_at is not None else None,
            "paused_until": _timestamp(self._paused_until) if self._paused_until > self._clock() else None,
        }

    async def _schedule(self) -> None:
        assert self._tasks is not None
        while True:
            now = self._clock()
            if now >= self._paused_until:
                free = self.settings.publish_concurrency - len(self._busy)
                for study in self.outbox.due(now, self._busy, max(free, 0)):
                    self._busy.add(study.key)
                    self._tasks.start_soon(self._attempt, study)
            wake_at = self.outbox.next_due(self._busy)
            timeout: float | None = None
            if wake_at is not None and len(self._busy) < self.settings.publish_concurrency:
                timeout = max(max(wake_at, self._paused_until) - self._clock(), 0.0)
            with anyio.move_on_after(timeout):
                await self._wake.wait()
            self._wake = anyio.Event()

    async def _attempt(self, study: QueuedStudy) -> None:
        revision = study.revision
        try:
            try:
                publication = await self.study_publisher.publish(study.upstream, study.study_uid)
            except Exception as exc:  # a bug in a builder: not worth retrying
                logger.exception("FHIR publish: publishing study %s failed unexpectedly", study.study_uid)
                publication = Publication(Outcome.FAILED, f"{type(exc).__name__}: {exc}")
            self._settle(study, revision, publication)
        finally:
            self._busy.discard(study.key)
            self._wake.set()

    def _settle(self, study: QueuedStudy, revision: int, publication: Publication) -> None:
        now = self._clock()
        changed = study.revision != revision  # queued again while this attempt ran: it may be stale
        where = f"study {study.study_uid} of upstream {study.upstream}"
        if publication.outcome is Outcome.RETRY:
            study.attempts += 1
            self.retried += 1
            self._note_error(f"{where}: {publication.detail}", now)
            if study.attempts >= self.settings.publish_attempts:
                self.failed += 1
                logger.error(
                    "FHIR publish: giving up %s after %d attempts: %s", where, study.attempts, publication.detail
                )
                self.outbox.remove(study)
                return
            s = self.settings
            wait = publication.retry_after
            if wait is None:
                wait = backoff_delay(study.attempts, s.publish_backoff, s.publish_backoff_max, self._rng)
            study.not_before = now + wait
            study.last_error = publication.detail
            if publication.server_failed:
                self._paused_until = max(self._paused_until, study.not_before)
            logger.warning(
                "FHIR publish: %s, attempt %d of %d failed, next in %.1f s: %s",
                where,
                study.attempts,
                s.publish_attempts,
                wait,
                publication.detail,
            )
            self.outbox.save(study)
            return
        if publication.outcome is Outcome.PUBLISHED:
            self.published += 1
            self._last_published_at = now
            logger.info("FHIR publish: %s published: %s", where, publication.detail)
        elif publication.outcome is Outcome.GONE:
            self.gone += 1
            logger.warning("FHIR publish: %s not published: %s", where, publication.detail)
        else:
            self.failed += 1
            self._note_error(f"{where}: {publication.detail}", now)
            logger.error("FHIR publish: %s failed for good: %s", where, publication.detail)
        if changed:
            # The newest STOW-RS may not be in what was built (or failed): publish once more.
            study.attempts, study.last_error = 0, ""
            study.not_before = now + self.settings.publish_delay
            self.outbox.save(study)
        else:
            self.outbox.remove(study)

    def _note_error(self, text: str, now: float) -> None:
        self.last_error = text
        self._last_error_at = now

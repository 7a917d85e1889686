"""``dicomweb-gateway publish``: publish studies that reached the PACS some other way than STOW-RS.

The studies are named by UID, or found by a C-FIND at STUDY level on a StudyDate range. Each is
published like a queued one (built fresh from C-FIND, then PUT), retried in the foreground on
transient failures, without touching the running gateway's queue.
"""

from __future__ import annotations

import random
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from datetime import date

import anyio
from pydicom.dataset import Dataset

from gateway.dimse.client import UpstreamClient
from gateway.errors import GatewayError
from gateway.fhir.publish.outbox import valid_study_uid
from gateway.fhir.publish.retry import backoff_delay
from gateway.fhir.publish.upsert import Outcome, StudyPublisher
from gateway.settings import ConfigError, Settings
from gateway.upstreams import Upstreams

__all__ = ["find_studies", "parse_date", "publish_studies"]

StudyPublisherFactory = Callable[[Settings, Upstreams], "StudyPublisher | None"]


def parse_date(text: str) -> date:
    """``YYYY-MM-DD`` or ``YYYYMMDD`` (a DICOM DA), for ``--since`` and ``--until``."""
    cleaned = text.strip()
    try:
        if len(cleaned) == 8 and cleaned.isdigit():
            return date(int(cleaned[:4]), int(cleaned[4:6]), int(cleaned[6:]))
        return date.fromisoformat(cleaned)
    except ValueError as exc:
        raise ValueError(f"{text!r} is not a date (YYYY-MM-DD)") from exc


async def find_studies(client: UpstreamClient, since: date, until: date | None) -> AsyncIterator[str]:
    """StudyInstanceUIDs of the studies whose StudyDate is in [since, until], by one STUDY-level C-FIND.

    PS3.4 C.2.2.2.5: a range ``YYYYMMDD-`` is open-ended. Duplicates (some PACS answer once per
    instance) are dropped.
    """
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "STUDY"
    identifier.StudyDate = f"{since:%Y%m%d}-{until:%Y%m%d}" if until is not None else f"{since:%Y%m%d}-"
    identifier.StudyInstanceUID = ""
    seen: set[str] = set()
    async for found in client.find(identifier):
        uid = str(found.get("StudyInstanceUID", ""))
        if uid and uid not in seen:
            seen.add(uid)
            yield uid


async def _publish_one(publisher: StudyPublisher, upstream: str, uid: str, attempts: int, settings: Settings) -> bool:
    """Publish one study, retrying transient failures up to `attempts` times; prints the result."""
    assert settings.fhir_publish is not None
    s = settings.fhir_publish
    if not valid_study_uid(uid):
        print(f"FAILED {uid}: not a valid StudyInstanceUID", flush=True)
        return False
    for attempt in range(1, attempts + 1):
        publication = await publisher.publish(upstream, uid)
        if publication.outcome is not Outcome.RETRY or attempt == attempts:
            break
        wait = publication.retry_after
        if wait is None:
            wait = backoff_delay(attempt, s.publish_backoff, s.publish_backoff_max, random.Random())
        print(f"retrying {uid} in {wait:.1f} s: {publication.detail}", flush=True)
        await anyio.sleep(wait)
    if publication.outcome is Outcome.PUBLISHED:
        print(f"published {uid}: {publication.detail}", flush=True)
        return True
    reason = "not in the PACS" if publication.outcome is Outcome.GONE else publication.detail
    print(f"FAILED {uid}: {reason}", flush=True)
    return False


async def publish_studies(
    settings: Settings,
    make_study_publisher: StudyPublisherFactory,
    study_uids: list[str],
    *,
    upstream_name: str | None = None,
    since: date | None = None,
    until: date | None = None,
    attempts: int = 3,
) -> int:
    """Publish the studies named, or those of the StudyDate range; the exit status (0: all published).

    Raises
    ------
    ConfigError
        Publishing is not configured, or `upstream_name` is not an upstream.
    """
    if settings.fhir_publish is None:
        raise ConfigError("publish needs --fhir-publish-url or [fhir] publish_url")
    # This process only queries, beside a running gateway: no storage SCP (the gateway owns store_port),
    # and a cache of its own (an instance cache empties its directory when it starts).
    query_only = replace(
        settings, cache_dir="", upstreams=tuple(replace(u, retrieve="get") for u in settings.upstreams)
    )
    if upstream_name is not None and upstream_name not in {u.name for u in settings.upstreams}:
        raise ConfigError(f"--pacs {upstream_name!r} is not a configured upstream")
    upstreams = Upstreams(query_only)
    upstream = upstreams.get(upstream_name) if upstream_name else upstreams.default
    assert upstream is not None
    publisher = make_study_publisher(query_only, upstreams)
    assert publisher is not None
    published = failed = 0
    async with upstreams, publisher:
        uids = list(study_uids)
        if since is not None:
            try:
                uids += [uid async for uid in find_studies(upstream.client, since, until)]
            except GatewayError as exc:
                print(f"dicomweb-gateway publish: C-FIND on StudyDate failed: {exc.detail}", file=sys.stderr)
                return 1
            print(f"{len(uids)} studies in {upstream.name} from {since} {f'to {until}' if until else 'on'}", flush=True)
        limiter = anyio.CapacityLimiter(settings.fhir_publish.publish_concurrency)

        async def one(uid: str) -> None:
            nonlocal published, failed
            async with limiter:
                if await _publish_one(publisher, upstream.name, uid, attempts, settings):
                    published += 1
                else:
                    failed += 1

        async with anyio.create_task_group() as tasks:
            for uid in dict.fromkeys(uids):
                tasks.start_soon(one, uid)
    print(f"{published} published, {failed} failed", flush=True)
    return 1 if failed else 0

"""Backoff with jitter, and the server's Retry-After in both of its forms."""

from __future__ import annotations

import random
from datetime import UTC, datetime

from gateway.fhir.publish.retry import backoff_delay, retry_after_seconds


def test_backoff_doubles_up_to_the_cap_with_jitter_in_the_upper_half() -> None:
    rng = random.Random(1)
    for attempt, bound in [(1, 1.0), (2, 2.0), (3, 4.0), (5, 16.0), (8, 60.0), (100, 60.0)]:
        delays = [backoff_delay(attempt, 1.0, 60.0, rng) for _ in range(200)]
        assert all(bound / 2 <= d <= bound for d in delays)
        assert max(delays) - min(delays) > bound / 4  # jittered, not a constant


def test_retry_after_in_seconds() -> None:
    assert retry_after_seconds("120") == 120.0
    assert retry_after_seconds(" 0 ") == 0.0
    assert retry_after_seconds("99999999") == 86400.0  # a day at most


def test_retry_after_as_an_http_date() -> None:
    now = datetime(2026, 1, 2, 10, 0, 0, tzinfo=UTC)
    assert retry_after_seconds("Fri, 02 Jan 2026 10:01:30 GMT", now) == 90.0
    assert retry_after_seconds("Friday, 02-Jan-26 10:00:10 GMT", now) == 10.0  # RFC 850, obsolete but allowed
    assert retry_after_seconds("Fri, 02 Jan 2026 09:00:00 GMT", now) == 0.0  # in the past: now


def test_retry_after_absent_or_unreadable() -> None:
    assert retry_after_seconds(None) is None
    assert retry_after_seconds("soon") is None
    assert retry_after_seconds("-5") is None
    assert retry_after_seconds("") is None

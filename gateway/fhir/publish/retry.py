"""How long to wait before the next attempt: exponential backoff with jitter, or the server's ``Retry-After``."""

from __future__ import annotations

import random
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

__all__ = ["backoff_delay", "retry_after_seconds"]

_RETRY_AFTER_MAX = 86400.0
"""A ``Retry-After`` further away than a day is taken as a day: a typo on the server must not park the queue."""


def backoff_delay(attempt: int, base: float, cap: float, rng: random.Random | None = None) -> float:
    """Seconds to wait after the `attempt`-th failed attempt (1 for the first).

    The bound doubles with every attempt up to `cap`; the wait is drawn between half the bound and
    the bound ("equal jitter"), so that publications failing together do not retry together, yet
    never much earlier than the backoff asks.
    """
    bound = min(cap, base * 2.0 ** min(attempt - 1, 62))
    return bound / 2 + (rng or random).uniform(0, bound / 2)


def retry_after_seconds(value: str | None, now: datetime | None = None) -> float | None:
    """The wait a ``Retry-After`` header asks for (RFC 9110 §10.2.3), or ``None`` if absent or unreadable.

    The value is either a number of seconds or an HTTP-date; a date in the past means "now" (0).
    """
    if value is None:
        return None
    text = value.strip()
    if text.isdigit():
        return min(float(text), _RETRY_AFTER_MAX)
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # RFC 9110 dates are GMT; the obsolete formats may parse as naive
        when = when.replace(tzinfo=UTC)
    seconds = (when - (now or datetime.now(UTC))).total_seconds()
    return min(max(seconds, 0.0), _RETRY_AFTER_MAX)

"""StaleAggregates: every stale study answer counted, at most one log line per interval."""

from __future__ import annotations

import logging

import pytest

from gateway.search import aggregates
from gateway.search.aggregates import StaleAggregates


def test_counts_every_study_and_logs_once_per_interval(caplog: pytest.LogCaptureFixture, monkeypatch) -> None:
    now = [1000.0]
    monkeypatch.setattr(aggregates.time, "monotonic", lambda: now[0])
    stale = StaleAggregates("archive", interval=60.0)
    with caplog.at_level(logging.WARNING, logger="gateway.search.aggregates"):
        stale.record("1.2.3", ["ModalitiesInStudy CT (derived: CT/PT)"])
        for _ in range(4):
            now[0] += 10
            stale.record("1.2.4", ["NumberOfStudyRelatedSeries 1 (derived: 2)"])
        assert stale.count == 5 and len(caplog.records) == 1
        assert "archive" in caplog.text and "1.2.3" in caplog.text and "CT/PT" in caplog.text
        now[0] += 30  # 70 s after the first line
        stale.record("1.2.5", ["NumberOfStudyRelatedInstances 3 (derived: 5)"])
    assert stale.count == 6 and len(caplog.records) == 2
    assert "5 stale study answer(s) since the last report, 6 in all" in caplog.records[1].getMessage()

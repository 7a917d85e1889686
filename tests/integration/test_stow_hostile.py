"""STOW-RS uploads that are broken or abandoned, against the in-process storage SCP.

A malformed instance is failed without being sent (a PACS that cannot parse it may never answer);
a client that leaves mid-upload gets what it had stored named in a log line; an upload of many
bad parts writes a bounded number of log lines and a summary.
"""

from __future__ import annotations

import logging
import socket
import time
from urllib.parse import urlsplit

import httpx
import pytest

from tests.fakestorage import FakeStoragePacs
from tests.integration.test_stow_faults import STUDY, ct, gateway, multipart, part10, values

CANNOT_UNDERSTAND = 0xC000


def test_a_malformed_instance_fails_without_being_sent() -> None:
    good, cut, padded = ct(1), part10(ct(2))[:-40], part10(ct(3)) + b"stray bytes"
    with FakeStoragePacs() as pacs, gateway(pacs.upstream) as root:
        body, headers = multipart([part10(good), cut, padded])
        response = httpx.post(f"{root}/studies", content=body, headers=headers, timeout=30)
    assert response.status_code == 202, response.text
    body_json = response.json()
    assert values(body_json, "00081199", "00081155") == [good.SOPInstanceUID]
    assert values(body_json, "00081198", "00081155") == [f"{STUDY}.1.2", f"{STUDY}.1.3"]
    assert values(body_json, "00081198", "00081197") == [CANNOT_UNDERSTAND, CANNOT_UNDERSTAND]
    assert pacs.received == [good.SOPInstanceUID]


def test_many_bad_parts_write_a_bounded_number_of_lines_and_a_summary(caplog: pytest.LogCaptureFixture) -> None:
    parts = [b"not dicom %d" % n for n in range(60)] + [part10(ct(1))]
    with FakeStoragePacs() as pacs, gateway(pacs.upstream) as root:
        body, headers = multipart(parts)
        with caplog.at_level(logging.INFO, logger="gateway"):
            response = httpx.post(f"{root}/studies", content=body, headers=headers, timeout=30)
    assert response.status_code == 202
    part_lines = [r for r in caplog.records if r.getMessage().startswith("STOW-RS part ")]
    assert len(part_lines) == 20
    summaries = [r.getMessage() for r in caplog.records if "more parts not logged one by one" in r.getMessage()]
    assert summaries == ["STOW-RS to default: 40 more parts not logged one by one: 40 not DICOM"]
    assert pacs.received == [f"{STUDY}.1.1"]


def test_an_abandoned_upload_names_what_it_stored_in_a_log_line(caplog: pytest.LogCaptureFixture) -> None:
    stored = [ct(n) for n in (1, 2)]
    with FakeStoragePacs() as pacs, gateway(pacs.upstream) as root:
        address = urlsplit(root)
        parts = b"".join(b"--XXX\r\nContent-Type: application/dicom\r\n\r\n%s\r\n" % part10(ds) for ds in stored)
        head = (
            f"POST {address.path}/studies HTTP/1.1\r\nHost: gateway\r\n"
            'Content-Type: multipart/related; type="application/dicom"; boundary=XXX\r\n'
            f"Content-Length: {len(parts) + 10_000}\r\n\r\n"
        ).encode()
        with caplog.at_level(logging.INFO, logger="gateway"):
            with socket.create_connection((address.hostname, address.port), timeout=10) as sock:
                # Two whole parts and the start of a third: the second is stored once the third begins.
                sock.sendall(head + parts + b"--XXX\r\nContent-Type: application/dicom\r\n\r\nDI")
                deadline = time.monotonic() + 10
                while len(pacs.received) < 2 and time.monotonic() < deadline:
                    time.sleep(0.05)
            deadline = time.monotonic() + 10
            while not [r for r in caplog.records if "ended early" in r.getMessage()] and time.monotonic() < deadline:
                time.sleep(0.05)
    assert pacs.received == [ds.SOPInstanceUID for ds in stored]
    (line,) = [r.getMessage() for r in caplog.records if "ended early" in r.getMessage()]
    assert "the client closed the connection" in line and "2 instances stored" in line
    assert all(ds.SOPInstanceUID in line for ds in stored) and STUDY in line
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR and "reference" in r.getMessage()]

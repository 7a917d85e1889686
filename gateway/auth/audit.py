"""The audit trail: one JSON line per request that touches patient data, on the ``gateway.audit`` logger.

A line holds::

    {"time": "2026-12-02T11:00:00.123Z", "transaction": "WADO", "method": "GET",
     "path": "/dicom-web/studies/1.2.3", "status": 200, "outcome": "success",
     "source": "10.0.0.7", "client_id": "viewer", "subject": "alice", "issuer": "https://...",
     "patient_id": "PAT0001", "studies": ["1.2.3"], "detail": null}

``outcome`` is ``success`` (2xx, 3xx), ``denied`` (401, 403), ``failure`` (other statuses) or
``error`` (the answer broke off). ``patient_id`` is the token's patient (a patient-bound token),
else the one PatientID the request searched for or stored; ``studies`` the Study Instance UIDs the path
named or STOW-RS stored. The token itself is never written.

The lines go wherever the ``gateway.audit`` logger goes: the gateway's log by default, a file of
their own with ``[auth] audit_log`` (:func:`audit_file`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import orjson

__all__ = ["AuditRecord", "audit_file", "audit_logger"]

audit_logger = logging.getLogger("gateway.audit")


@dataclass
class AuditRecord:
    """What one request did; the routes may add the studies and patients they touched."""

    transaction: str | None
    method: str
    path: str
    source: str | None
    client_id: str | None = None
    subject: str | None = None
    issuer: str | None = None
    patient_id: str | None = None
    studies: set[str] = field(default_factory=set)
    patients: set[str] = field(default_factory=set)
    """PatientIDs the request touched other than the token's (STOW-RS: those stored)."""
    status: int | None = None
    completed: bool = False
    """Whether the whole answer was sent."""
    detail: str | None = None

    def outcome(self) -> str:
        """success, denied, failure, or error when the answer was not sent whole."""
        if self.status is None or not self.completed:
            return "error"
        if self.status in (401, 403):
            return "denied"
        return "success" if self.status < 400 else "failure"

    def emit(self) -> None:
        """Write the line (after the answer has been sent, or has failed)."""
        if not audit_logger.isEnabledFor(logging.INFO):
            return
        now = time.time()
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now * 1000) % 1000:03d}Z"
        patients = sorted(self.patients | ({self.patient_id} if self.patient_id else set()))
        line = {
            "time": stamp,
            "transaction": self.transaction,
            "method": self.method,
            "path": self.path,
            "status": self.status,
            "outcome": self.outcome(),
            "source": self.source,
            "client_id": self.client_id,
            "subject": self.subject,
            "issuer": self.issuer,
            "patient_id": self.patient_id or (patients[0] if len(patients) == 1 else None),
            "patients": patients,
            "studies": sorted(self.studies),
            "detail": self.detail,
        }
        audit_logger.info(orjson.dumps(line).decode())


@contextmanager
def audit_file(path: str) -> Iterator[None]:
    """Append the audit trail to the file at `path` (only there) while the context lasts."""
    if not path:
        yield
        return
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(message)s"))
    audit_logger.addHandler(handler)
    audit_logger.setLevel(logging.INFO)
    propagate, audit_logger.propagate = audit_logger.propagate, False
    try:
        yield
    finally:
        audit_logger.removeHandler(handler)
        audit_logger.propagate = propagate
        handler.close()

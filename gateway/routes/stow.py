"""STOW-RS (PS3.18 §10.5): stream the body to temporary files -> C-STORE each instance -> store response.

The body is parsed as it arrives; each complete part is handed to one of ``store_concurrency``
workers, which reads its header, checks it against the target study and C-STOREs it. The hand-off
has no buffer, so the body is read no faster than the PACS takes instances: at most one spilled
part per worker plus the one being received exist on disk at any time.

Every study that got at least one instance is then queued for FHIR publishing, when it is
configured (:mod:`gateway.fhir.publish`); queuing never waits and never fails the request.
"""

from __future__ import annotations

import logging
import tempfile
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from logging import ERROR, WARNING
from pathlib import Path

import anyio
import anyio.to_thread
from anyio.streams.memory import MemoryObjectReceiveStream
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from gateway.auth.audit import AuditRecord
from gateway.auth.ownership import StudyOwnership
from gateway.auth.patient import PATIENT_SCOPE_KEY, same_patient
from gateway.dimse.store import PROCESSING_FAILURE
from gateway.errors import BadRequest, GatewayError, PayloadTooLarge, PoolExhausted, UnsupportedMediaType, UpstreamError
from gateway.fhir.publish.publisher import Publisher
from gateway.metrics import STORED_INSTANCES
from gateway.part10 import InstanceHeader, NotDicom
from gateway.query.dicomjson import encode_json
from gateway.query.params import parse_uid
from gateway.routes.common import DICOM_JSON, ServiceRoot, require_json_accept
from gateway.settings import Settings
from gateway.stow.instances import read_upload_header
from gateway.stow.multipart import MultipartError, Part, parse_media_type, read_parts, spill_body
from gateway.stow.response import (
    CANNOT_UNDERSTAND,
    NOT_AUTHORIZED,
    STUDY_INSTANCE_UID_MISMATCH,
    Failed,
    OtherFailure,
    Stored,
    store_response,
    store_status,
)
from gateway.stow.structure import MalformedDataset, check_structure
from gateway.upstreams import Upstream

__all__ = ["store_instances"]

logger = logging.getLogger(__name__)

_DICOM = "application/dicom"
_CLIENT_CLOSED_REQUEST = 499  # nginx's status for a request its client abandoned
_OUT_OF_RESOURCES = 0xA700


_PART_LINES = 20
"""Log lines about single parts one request writes; past them, parts are counted and summarised."""
_UIDS_LOGGED = 100
"""SOP Instance UIDs one log line names at most (the rest are counted)."""


@dataclass
class _PartLog:
    """Log lines about single parts of one upload: the first :data:`_PART_LINES` written, the rest summarised.

    A 10,000-part upload of non-DICOM parts would otherwise write 10,000 lines.
    """

    written: int = 0
    unwritten: Counter[str] = field(default_factory=Counter)

    def log(self, level: int, kind: str, message: str, *args: object) -> None:
        """Write `message` (a part's `kind` of outcome), or count it once the budget is spent."""
        if self.written < _PART_LINES:
            self.written += 1
            logger.log(level, message, *args)
        else:
            self.unwritten[kind] += 1

    def summary(self) -> str | None:
        """``"412 more parts not logged: 400 not DICOM, 12 refused by the PACS"``, or None."""
        if not self.unwritten:
            return None
        counts = ", ".join(f"{count} {kind}" for kind, count in self.unwritten.most_common())
        return f"{self.unwritten.total()} more parts not logged one by one: {counts}"


@dataclass
class _Report:
    """What happened to each part, by its position in the body."""

    outcomes: dict[int, Stored | Failed | OtherFailure] = field(default_factory=dict)
    upstream_errors: list[UpstreamError] = field(default_factory=list)
    """Failures to get an association at all: when nothing else happened, the request's error."""
    stored_studies: set[str] = field(default_factory=set)
    """StudyInstanceUIDs of which at least one instance was stored."""
    patients: set[str] = field(default_factory=set)
    """PatientIDs of the stored instances (for the audit trail)."""
    ownership: StudyOwnership | None = None
    """Tells whose study an instance names, for a patient-bound token."""
    admitting_studies: dict[str, bool] = field(default_factory=dict)
    """Per study of this request: may the patient-bound token add to it."""
    log: _PartLog = field(default_factory=_PartLog)

    def stored(self) -> list[Stored]:
        """The instances stored so far, in body order."""
        return [o for _, o in sorted(self.outcomes.items()) if isinstance(o, Stored)]


def _body_chunks(request: Request, limit: int) -> AsyncIterator[bytes]:
    async def counted() -> AsyncIterator[bytes]:
        received = 0
        async for chunk in request.stream():
            received += len(chunk)
            if received > limit:
                raise PayloadTooLarge(f"the body exceeds max_upload_bytes ({limit} bytes)")
            yield chunk

    return counted()


def _parts(request: Request, directory: Path, limit: int) -> AsyncIterator[Part]:
    """The body's parts, after checking its media type and declared length."""
    try:
        media = parse_media_type(request.headers.get("content-type", ""))
    except MultipartError as exc:
        raise BadRequest(f"Content-Type: {exc}") from exc
    declared = request.headers.get("content-length", "")
    # ASCII digits only: str.isdigit() takes "²", and int() refuses more than 4,300 digits.
    if declared.isascii() and declared.isdigit() and (len(declared) > 19 or int(declared) > limit):
        raise PayloadTooLarge(f"Content-Length {declared} exceeds max_upload_bytes ({limit} bytes)")
    if media.type == _DICOM:
        return spill_body(_body_chunks(request, limit), _DICOM, directory)
    part_type = media.parameters.get("type", _DICOM).lower()
    if media.type != "multipart/related" or part_type != _DICOM:
        shown = media.type + (f'; type="{part_type}"' if media.type == "multipart/related" else "")
        raise UnsupportedMediaType(
            f"cannot store {shown or 'a body without Content-Type'}; send "
            f'multipart/related; type="{_DICOM}" or {_DICOM} (Part 10 instances)'
        )
    boundary = media.parameters.get("boundary")
    if not boundary:
        raise BadRequest("Content-Type: multipart/related without a boundary parameter")
    return read_parts(_body_chunks(request, limit), boundary, directory)


async def _patients_instance(header: InstanceHeader, patient: str, upstream: Upstream, report: _Report) -> bool:
    """A patient-bound token's instance: its PatientID, and a study that is new or already that patient's."""
    if not same_patient(header.patient_id, patient):
        return False
    study = header.study_instance_uid
    if study not in report.admitting_studies:
        assert report.ownership is not None
        report.admitting_studies[study] = await report.ownership.study_admits(upstream, study, patient)
    return report.admitting_studies[study]


async def _store_part(
    part: Part, upstream: Upstream, study: str | None, root: str, report: _Report, patient: str | None = None
) -> None:
    where = f"STOW-RS part {part.index + 1}"
    if part.headers.get("content-type") and part.content_type.type != _DICOM:
        report.log.log(WARNING, "not DICOM", "%s is %s, not %s: not stored", where, part.content_type.type, _DICOM)
        report.outcomes[part.index] = OtherFailure(CANNOT_UNDERSTAND)
        return
    try:
        header = await anyio.to_thread.run_sync(read_upload_header, part.path)
    except NotDicom as exc:
        report.log.log(WARNING, "not DICOM", "%s (%d bytes) is not stored: %s", where, part.size, exc)
        report.outcomes[part.index] = OtherFailure(CANNOT_UNDERSTAND)
        return
    sop_class, sop_instance = str(header.sop_class_uid), str(header.sop_instance_uid)
    if study is not None and header.study_instance_uid != study:
        report.log.log(
            WARNING,
            "of another study",
            "%s: instance %s belongs to study %s, not the target study %s: not stored",
            where,
            sop_instance,
            header.study_instance_uid,
            study,
        )
        report.outcomes[part.index] = Failed(sop_class, sop_instance, STUDY_INSTANCE_UID_MISMATCH)
        return
    if patient is not None and not await _patients_instance(header, patient, upstream, report):
        logger.warning("%s: instance %s is not the token's patient's: not stored", where, sop_instance)
        report.outcomes[part.index] = Failed(sop_class, sop_instance, NOT_AUTHORIZED)
        return
    try:
        await anyio.to_thread.run_sync(check_structure, part.path, header.transfer_syntax)
    except MalformedDataset as exc:
        # Sent, it would cost a dimse_timeout: some PACS never answer what they cannot parse.
        report.log.log(WARNING, "malformed", "%s: instance %s is malformed, not sent: %s", where, sop_instance, exc)
        report.outcomes[part.index] = Failed(sop_class, sop_instance, CANNOT_UNDERSTAND)
        return
    try:
        result = await upstream.store.store(part.path, header.sop_class_uid, header.transfer_syntax)
    except UpstreamError as exc:
        report.log.log(ERROR, "not stored", "%s: instance %s not stored: %s", where, sop_instance, exc.detail)
        report.upstream_errors.append(exc)
        reason = _OUT_OF_RESOURCES if isinstance(exc, PoolExhausted) else PROCESSING_FAILURE
        report.outcomes[part.index] = Failed(sop_class, sop_instance, reason)
        return
    if not result.stored:
        report.log.log(
            ERROR,
            "refused by the PACS",
            "%s: upstream %s did not store instance %s: 0x%04X %s",
            where,
            upstream.name,
            sop_instance,
            result.status,
            result.detail,
        )
        report.outcomes[part.index] = Failed(sop_class, sop_instance, result.status)
        return
    if result.warning:
        report.log.log(
            WARNING,
            "stored with a warning",
            "%s: upstream %s stored instance %s with warning 0x%04X (%s)",
            where,
            upstream.name,
            sop_instance,
            result.status,
            result.detail,
        )
    # What the WADO-RS cache holds of this instance and its series is stale from now on.
    upstream.retrieval.cache.forget(header.study_instance_uid, header.series_instance_uid, sop_instance)
    report.stored_studies.add(str(header.study_instance_uid))
    url = f"{root}/studies/{header.study_instance_uid}/series/{header.series_instance_uid}/instances/{sop_instance}"
    report.patients.add(header.patient_id)
    report.outcomes[part.index] = Stored(sop_class, sop_instance, url, result.status if result.warning else None)


async def _store_worker(
    parts: MemoryObjectReceiveStream[Part],
    upstream: Upstream,
    study: str | None,
    root: str,
    report: _Report,
    patient: str | None,
) -> None:
    async with parts:
        async for part in parts:
            try:
                await _store_part(part, upstream, study, root, report, patient)
            finally:
                part.path.unlink(missing_ok=True)


def _outcome_label(outcome: Stored | Failed | OtherFailure) -> str:
    if isinstance(outcome, Stored):
        return "stored" if outcome.warning_reason is None else "warning"
    return "failed" if isinstance(outcome, Failed) else "not_dicom"


async def _store_all(
    parts: AsyncIterator[Part], upstream: Upstream, study: str | None, root: str, report: _Report, patient: str | None
) -> None:
    """Store every part into `report`; a body that turns out malformed is recorded in it, not raised."""
    body_error: Exception | None = None
    send, receive = anyio.create_memory_object_stream[Part](0)
    async with anyio.create_task_group() as workers:
        for _ in range(upstream.store.settings.store_concurrency):
            workers.start_soon(_store_worker, receive.clone(), upstream, study, root, report, patient)
        receive.close()
        async with send:
            try:
                async for part in parts:
                    await send.send(part)
            except Exception as exc:  # a malformed or oversized body, the client hanging up
                body_error = exc
    for outcome in report.outcomes.values():
        STORED_INSTANCES.labels(upstream.name, _outcome_label(outcome)).inc()
    if isinstance(body_error, MultipartError) and report.outcomes:
        stored = sum(isinstance(o, Stored) for o in report.outcomes.values())
        logger.error("STOW-RS body malformed after %d parts (%d stored): %s", len(report.outcomes), stored, body_error)
        report.outcomes[len(report.outcomes)] = OtherFailure(CANNOT_UNDERSTAND)
    elif isinstance(body_error, MultipartError):
        raise BadRequest(f"malformed multipart body: {body_error}")
    elif body_error is not None:
        what = "the client closed the connection" if isinstance(body_error, ClientDisconnect) else "the body failed"
        _log_stored_before(report, what)
        if isinstance(body_error, GatewayError) and (count := len(report.stored())):
            body_error.detail += f" ({count} instances were stored before that)"
        raise body_error


def _publish_stored(request: Request, upstream: Upstream, report: _Report) -> None:
    """Queue every study that got instances for FHIR publishing; never delays or fails the answer."""
    publisher: Publisher | None = getattr(request.app.state, "publisher", None)
    if publisher is not None:
        for study_uid in sorted(report.stored_studies):
            publisher.enqueue(upstream.name, study_uid)


def _log_stored_before(report: _Report, what: str) -> None:
    """One log line naming what an upload that did not finish stored: the PACS has those, the client may not know."""
    stored = report.stored()
    uids = " ".join(s.sop_instance_uid for s in stored[:_UIDS_LOGGED])
    more = f" and {len(stored) - _UIDS_LOGGED} more" if len(stored) > _UIDS_LOGGED else ""
    studies = sorted({s.retrieve_url.split("/studies/")[-1].split("/")[0] for s in stored})
    logger.error(
        "STOW-RS upload ended early (%s) after %d parts; %d instances stored before that%s",
        what,
        len(report.outcomes),
        len(stored),
        f", in studies {' '.join(studies)}: {uids}{more}" if stored else "",
    )
    if (summary := report.log.summary()) is not None:
        logger.warning("STOW-RS: %s", summary)


async def store_instances(request: Request) -> Response:
    """``POST /studies`` and ``POST /studies/{study}``: STOW-RS of Part 10 instances."""
    require_json_accept(request)
    service: ServiceRoot = request.scope["gateway.service"]
    settings: Settings = request.app.state.settings
    study = request.path_params.get("study")
    if study is not None:
        study = parse_uid(study, "study")
    root = service.root_url(request)
    report = _Report(ownership=request.app.state.ownership)
    try:
        with tempfile.TemporaryDirectory(prefix="dicomweb-gateway-stow-") as workdir:
            parts = _parts(request, Path(workdir), settings.max_upload_bytes)
            patient = request.scope.get(PATIENT_SCOPE_KEY)
            await _store_all(parts, service.upstream, study, root, report, patient)
    except ClientDisconnect:
        return Response(status_code=_CLIENT_CLOSED_REQUEST)  # nobody reads it; logged in _store_all
    finally:  # also when the body fails after some instances were stored
        _publish_stored(request, service.upstream, report)

    outcomes = [report.outcomes[index] for index in sorted(report.outcomes)]
    stored = [o for o in outcomes if isinstance(o, Stored)]
    failed = [o for o in outcomes if isinstance(o, Failed)]
    other = [o for o in outcomes if isinstance(o, OtherFailure)]
    if not outcomes:
        raise BadRequest("the body holds no instance")
    if not stored and report.upstream_errors and len(report.upstream_errors) == len(outcomes):
        raise report.upstream_errors[0]  # the PACS could not be reached at all: 502/503/504 as for any request
    studies = {s.retrieve_url.split("/series/")[0] for s in stored}
    audit: AuditRecord | None = request.scope.get("gateway.audit")
    if audit is not None:
        audit.studies.update(url.rsplit("/", 1)[-1] for url in studies)
        audit.patients.update(report.patients - {""})
    if study is not None:
        study_url: str | None = f"{root}/studies/{study}"
    else:
        study_url = studies.pop() if len(studies) == 1 else None
    status = store_status(stored, failed, other)
    if (summary := report.log.summary()) is not None:
        logger.warning("STOW-RS to %s: %s", service.upstream.name, summary)
    logger.info(
        "STOW-RS to %s: %d stored (%d with warnings), %d failed -> %d",
        service.upstream.name,
        len(stored),
        sum(s.warning_reason is not None for s in stored),
        len(failed) + len(other),
        status,
    )
    return Response(encode_json(store_response(study_url, stored, failed, other)), status, media_type=DICOM_JSON)

"""WADO-RS instance retrieval (PS3.18 §10.4): C-GET or C-MOVE, streamed as multipart/related.

The first part leaves as soon as the first instance has arrived. The status is committed then:
200, or 206 with a Warning when the PACS has already reported failed sub-operations. A failure
reported after that can no longer change the status, so the body is ended without its closing
delimiter: the client sees a broken answer, never a short one that looks complete.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import anyio.to_thread
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from gateway.dimse.transfer import Transfer
from gateway.errors import BadRequest, GatewayError
from gateway.query.params import parse_uid
from gateway.retrieve.cache import CachedInstance, InstanceCache
from gateway.retrieve.multipart import MultipartWriter
from gateway.retrieve.service import Target, partial_warning
from gateway.retrieve.transcode import TranscodeError, to_explicit_little_endian
from gateway.routes.common import ServiceRoot
from gateway.wado.instances import AS_STORED, DicomRendition, negotiate_instances

__all__ = ["parse_target", "retrieve_instances"]

logger = logging.getLogger(__name__)

_CHUNK = 1 << 20  # bytes read from an instance file at a time: large files are never held whole
_SMALL = 2 << 20  # instances up to this size are read and sent in one piece


class IncompleteRetrieve(GatewayError):
    """The PACS reported failed sub-operations after the answer had started."""

    status_code = 502
    title = "Incomplete retrieve"


def parse_target(request: Request) -> Target:
    """The study, series and instance UIDs of the request's path, checked (400 if malformed)."""
    params = request.path_params
    return Target(
        study=parse_uid(params["study"], "study UID"),
        series=parse_uid(params["series"], "series UID") if "series" in params else None,
        instance=parse_uid(params["instance"], "SOP instance UID") if "instance" in params else None,
    )


async def retrieve_instances(request: Request) -> Response:
    """``GET /studies/{study}[/series/{series}[/instances/{instance}]]``: the instances."""
    rendition = negotiate_instances(request.headers.get("accept", ""))
    target = parse_target(request)
    if request.query_params:
        unknown = sorted(set(request.query_params) - {"accept"})
        if unknown:
            raise BadRequest(f"unknown query parameters {unknown} for a retrieve")
    service: ServiceRoot = request.scope["gateway.service"]
    retrieval = service.upstream.retrieval
    transfer = retrieval.start(target)
    entries = aiter(retrieval.matching(target, transfer))
    try:
        first = await anext(entries)
    except StopAsyncIteration:
        await retrieval.check_found(target, transfer)
        raise AssertionError("check_found returns only by raising") from None
    except BaseException:
        transfer.cancel()
        raise
    headers: dict[str, str] = {}
    warning = partial_warning(transfer)
    if warning is not None:
        headers["Warning"] = warning
    writer = MultipartWriter("application/dicom")
    body = _stream_parts(
        first, entries, transfer, retrieval.cache, rendition, writer, service.root_url(request), warned=warning
    )
    headers["Content-Type"] = writer.content_type
    return StreamingResponse(body, status_code=206 if warning else 200, headers=headers)


async def _stream_parts(
    first: CachedInstance,
    rest: AsyncIterator[CachedInstance],
    transfer: Transfer,
    cache: InstanceCache,
    rendition: DicomRendition,
    writer: MultipartWriter,
    root: str,
    *,
    warned: str | None,
) -> AsyncIterator[bytes]:
    lost_before = transfer.lost
    sent = 0
    entry: CachedInstance | None = first
    try:
        while entry is not None:
            try:
                async for chunk in _part(entry, rendition, writer, root):
                    yield chunk
                sent += 1
            except TranscodeError as exc:
                transfer.rejected += 1
                logger.warning("%s: cannot send %s: %s", transfer.description, entry.sop_instance_uid, exc)
            finally:
                cache.release(entry)
                entry = None
            entry = await anext(rest, None)
    except GatewayError as exc:
        logger.error("WADO-RS answer for %s aborted after %d instances: %s", transfer.description, sent, exc.detail)
        raise
    finally:
        transfer.cancel()  # the client went away, or the transfer is over: either way, stop it
    warning = partial_warning(transfer)
    if warning is not None and (transfer.lost > lost_before or warned is None):
        # Failures the status line (200, or 206 for fewer losses) does not tell.
        logger.error("WADO-RS answer for %s aborted after %d instances: %s", transfer.description, sent, warning)
        raise IncompleteRetrieve(f"{transfer.description}: {warning}")
    yield writer.close()


async def _part(
    entry: CachedInstance, rendition: DicomRendition, writer: MultipartWriter, root: str
) -> AsyncIterator[bytes]:
    location = f"{root}/studies/{entry.study_uid}/series/{entry.series_uid}/instances/{entry.sop_instance_uid}"
    if rendition.transfer_syntax in (AS_STORED, entry.transfer_syntax):
        content_type = f"application/dicom; transfer-syntax={entry.transfer_syntax}"
        header = writer.part_header(entry.size, content_type=content_type, location=location)
        if entry.size <= _SMALL:
            # Most instances: just written, so read from the page cache in well under a
            # millisecond; reading here and sending the part as one message costs less CPU than a
            # hop to a worker thread and three messages.
            yield b"".join((header, entry.path.read_bytes(), writer.part_end()))
            return
        yield header
        with open(entry.path, "rb") as file:
            while chunk := await anyio.to_thread.run_sync(file.read, _CHUNK):
                yield chunk
    else:
        data = await anyio.to_thread.run_sync(to_explicit_little_endian, entry.path)
        content_type = f"application/dicom; transfer-syntax={rendition.transfer_syntax}"
        yield writer.part_header(len(data), content_type=content_type, location=location)
        yield data
    yield writer.part_end()

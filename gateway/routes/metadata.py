"""WADO-RS metadata and bulk data (PS3.18 §10.4.1.1.2, §10.4.1.1.5), served from the instance cache.

Each instance's DICOM JSON is built once and kept beside it in the cache (its BulkDataURIs
written against a placeholder, since the gateway's own URL depends on how it is reached), so a
viewer asking for a series' metadata again and again is answered from disk.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path

import anyio.to_thread
import orjson
from pydicom.uid import UID
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from gateway.errors import NotAcceptable
from gateway.retrieve.cache import CachedInstance, InstanceCache
from gateway.retrieve.multipart import MultipartWriter
from gateway.routes.common import DICOM_JSON, ServiceRoot, require_json_accept
from gateway.routes.wado import parse_target
from gateway.wado.accept import parse_accept
from gateway.wado.bulkdata import iter_bulkdata
from gateway.wado.metadata import instance_metadata

__all__ = ["retrieve_bulkdata", "retrieve_metadata"]

_PLACEHOLDER = "urn:dicomweb-gateway:instance"
_BATCH = 32  # instances converted per worker-thread call


def instance_url(root: str, entry: CachedInstance) -> str:
    """The instance's own WADO-RS URL under the service root `root`."""
    return f"{root}/studies/{entry.study_uid}/series/{entry.series_uid}/instances/{entry.sop_instance_uid}"


def _build_metadata(path: Path) -> bytes:
    return orjson.dumps(instance_metadata(path, f"{_PLACEHOLDER}/bulkdata"))


def _metadata_batch(cache: InstanceCache, entries: Sequence[CachedInstance], root: str) -> list[bytes]:
    return [
        cache.sidecar(entry, ".json", _build_metadata).replace(
            _PLACEHOLDER.encode(), instance_url(root, entry).encode()
        )
        for entry in entries
    ]


async def retrieve_metadata(request: Request) -> Response:
    """``GET .../metadata`` at study, series and instance level: a DICOM JSON array."""
    require_json_accept(request)
    service: ServiceRoot = request.scope["gateway.service"]
    retrieval = service.upstream.retrieval
    entries = await retrieval.instances(parse_target(request))
    return StreamingResponse(_json_array(retrieval.cache, entries, service.root_url(request)), media_type=DICOM_JSON)


async def _json_array(cache: InstanceCache, entries: list[CachedInstance], root: str) -> AsyncIterator[bytes]:
    try:
        separator = b"["
        for start in range(0, len(entries), _BATCH):
            batch = entries[start : start + _BATCH]
            for document in await anyio.to_thread.run_sync(_metadata_batch, cache, batch, root):
                yield separator + document
                separator = b","
        yield b"]" if separator == b"," else b"[]"
    finally:
        for entry in entries:
            cache.release(entry)


async def retrieve_bulkdata(request: Request) -> Response:
    """``GET .../instances/{instance}/bulkdata/{path}``: one bulk data value (PS3.18 §10.4.1.1.5).

    Answered as ``multipart/related; type="application/octet-stream"`` (one part, or one part per
    frame of encapsulated pixel data), or as a bare ``application/octet-stream`` when that is
    what the client asks for.
    """
    accepted = [r.media_type for r in parse_accept(request.headers.get("accept"))]
    single = "application/octet-stream" in accepted and "multipart/related" not in accepted
    if not single and not {"multipart/related", "*/*", "multipart/*"} & set(accepted):
        raise NotAcceptable('bulk data is served as multipart/related; type="application/octet-stream"')
    service: ServiceRoot = request.scope["gateway.service"]
    retrieval = service.upstream.retrieval
    entry = await retrieval.instance(parse_target(request))
    try:
        chunks = await anyio.to_thread.run_sync(iter_bulkdata, entry.path, request.path_params["tag_path"])
    except BaseException:
        retrieval.cache.release(entry)
        raise
    if single:
        body = _raw(retrieval.cache, entry, iter(chunks))
        return StreamingResponse(body, media_type="application/octet-stream")
    writer = MultipartWriter("application/octet-stream")
    body = _parts(retrieval.cache, entry, iter(chunks), writer, encapsulated=_is_encapsulated(request, entry))
    return StreamingResponse(body, headers={"Content-Type": writer.content_type})


def _is_encapsulated(request: Request, entry: CachedInstance) -> bool:
    return request.path_params["tag_path"].upper() == "7FE00010" and UID(entry.transfer_syntax).is_encapsulated


async def _raw(cache: InstanceCache, entry: CachedInstance, chunks: Iterator[bytes]) -> AsyncIterator[bytes]:
    try:
        while (chunk := await anyio.to_thread.run_sync(next, chunks, None)) is not None:
            yield chunk
    finally:
        cache.release(entry)


async def _parts(
    cache: InstanceCache, entry: CachedInstance, chunks: Iterator[bytes], writer: MultipartWriter, *, encapsulated: bool
) -> AsyncIterator[bytes]:
    """One part per chunk for encapsulated frames; otherwise one part for the whole value.

    The length of a large value is not known before it is read, so a single part goes without
    Content-Length (multipart framing does not need it).
    """
    try:
        if encapsulated:
            while (frame := await anyio.to_thread.run_sync(next, chunks, None)) is not None:
                yield writer.part_header(len(frame)) + frame + writer.part_end()
        else:
            yield writer.part_header(None)
            while (chunk := await anyio.to_thread.run_sync(next, chunks, None)) is not None:
                yield chunk
            yield writer.part_end()
        yield writer.close()
    finally:
        cache.release(entry)

"""WADO-RS frames (PS3.18 §10.4.1.1.7): one instance from the cache, its frames as multipart/related.

A viewer asks for one frame per request; the instance is retrieved alone the first time (never
its whole series) and every later frame of it is read from the cache.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import anyio.to_thread
from pydicom.uid import UID
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from gateway.retrieve.cache import CachedInstance, InstanceCache
from gateway.retrieve.multipart import MultipartWriter
from gateway.routes.common import ServiceRoot, work_limits
from gateway.routes.metadata import instance_url
from gateway.routes.wado import parse_target
from gateway.wado.accept import parse_accept
from gateway.wado.frames import decodes, frame_geometry, negotiate_frame_encoding, parse_frame_numbers, read_frames

__all__ = ["retrieve_frames"]


async def retrieve_frames(request: Request) -> Response:
    """``GET .../instances/{instance}/frames/{frames}``."""
    numbers = parse_frame_numbers(request.path_params["frames"])
    parse_accept(request.headers.get("accept"))  # a malformed Accept is a 400 before anything is retrieved
    limits = work_limits(request)
    limits.check_frames(len(numbers))
    target = parse_target(request)
    service: ServiceRoot = request.scope["gateway.service"]
    retrieval = service.upstream.retrieval
    entry = await retrieval.instance(target)
    try:
        stored = UID(entry.transfer_syntax)
        encoding = negotiate_frame_encoding(request.headers.get("accept"), stored)
        if decodes(encoding, stored):
            _, samples = await anyio.to_thread.run_sync(frame_geometry, entry.path)
            limits.check_decoding(samples * len(numbers))
        frames = await anyio.to_thread.run_sync(read_frames, entry.path, numbers, encoding)
    except BaseException:
        retrieval.cache.release(entry)
        raise
    writer = MultipartWriter(encoding.media_type)
    location = instance_url(service.root_url(request), entry) + "/frames/"
    body = _parts(retrieval.cache, entry, iter(frames), numbers, writer, encoding.content_type, location)
    return StreamingResponse(body, headers={"Content-Type": writer.content_type})


async def _parts(
    cache: InstanceCache,
    entry: CachedInstance,
    frames: Iterator[bytes],
    numbers: list[int],
    writer: MultipartWriter,
    content_type: str,
    location: str,
) -> AsyncIterator[bytes]:
    try:
        for number in numbers:
            frame = await anyio.to_thread.run_sync(next, frames)
            yield writer.part_header(len(frame), content_type=content_type, location=f"{location}{number}")
            yield frame
            yield writer.part_end()
        yield writer.close()
    finally:
        cache.release(entry)

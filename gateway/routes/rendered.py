"""WADO-RS rendered and thumbnail resources (PS3.18 §10.4.1.1.3, §10.4.1.1.4), from the instance cache.

- An instance renders as one picture (a multi-frame instance as one picture per frame, in a
  multipart/related answer); a frame list as one picture per frame.
- A series or study renders as one picture per instance (its first frame), multipart/related.
- A thumbnail is one small picture: of the frame, of the instance (its middle frame), of the
  series (its middle instance), of the study (the middle instance of its first series). Only
  that one instance is retrieved, found by C-FIND, unless the series is already in the cache.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace

import anyio.to_thread
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from gateway.errors import BadRequest, NotFound
from gateway.retrieve.cache import CachedInstance
from gateway.retrieve.multipart import MultipartWriter
from gateway.retrieve.service import RetrieveService, Target
from gateway.routes.common import ServiceRoot, work_limits
from gateway.routes.wado import parse_target
from gateway.wado.frames import frame_geometry, parse_frame_numbers
from gateway.wado.limits import WorkLimits
from gateway.wado.render import THUMBNAIL_SIZE, RenderOptions, Viewport, parse_render_options, render_frame

__all__ = ["retrieve_rendered", "retrieve_thumbnail"]


def _options(request: Request) -> RenderOptions:
    return parse_render_options(request.query_params.multi_items(), request.headers.get("accept"))


def _headers(request: Request, options: RenderOptions) -> dict[str, str]:
    host = request.url.hostname or "gateway"
    warnings = [f'299 {host}: "{text}"' for text in options.warnings]
    return {"Warning": ", ".join(warnings)} if warnings else {}


def _check_viewport(limits: WorkLimits, options: RenderOptions) -> None:
    if options.viewport is not None:
        limits.check_viewport(options.viewport.width, options.viewport.height)


def _images(entries: list[CachedInstance]) -> tuple[list[CachedInstance], int]:
    """Those of `entries` that have pixel data, and the samples rendering the first frame of each decodes."""
    images, samples = [], 0
    for entry in entries:
        try:
            samples += frame_geometry(entry.path)[1]
        except BadRequest:  # no pixel data (a report, a presentation state...): not a picture
            continue
        images.append(entry)
    return images, samples


async def retrieve_rendered(request: Request) -> Response:
    """``GET .../rendered`` at study, series, instance and frame level."""
    options = _options(request)
    limits = work_limits(request)
    _check_viewport(limits, options)
    target = parse_target(request)
    listed = parse_frame_numbers(request.path_params["frames"]) if "frames" in request.path_params else None
    if listed is not None:
        limits.check_frames(len(listed))
    service: ServiceRoot = request.scope["gateway.service"]
    retrieval = service.upstream.retrieval
    headers = _headers(request, options)
    if target.instance is None:
        entries = await retrieval.instances(target)
        try:
            images, samples = await anyio.to_thread.run_sync(_images, entries)
            if not images:
                raise BadRequest(f"no instance of {target} has pixel data to render")
            limits.check_frames(len(images))
            limits.check_decoding(samples)
        except BaseException:
            for entry in entries:
                retrieval.cache.release(entry)
            raise
        pictures = [(entry, 1) for entry in images]
    else:
        entry = await retrieval.instance(target)
        entries = [entry]
        try:
            count, samples = await anyio.to_thread.run_sync(frame_geometry, entry.path)
            numbers = listed if listed is not None else list(range(1, count + 1))
            limits.check_frames(len(numbers))
            limits.check_decoding(samples * len(numbers))
        except BaseException:
            retrieval.cache.release(entry)
            raise
        pictures = [(entry, number) for number in numbers]
        if len(pictures) == 1:
            try:
                image = await anyio.to_thread.run_sync(render_frame, entry.path, numbers[0], options)
            finally:
                retrieval.cache.release(entry)
            return Response(image, media_type=options.media_type, headers=headers)
    writer = MultipartWriter(options.media_type)
    headers["Content-Type"] = writer.content_type
    return StreamingResponse(_pictures(retrieval, entries, pictures, options, writer), headers=headers)


async def _pictures(
    retrieval: RetrieveService,
    entries: list[CachedInstance],
    pictures: list[tuple[CachedInstance, int]],
    options: RenderOptions,
    writer: MultipartWriter,
) -> AsyncIterator[bytes]:
    try:
        for entry, number in pictures:
            image = await anyio.to_thread.run_sync(render_frame, entry.path, number, options)
            yield writer.part_header(len(image)) + image + writer.part_end()
        yield writer.close()
    finally:
        for entry in entries:
            retrieval.cache.release(entry)


async def retrieve_thumbnail(request: Request) -> Response:
    """``GET .../thumbnail`` at study, series, instance and frame level: one small picture."""
    options = _options(request)
    limits = work_limits(request)
    _check_viewport(limits, options)
    options = replace(options, viewport=options.viewport or Viewport(THUMBNAIL_SIZE, THUMBNAIL_SIZE))
    target = parse_target(request)
    listed = parse_frame_numbers(request.path_params["frames"]) if "frames" in request.path_params else None
    service: ServiceRoot = request.scope["gateway.service"]
    retrieval = service.upstream.retrieval
    entry = await retrieval.instance(await _representative(retrieval, target))
    try:
        count, samples = await anyio.to_thread.run_sync(frame_geometry, entry.path)
        limits.check_decoding(samples)
        number = listed[0] if listed is not None else (count + 1) // 2
        image = await anyio.to_thread.run_sync(render_frame, entry.path, number, options)
    finally:
        retrieval.cache.release(entry)
    return Response(image, media_type=options.media_type, headers=_headers(request, options))


async def _representative(retrieval: RetrieveService, target: Target) -> Target:
    """The instance whose picture stands for `target`: the middle one of the (first) series."""
    if target.instance is not None:
        return target
    series = target.series
    if series is None:
        all_series = await retrieval.series_of_study(target.study)
        if not all_series:
            raise NotFound(f"the PACS has no {target}")
        series = all_series[0]
    instances = await retrieval.instances_of_series(target.study, series)
    if not instances:
        raise NotFound(f"the PACS has no {Target(target.study, series)}")
    return Target(target.study, series, instances[len(instances) // 2])

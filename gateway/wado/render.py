"""The rendered and thumbnail resources: a frame as a consumer image (PS3.18 §8.3.5, §10.4.1.1.3-4).

A frame becomes an 8-bit picture the way a viewer displays it (PS3.3 C.11, the grayscale
pipeline): the Modality LUT (Rescale Slope and Intercept, or a Modality LUT Sequence), then the
VOI window (the request's ``window``, else the instance's first Window Center and Width with its
VOI LUT Function, else the frame's minimum to maximum), then MONOCHROME1 inverted. Colour frames
come out of pydicom's decoders as RGB whatever their photometric interpretation and planar
configuration; PALETTE COLOR goes through its palette. Then the ``viewport`` region is cut out,
flipped when its width or height is negative, and scaled to fit the viewport with its aspect
ratio kept. Pillow encodes the result.

Left out: burned-in annotations (the parameter is checked, then reported as ignored in
:attr:`RenderOptions.warnings`, which a route sends as ``Warning: 299``), VOI LUT Sequences,
presentation states, ICC profiles, non-square pixels, and the per-frame functional groups of
enhanced multi-frame images (their rescale and window come from the top-level attributes, if any).
"""

from __future__ import annotations

import io
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.pixels.processing import apply_color_lut, apply_modality_lut

from gateway.errors import BadRequest, NotAcceptable
from gateway.numbers import parse_integer
from gateway.wado.accept import parse_accept
from gateway.wado.pixels import StoredPixels

__all__ = [
    "DEFAULT_QUALITY",
    "RENDERED_MEDIA_TYPES",
    "THUMBNAIL_SIZE",
    "RenderOptions",
    "Viewport",
    "Window",
    "parse_render_options",
    "render_frame",
    "render_thumbnail",
]

RENDERED_MEDIA_TYPES = ("image/jpeg", "image/png", "image/gif")
"""What a frame can be rendered as, the default first (PS3.18 Table 8.7.4-1, single frame image)."""

DEFAULT_QUALITY = 90
"""JPEG quality when the request has no ``quality``."""

THUMBNAIL_SIZE = 128
"""A thumbnail without a ``viewport`` fits in a square this many pixels wide."""

_PILLOW_FORMATS = {"image/png": "PNG", "image/gif": "GIF"}
_WINDOW_FUNCTIONS = {"linear": "linear", "linear-exact": "linear-exact", "sigmoid": "sigmoid"}
_VOI_LUT_FUNCTIONS = {"LINEAR": "linear", "LINEAR_EXACT": "linear-exact", "SIGMOID": "sigmoid"}
_ANNOTATIONS = frozenset({"patient", "technique"})


@dataclass(frozen=True)
class Window:
    """A VOI window (PS3.3 C.11.2.1.2): ``window=center,width[,function]``."""

    center: float
    width: float
    function: str = "linear"


@dataclass(frozen=True)
class Viewport:
    """``viewport=vw,vh[,sx,sy,sw,sh]``: the largest size of the answer, and the region of the frame shown.

    Omitted region values are None: the region starts at the top left corner and runs to the
    frame's right and bottom edges. A negative region width or height flips the image.
    """

    width: int
    height: int
    x: int | None = None
    y: int | None = None
    region_width: int | None = None
    region_height: int | None = None


@dataclass(frozen=True)
class RenderOptions:
    """How to render: the parsed query parameters and the negotiated media type.

    Attributes
    ----------
    media_type : str
        One of :data:`RENDERED_MEDIA_TYPES`.
    window, viewport : Window or None, Viewport or None
        None when the request has no such parameter.
    quality : int
        JPEG quality, 1 to 100.
    warnings : tuple of str
        Valid parameters that were not applied, for a ``Warning: 299`` header each.
    """

    media_type: str = "image/jpeg"
    window: Window | None = None
    viewport: Viewport | None = None
    quality: int = DEFAULT_QUALITY
    warnings: tuple[str, ...] = ()


_DECIMAL = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]{1,3})?", re.ASCII)


def _number(name: str, text: str) -> float:
    stripped = text.strip(" ")
    if len(stripped) > 32 or not _DECIMAL.fullmatch(stripped):
        raise BadRequest(f"{name}: {text[:40]!r} is not a number (ASCII decimal, at most 32 characters)")
    value = float(stripped)
    if not math.isfinite(value):
        raise BadRequest(f"{name}: {text!r} is not a finite number")
    return value


def _integer(name: str, text: str) -> int:
    return parse_integer(text, name, signed=True)


def _parse_window(text: str) -> Window:
    parts = text.split(",")
    if len(parts) not in (2, 3):
        raise BadRequest(f"window: {text!r} is not center,width[,function]")
    center, width = _number("window", parts[0]), _number("window", parts[1])
    function = _WINDOW_FUNCTIONS.get(parts[2].strip().lower()) if len(parts) == 3 else "linear"
    if function is None:
        raise BadRequest(f"window: function {parts[2]!r} is not linear, linear-exact or sigmoid")
    if width < 1 if function == "linear" else width <= 0:
        raise BadRequest(f"window: width {parts[1]} is too small for {function} (PS3.3 C.11.2.1.2)")
    return Window(center, width, function)


def _parse_viewport(text: str) -> Viewport:
    parts = text.split(",")
    if len(parts) not in (2, 6):
        raise BadRequest(f"viewport: {text!r} is not vw,vh or vw,vh,sx,sy,sw,sh")
    width, height = (_integer("viewport", part) for part in parts[:2])
    if width < 1 or height < 1:
        raise BadRequest(f"viewport: {width}x{height} is not a size in pixels")
    region = [_integer("viewport", part) if part.strip() else None for part in parts[2:]]
    x, y, region_width, region_height = region or (None, None, None, None)
    if (x is not None and x < 0) or (y is not None and y < 0) or region_width == 0 or region_height == 0:
        raise BadRequest(f"viewport: region {','.join(parts[2:])} is not sx,sy >= 0 and sw,sh not 0")
    return Viewport(width, height, x, y, region_width, region_height)


def _parse_quality(text: str) -> int:
    quality = _integer("quality", text)
    if not 1 <= quality <= 100:
        raise BadRequest(f"quality: {quality} is not from 1 to 100")
    return quality


def _negotiate(accept: str | None) -> str:
    for media_range in parse_accept(accept):
        kind = media_range.media_type
        if kind in RENDERED_MEDIA_TYPES:
            return kind
        if kind in ("*/*", "image/*"):
            return RENDERED_MEDIA_TYPES[0]
    raise NotAcceptable(f"cannot render as {accept!r}; available: {', '.join(RENDERED_MEDIA_TYPES)}")


def parse_render_options(params: Iterable[tuple[str, str]], accept: str | None) -> RenderOptions:
    """The rendering a request asks for, from its query parameters and Accept header.

    Parameters
    ----------
    params : iterable of (str, str)
        Every query parameter, repeated ones included (Starlette's ``query_params.multi_items()``).
    accept : str or None
        The Accept header; missing, ``*/*`` and ``image/*`` select ``image/jpeg``.

    Raises
    ------
    BadRequest
        A parameter is unknown, repeated or malformed; the message names it.
    NotAcceptable
        The Accept header admits none of :data:`RENDERED_MEDIA_TYPES`.
    """
    values: dict[str, str] = {}
    for name, value in params:
        if name not in ("window", "viewport", "quality", "annotation"):
            raise BadRequest(f"{name}: not a parameter of rendered resources (window, viewport, quality, annotation)")
        if name in values:
            raise BadRequest(f"{name}: given more than once")
        values[name] = value
    options = RenderOptions(media_type=_negotiate(accept))
    warnings = []
    if "window" in values:
        options = replace(options, window=_parse_window(values["window"]))
    if "viewport" in values:
        options = replace(options, viewport=_parse_viewport(values["viewport"]))
    if "quality" in values:
        options = replace(options, quality=_parse_quality(values["quality"]))
        if options.media_type != "image/jpeg":
            warnings.append(f"quality applies to image/jpeg only; {options.media_type} is lossless")
    if "annotation" in values:
        unknown = set(values["annotation"].split(",")) - _ANNOTATIONS
        if unknown:
            raise BadRequest(f"annotation: {', '.join(sorted(unknown))} is not patient or technique")
        warnings.append("annotation is not supported; the image has none burned in")
    return replace(options, warnings=tuple(warnings))


def _first(value: Any) -> float | None:
    if value is None or value == "":
        return None
    return float(value[0] if isinstance(value, MultiValue | list) else value)


def _instance_window(dataset: Dataset) -> Window | None:
    center, width = _first(dataset.get("WindowCenter")), _first(dataset.get("WindowWidth"))
    if center is None or width is None or width <= 0:
        return None
    function = _VOI_LUT_FUNCTIONS.get(str(dataset.get("VOILUTFunction", "LINEAR")).upper(), "linear")
    return Window(center, max(width, 1.0) if function == "linear" else width, function)


def _windowed(values: np.ndarray[Any, Any], window: Window) -> np.ndarray[Any, Any]:
    """`values` through `window`, from 0 to 1 (PS3.3 C.11.2.1.2.1, C.11.2.1.3.1, C.11.2.1.3.2)."""
    center, width = window.center, window.width
    if window.function == "sigmoid":
        return 1.0 / (1.0 + np.exp(-4.0 * (values - center) / width))
    if window.function == "linear-exact":
        return np.clip((values - center) / width + 0.5, 0.0, 1.0)
    if width == 1:
        return (values > center - 0.5).astype(np.float64)
    return np.clip((values - (center - 0.5)) / (width - 1) + 0.5, 0.0, 1.0)


def _grayscale(array: np.ndarray[Any, Any], dataset: Dataset, window: Window | None) -> np.ndarray[Any, Any]:
    values = np.asarray(apply_modality_lut(array, dataset), dtype=np.float64)
    window = window or _instance_window(dataset)
    if window is None:
        low, high = float(values.min()), float(values.max())
        window = Window((low + high) / 2, max(high - low, 1e-6), "linear-exact")
    shown: np.ndarray[Any, Any] = np.rint(_windowed(values, window) * 255).astype(np.uint8)
    return np.invert(shown) if dataset.get("PhotometricInterpretation") == "MONOCHROME1" else shown  # 255 - x


def _display(array: np.ndarray[Any, Any], dataset: Dataset, window: Window | None) -> np.ndarray[Any, Any]:
    """The decoded frame as 8-bit grayscale (rows, columns) or RGB (rows, columns, 3)."""
    if dataset.get("PhotometricInterpretation") == "PALETTE COLOR":
        array = apply_color_lut(array, dataset)
        return (array >> 8 if array.dtype.itemsize > 1 else array).astype(np.uint8)
    if array.ndim == 3:
        bits = int(dataset.get("BitsStored", 8))
        return (array >> (bits - 8) if bits > 8 else array).astype(np.uint8)
    return _grayscale(array, dataset, window)


def _apply_viewport(array: np.ndarray[Any, Any], viewport: Viewport) -> Image.Image:
    rows, columns = array.shape[:2]
    x = viewport.x or 0
    y = viewport.y or 0
    width = viewport.region_width if viewport.region_width is not None else columns - x
    height = viewport.region_height if viewport.region_height is not None else rows - y
    left, right = sorted((x, x + width))
    top, bottom = sorted((y, y + height))
    if left < 0 or top < 0 or right > columns or bottom > rows or left == right or top == bottom:
        raise BadRequest(f"viewport: region {x},{y},{width},{height} is not inside the {columns}x{rows} frame")
    region = array[top:bottom, left:right][:: -1 if height < 0 else 1, :: -1 if width < 0 else 1]
    scale = min(viewport.width / abs(width), viewport.height / abs(height))
    size = (max(1, round(abs(width) * scale)), max(1, round(abs(height) * scale)))
    return Image.fromarray(np.ascontiguousarray(region)).resize(size, Image.Resampling.LANCZOS)


def _render(pixels: StoredPixels, frame_number: int, options: RenderOptions) -> bytes:
    shown = _display(pixels.decoded_frame(pixels.frame_index(frame_number)), pixels.dataset, options.window)
    picture = _apply_viewport(shown, options.viewport) if options.viewport else Image.fromarray(shown)
    buffer = io.BytesIO()
    if options.media_type == "image/jpeg":
        picture.save(buffer, "JPEG", quality=options.quality)
    else:
        picture.save(buffer, _PILLOW_FORMATS[options.media_type])
    return buffer.getvalue()


def render_frame(path: Path, frame_number: int, options: RenderOptions) -> bytes:
    """Frame `frame_number` (1-based) of the image at `path`, rendered as `options` say.

    Returns
    -------
    bytes
        The encoded picture, of media type ``options.media_type``.

    Raises
    ------
    BadRequest
        The instance has no pixel data, `frame_number` is out of range (PS3.18 §9.5.2), or the
        viewport region is not inside the frame.
    """
    with StoredPixels(path) as pixels:
        return _render(pixels, frame_number, options)


def render_thumbnail(path: Path, options: RenderOptions) -> bytes:
    """A thumbnail of the image at `path`: its middle frame, fitting in :data:`THUMBNAIL_SIZE` unless a viewport says.

    Raises
    ------
    BadRequest
        As :func:`render_frame`.
    """
    with StoredPixels(path) as pixels:
        viewport = options.viewport or Viewport(THUMBNAIL_SIZE, THUMBNAIL_SIZE)
        return _render(pixels, (pixels.number_of_frames + 1) // 2, replace(options, viewport=viewport))

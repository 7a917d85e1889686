"""Rendered and thumbnail images (PS3.18 §8.3.5): parameters, the grayscale pipeline, colour, viewport, encoding."""

from __future__ import annotations

import io
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.uid import RLELossless

from gateway.errors import BadRequest, NotAcceptable
from gateway.wado.render import (
    RenderOptions,
    Viewport,
    Window,
    parse_render_options,
    render_frame,
    render_thumbnail,
)
from tests.images import compressed, image, jpeg_baseline, write

PNG = RenderOptions(media_type="image/png")


def _pixels(encoded: bytes) -> np.ndarray[Any, Any]:
    return np.asarray(Image.open(io.BytesIO(encoded)))


def _linear(x: np.ndarray[Any, Any], center: float, width: float) -> np.ndarray[Any, Any]:
    """PS3.3 C.11.2.1.2.1, written as the standard writes it, to 0..255."""
    y = ((x - (center - 0.5)) / (width - 1) + 0.5) * 255
    y = np.where(x <= center - 0.5 - (width - 1) / 2, 0, y)
    y = np.where(x > center - 0.5 + (width - 1) / 2, 255, y)
    return np.rint(y).astype(np.uint8)


@pytest.fixture
def ramp_file(tmp_path: Path) -> Path:
    """4 rows of 0, 4, 8 ... 1020 (256 columns), with a rescale and the instance's own window."""
    ds = image(np.tile(np.arange(0, 1024, 4, dtype=np.uint16), (4, 1)), bits_stored=12)
    ds.RescaleSlope, ds.RescaleIntercept = 2, -100
    ds.WindowCenter, ds.WindowWidth = [900, 300], [501, 100]
    return write(ds, tmp_path)


def test_window_from_the_request_applies_to_rescaled_values(ramp_file: Path) -> None:
    rendered = _pixels(render_frame(ramp_file, 1, RenderOptions("image/png", window=Window(512, 257))))
    rescaled = np.arange(0, 1024, 4) * 2 - 100
    assert rendered.shape == (4, 256)
    assert (rendered == _linear(rescaled, 512, 257)).all()
    assert rendered[0, 0] == 0 and rendered[0, -1] == 255 and 0 < rendered[0, 80] < 255


def test_instance_window_first_value_is_the_default(ramp_file: Path) -> None:
    rendered = _pixels(render_frame(ramp_file, 1, PNG))
    assert (rendered[0] == _linear(np.arange(0, 1024, 4) * 2 - 100, 900, 501)).all()


def test_without_any_window_the_frame_spans_min_to_max(tmp_path: Path) -> None:
    path = write(image(np.tile(np.arange(100, 356, dtype=np.uint16), (2, 1)), bits_stored=12), tmp_path)
    rendered = _pixels(render_frame(path, 1, PNG))
    assert rendered[0, 0] == 0 and rendered[0, -1] == 255
    assert (np.diff(rendered[0].astype(int)) >= 0).all()


@pytest.mark.parametrize("function", ["linear-exact", "sigmoid"])
def test_other_voi_functions_are_half_way_at_the_center(ramp_file: Path, function: str) -> None:
    rendered = _pixels(render_frame(ramp_file, 1, RenderOptions("image/png", window=Window(500, 200, function))))
    rescaled = np.arange(0, 1024, 4) * 2 - 100
    assert rendered[0, rescaled == 500] == 128
    assert rendered[0, 0] < 5 and rendered[0, -1] > 250


def test_monochrome1_is_inverted(tmp_path: Path) -> None:
    pixels = np.tile(np.arange(0, 256, dtype=np.uint16), (2, 1))
    ds = image(pixels, bits_stored=8)
    ds.WindowCenter, ds.WindowWidth = 128, 256
    normal = _pixels(render_frame(write(ds, tmp_path, "m2.dcm"), 1, PNG))
    ds.PhotometricInterpretation = "MONOCHROME1"
    inverted = _pixels(render_frame(write(ds, tmp_path, "m1.dcm"), 1, PNG))
    assert (inverted == 255 - normal).all() and normal[0, 0] == 0


def test_rgb_with_planar_configuration_1(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    pixels = rng.integers(0, 256, (6, 5, 3), dtype=np.uint8)
    ds = image(pixels, "RGB", 8)
    ds.PlanarConfiguration = 1
    ds.PixelData = pixels.transpose(2, 0, 1).tobytes()
    rendered = _pixels(render_frame(write(ds, tmp_path), 1, PNG))
    assert (rendered == pixels).all()


def test_ybr_jpeg_comes_out_rgb(tmp_path: Path) -> None:
    pixels = np.zeros((16, 16, 3), np.uint8)
    pixels[..., 2] = 220  # blue
    rendered = _pixels(render_frame(write(jpeg_baseline(pixels, "RGB"), tmp_path), 1, PNG))
    assert np.abs(rendered.astype(int) - pixels).max() < 4


def test_palette_color_goes_through_its_palette(tmp_path: Path) -> None:
    indices = np.array([[0, 1], [2, 3]], np.uint8)
    ds = image(indices, "PALETTE COLOR", 8)
    for colour, entries in (("Red", [0, 65535, 0, 0]), ("Green", [0, 0, 65535, 0]), ("Blue", [0, 0, 0, 65535])):
        setattr(ds, f"{colour}PaletteColorLookupTableDescriptor", [4, 0, 16])
        setattr(ds, f"{colour}PaletteColorLookupTableData", np.array(entries, np.uint16).tobytes())
    rendered = _pixels(render_frame(write(ds, tmp_path), 1, PNG))
    assert rendered.tolist() == [[[0, 0, 0], [255, 0, 0]], [[0, 255, 0], [0, 0, 255]]]


def test_compressed_frames_are_decoded_then_rendered(tmp_path: Path) -> None:
    frames = np.stack([np.full((64, 64), value, np.uint16) for value in (10, 20, 30)])
    frames[:, 0, 0] = 0
    ds = compressed(image(frames, bits_stored=12), RLELossless)
    rendered = _pixels(render_frame(write(ds, tmp_path), 3, RenderOptions("image/png", window=Window(15, 10))))
    assert rendered[1, 1] == 255 and rendered[0, 0] == 0


def test_viewport_keeps_the_aspect_ratio(tmp_path: Path) -> None:
    path = write(image(np.zeros((32, 64), np.uint16), bits_stored=12), tmp_path)
    assert Image.open(io.BytesIO(render_frame(path, 1, RenderOptions(viewport=Viewport(32, 32))))).size == (32, 16)
    assert Image.open(io.BytesIO(render_frame(path, 1, RenderOptions(viewport=Viewport(640, 40))))).size == (80, 40)


def test_viewport_region_is_cut_out_and_flipped(tmp_path: Path) -> None:
    pixels = np.arange(64 * 48, dtype=np.uint16).reshape(48, 64)
    path = write(image(pixels, bits_stored=12), tmp_path)
    options = RenderOptions("image/png", window=Window(1536, 3072, "linear-exact"))
    whole = _pixels(render_frame(path, 1, options))

    def cut(viewport: Viewport) -> np.ndarray[Any, Any]:
        return _pixels(render_frame(path, 1, replace(options, viewport=viewport)))

    assert (cut(Viewport(20, 10, 4, 8, 20, 10)) == whole[8:18, 4:24]).all()
    assert (cut(Viewport(20, 10, 24, 8, -20, 10)) == whole[8:18, 4:24][:, ::-1]).all()
    assert (cut(Viewport(20, 10, 4, 18, 20, -10)) == whole[8:18, 4:24][::-1]).all()
    assert (cut(Viewport(60, 40, 4, 8)) == whole[8:, 4:]).all()


def test_viewport_region_outside_the_frame_is_bad_request(tmp_path: Path) -> None:
    path = write(image(np.zeros((32, 64), np.uint16), bits_stored=12), tmp_path)
    with pytest.raises(BadRequest, match="viewport: region 60,0,10,10 is not inside the 64x32 frame"):
        render_frame(path, 1, RenderOptions(viewport=Viewport(10, 10, 60, 0, 10, 10)))


@pytest.mark.parametrize(
    ("media_type", "format_name"), [("image/jpeg", "JPEG"), ("image/png", "PNG"), ("image/gif", "GIF")]
)
def test_each_media_type_is_what_it_says(ramp_file: Path, media_type: str, format_name: str) -> None:
    picture = Image.open(io.BytesIO(render_frame(ramp_file, 1, RenderOptions(media_type))))
    assert picture.format == format_name and picture.size == (256, 4)


def test_quality_changes_the_jpeg_size(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    path = write(image(rng.integers(0, 4096, (128, 128), dtype=np.uint16), bits_stored=12), tmp_path)
    low = render_frame(path, 1, RenderOptions(quality=10))
    high = render_frame(path, 1, RenderOptions(quality=95))
    assert len(low) * 2 < len(high)


def test_thumbnail_is_the_middle_frame_fitting_the_default_size(tmp_path: Path) -> None:
    frames = np.stack([np.full((300, 200), value, np.uint16) for value in (0, 1000, 2000, 3000)])
    ds = image(frames, bits_stored=12)
    ds.WindowCenter, ds.WindowWidth = 1500, 3000
    path = write(ds, tmp_path)
    thumbnail = _pixels(render_thumbnail(path, PNG))
    assert thumbnail.shape == (128, 85)
    assert abs(int(thumbnail[40, 40]) - _linear(np.array([1000]), 1500, 3000)[0]) <= 1
    assert _pixels(render_thumbnail(path, RenderOptions("image/png", viewport=Viewport(30, 30)))).shape == (30, 20)


def test_frame_out_of_range_and_non_image(tmp_path: Path, ramp_file: Path) -> None:
    with pytest.raises(BadRequest, match="frame 2 is out of range"):
        render_frame(ramp_file, 2, PNG)
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = "1.2.840.10008.5.1.4.1.1.88.11", "1.2.3"
    ds.file_meta = image(np.zeros((2, 2), np.uint8)).file_meta
    with pytest.raises(BadRequest, match="has no pixel data"):
        render_thumbnail(write(ds, tmp_path, "sr.dcm"), PNG)


def test_parameters() -> None:
    options = parse_render_options(
        [("window", "40,400,SIGMOID"), ("viewport", "512,256,,,100,-50"), ("quality", "70")],
        "image/webp, image/png;q=0.8, image/jpeg;q=0.5",
    )
    assert options == RenderOptions(
        media_type="image/png",
        window=Window(40, 400, "sigmoid"),
        viewport=Viewport(512, 256, None, None, 100, -50),
        quality=70,
        warnings=("quality applies to image/jpeg only; image/png is lossless",),
    )
    assert parse_render_options([], None) == RenderOptions()
    assert parse_render_options([("window", "-600.5,1e3")], "image/*").window == Window(-600.5, 1000, "linear")
    annotated = parse_render_options([("annotation", "patient,technique")], "*/*")
    assert annotated.warnings == ("annotation is not supported; the image has none burned in",)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ([("window", "40")], "window: '40' is not center,width"),
        ([("window", "40,abc")], "window: 'abc' is not a number"),
        ([("window", "40,nan")], "window: 'nan' is not a number"),
        ([("window", "40,1e999")], "window: '1e999' is not a finite number"),
        ([("window", "40,0.5")], "window: width 0.5 is too small for linear"),
        ([("window", "40,0,sigmoid")], "window: width 0 is too small for sigmoid"),
        ([("window", "40,400,cubic")], "window: function 'cubic'"),
        ([("viewport", "512")], "viewport: '512' is not vw,vh"),
        ([("viewport", "0,512")], "viewport: 0x512 is not a size"),
        ([("viewport", "512,512,-1,0,10,10")], "viewport: region -1,0,10,10"),
        ([("viewport", "512,512,0,0,0,10")], "viewport: region 0,0,0,10"),
        ([("viewport", "5.5,512")], "viewport: '5.5' is not an integer"),
        ([("quality", "0")], "quality: 0 is not from 1 to 100"),
        ([("quality", "high")], "quality: 'high' is not an integer"),
        ([("annotation", "patient,watermark")], "annotation: watermark"),
        ([("quality", "50"), ("quality", "60")], "quality: given more than once"),
        ([("iccprofile", "yes")], "iccprofile: not a parameter"),
    ],
)
def test_bad_parameters_are_bad_requests_naming_the_parameter(params: list[tuple[str, str]], message: str) -> None:
    with pytest.raises(BadRequest, match=message.replace("(", r"\(")):
        parse_render_options(params, None)


@pytest.mark.parametrize("accept", ["image/webp", "application/dicom", "image/jpeg;q=0", "text/html, image/bmp"])
def test_unsupported_media_type_is_not_acceptable(accept: str) -> None:
    with pytest.raises(NotAcceptable, match="available: image/jpeg, image/png, image/gif"):
        parse_render_options([], accept)


def test_signed_pixels(tmp_path: Path) -> None:
    ds = image(np.tile(np.arange(-1000, 1000, 8, dtype=np.int16), (2, 1)), bits_stored=16)
    rendered = _pixels(render_frame(write(ds, tmp_path), 1, RenderOptions("image/png", window=Window(0, 1000))))
    assert rendered[0, 0] == 0 and rendered[0, -1] == 255 and rendered[0, 125] == 128

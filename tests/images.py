"""Images for the WADO-RS tests, made with pydicom's own encoders (and Pillow for baseline JPEG)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import UID, ExplicitVRLittleEndian, JPEGBaseline8Bit, generate_uid

SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
MULTIFRAME_GRAYSCALE_WORD = "1.2.840.10008.5.1.4.1.1.7.3"


def image(pixels: np.ndarray[Any, Any], photometric: str = "MONOCHROME2", bits_stored: int | None = None) -> Dataset:
    """A minimal image instance holding `pixels` ((frames,) rows, columns (, samples)), natively encoded."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = (
        MULTIFRAME_GRAYSCALE_WORD if pixels.ndim == 3 and photometric.startswith("MONO") else SECONDARY_CAPTURE
    )
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientName = "Pixels^Test"
    ds.Modality = "OT"
    ds.set_pixel_data(pixels, photometric, bits_stored or pixels.dtype.itemsize * 8)
    return ds


def ramp(rows: int = 64, columns: int = 64, frames: int = 1, maximum: int = 4095) -> np.ndarray[Any, Any]:
    """uint16 frames whose values climb along each row (and differ from frame to frame)."""
    base = np.linspace(0, maximum, rows * columns).reshape(rows, columns)
    stack = np.stack([(base + 7 * index) % (maximum + 1) for index in range(frames)]).astype(np.uint16)
    return stack[0] if frames == 1 else stack


def jpeg_baseline(pixels: np.ndarray[Any, Any], photometric: str = "MONOCHROME2") -> Dataset:
    """An 8-bit image encoded frame by frame with Pillow as JPEG Baseline and encapsulated.

    Colour frames are encoded by Pillow as YCbCr with 4:2:0 subsampling switched off, stored as YBR_FULL.
    """
    frames = pixels if pixels.ndim == (4 if photometric == "RGB" else 3) else pixels[np.newaxis]
    encoded = []
    for frame in frames:
        buffer = io.BytesIO()
        Image.fromarray(frame).save(buffer, format="JPEG", quality=90, subsampling=0)
        encoded.append(buffer.getvalue())
    ds = image(pixels, photometric, 8)
    ds.PixelData = encapsulate(encoded)
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.PhotometricInterpretation = "YBR_FULL" if photometric == "RGB" else photometric
    ds.LossyImageCompression = "01"
    return ds


def compressed(ds: Dataset, transfer_syntax: UID, **kwargs: Any) -> Dataset:
    """`ds` re-encoded in `transfer_syntax` by pydicom's encoders."""
    ds.compress(transfer_syntax, generate_instance_uid=False, **kwargs)
    return ds


def write(ds: Dataset, directory: Path, name: str = "instance.dcm") -> Path:
    """Write `ds` as a Part 10 file; returns its path."""
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    path = directory / name
    ds.save_as(path, enforce_file_format=True)
    return path

"""Re-encoding an instance into Explicit VR Little Endian, the WADO-RS default transfer syntax.

Only what is lossless: an uncompressed instance in another byte layout is rewritten, and a
compressed one is decoded with pydicom's pixel data plugins (pylibjpeg and its codecs). Nothing is
ever encoded lossy. Works on one instance at a time, so memory is bounded by the largest instance.
"""

from __future__ import annotations

import io
from pathlib import Path

from pydicom import dcmread
from pydicom.uid import UID, ExplicitVRLittleEndian

__all__ = ["TranscodeError", "to_explicit_little_endian"]


class TranscodeError(ValueError):
    """The instance cannot be given in the transfer syntax asked for."""


def to_explicit_little_endian(path: Path) -> bytes:
    """The Part 10 bytes of the instance at `path`, in Explicit VR Little Endian (blocking).

    Raises
    ------
    TranscodeError
        Its pixel data cannot be decoded (no plugin for its transfer syntax, or corrupt data).
    """
    ds = dcmread(path)
    syntax = UID(ds.file_meta.TransferSyntaxUID)
    try:
        if syntax.is_compressed:
            ds.decompress(generate_instance_uid=False)  # the same instance, only decoded
        else:
            ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    except Exception as exc:  # the pixel data plugins raise many kinds of errors
        raise TranscodeError(f"cannot decode {syntax.name} pixel data: {exc}") from exc
    buffer = io.BytesIO()
    ds.save_as(buffer, implicit_vr=False, little_endian=True, enforce_file_format=True)
    return buffer.getvalue()

"""What the gateway must know about an uploaded instance before it sends it: read from its header only."""

from __future__ import annotations

import shutil
from pathlib import Path

from gateway.part10 import InstanceHeader, read_instance_header

__all__ = ["read_upload_header"]

_PREAMBLE = bytes(128) + b"DICM"
_FILE_META_START = b"\x02\x00"  # the first tag of group 0002, little endian


def read_upload_header(path: Path) -> InstanceHeader:
    """The identifying attributes of the uploaded part at `path` (see :func:`read_instance_header`).

    A file that starts with its File Meta Information but lacks the 128-byte preamble and the
    ``DICM`` prefix (what pydicom's ``dcmwrite`` writes by default, and so what dicomweb-client
    uploads) is given them first, so that it can be sent from the file as it is.

    Raises
    ------
    gateway.part10.NotDicom
        Not a Part 10 instance with the UIDs the gateway needs.
    """
    _add_missing_preamble(path)
    return read_instance_header(path)


def _add_missing_preamble(path: Path) -> None:
    with path.open("rb") as source:
        start = source.read(len(_PREAMBLE))
        if start[128:] == b"DICM" or not start.startswith(_FILE_META_START):
            return
        source.seek(0)
        complete = path.with_name(path.name + ".p10")
        with complete.open("wb") as target:
            target.write(_PREAMBLE)
            shutil.copyfileobj(source, target, 1 << 20)
    complete.replace(path)

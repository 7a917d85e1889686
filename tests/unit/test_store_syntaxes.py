"""Which transfer syntaxes an uploaded instance may be sent in: lossless conversions only."""

from __future__ import annotations

import pytest
from pydicom.uid import (
    JPEG2000,
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGBaseline8Bit,
    JPEGLosslessSV1,
    RLELossless,
)

from gateway.dimse.store import StoreResult, proposed_syntaxes

DEFLATED = DeflatedExplicitVRLittleEndian


@pytest.mark.parametrize(
    ("stored", "proposed"),
    [
        (ExplicitVRLittleEndian, (ExplicitVRLittleEndian, ImplicitVRLittleEndian)),
        (ImplicitVRLittleEndian, (ImplicitVRLittleEndian, ExplicitVRLittleEndian)),
        (
            DeflatedExplicitVRLittleEndian,
            (DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian),
        ),
        (RLELossless, (RLELossless, ExplicitVRLittleEndian, ImplicitVRLittleEndian)),  # pydicom decodes RLE itself
        # lossless, and pylibjpeg-libjpeg decodes it (a runtime dependency)
        (JPEGLosslessSV1, (JPEGLosslessSV1, ExplicitVRLittleEndian, ImplicitVRLittleEndian)),
        (JPEGBaseline8Bit, (JPEGBaseline8Bit,)),  # lossy: never converted
        (JPEG2000, (JPEG2000,)),  # may be lossy
        (UID("1.2.3.4.5"), (UID("1.2.3.4.5"),)),
    ],
)
def test_proposed_syntaxes(stored: UID, proposed: tuple[UID, ...]) -> None:
    assert proposed_syntaxes(stored) == proposed


@pytest.mark.parametrize(
    ("status", "answered", "stored", "warning"),
    [
        (0x0000, True, True, False),
        (0xB000, True, True, True),
        (0xB007, True, True, True),
        (0xA700, True, False, False),
        (0xC000, True, False, False),
        (0x0110, False, False, False),
    ],
)
def test_store_result(status: int, answered: bool, stored: bool, warning: bool) -> None:
    result = StoreResult(status, "", answered=answered)
    assert (result.stored, result.warning) == (stored, warning)

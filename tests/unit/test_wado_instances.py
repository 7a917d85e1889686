"""Accept negotiation for WADO-RS instances (PS3.18 §8.7.3)."""

from __future__ import annotations

import pytest

from gateway.errors import NotAcceptable
from gateway.wado.instances import negotiate_instances

EXPLICIT = "1.2.840.10008.1.2.1"


@pytest.mark.parametrize(
    ("accept", "syntax"),
    [
        ("", EXPLICIT),
        ("*/*", EXPLICIT),
        ('multipart/related; type="application/dicom"', EXPLICIT),
        ("multipart/related; type=application/dicom; transfer-syntax=*", "*"),
        (f'multipart/related; type="application/dicom"; transfer-syntax={EXPLICIT}', EXPLICIT),
        # dicomweb-client lists several; the first the gateway can honour wins.
        (
            'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.4.90, '
            'multipart/related; type="application/dicom"; transfer-syntax=*',
            "*",
        ),
        (
            'multipart/related; type="application/dicom"; transfer-syntax=*; q=0.5, '
            f'multipart/related; type="application/dicom"; transfer-syntax={EXPLICIT}',
            EXPLICIT,
        ),
    ],
)
def test_honoured_accept_headers(accept: str, syntax: str) -> None:
    assert negotiate_instances(accept).transfer_syntax == syntax


@pytest.mark.parametrize(
    "accept",
    [
        'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.4.50',
        'multipart/related; type="application/dicom+xml"',
        "application/json",
        'multipart/related; type="application/dicom"; transfer-syntax=*; q=0',
    ],
)
def test_what_cannot_be_served_is_406(accept: str) -> None:
    with pytest.raises(NotAcceptable):
        negotiate_instances(accept)

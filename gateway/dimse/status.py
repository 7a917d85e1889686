"""DIMSE statuses (PS3.7 Annex C) and their translation into gateway errors.

This is the one place where what pynetdicom reports (a status Dataset, an empty Dataset after a
timeout or abort, a refused association) becomes a :mod:`gateway.errors` exception.
"""

from __future__ import annotations

from gateway.errors import UpstreamError, UpstreamFailureStatus, UpstreamTimeout, UpstreamUnavailable

__all__ = ["CANCEL", "PENDING", "SUCCESS", "describe_status", "failure_for_status", "no_response_error"]

SUCCESS = 0x0000
CANCEL = 0xFE00
PENDING = frozenset({0xFF00, 0xFF01})

_MEANINGS = {
    0xA700: "refused: out of resources",
    0xA701: "refused: out of resources, unable to calculate number of matches",
    0xA702: "refused: out of resources, unable to perform sub-operations",
    0xA801: "refused: move destination unknown",
    0xA900: "identifier does not match SOP class",
    0x0122: "SOP class not supported",
    0x0110: "processing failure",
    0x0211: "unrecognized operation",
    0xB000: "sub-operations complete, one or more failures or warnings",
}


def describe_status(code: int) -> str:
    """A short human reading of a DIMSE status code."""
    if code in _MEANINGS:
        return _MEANINGS[code]
    if 0xC000 <= code <= 0xCFFF:
        return "unable to process"
    return "failure"


def failure_for_status(code: int, *, operation: str, upstream: str) -> UpstreamFailureStatus:
    """The error for a DIMSE failure status answered by the PACS."""
    return UpstreamFailureStatus(
        f"{operation} failed with status 0x{code:04X} ({describe_status(code)})", upstream=upstream, status=code
    )


def no_response_error(*, operation: str, upstream: str, timed_out: bool) -> UpstreamError:
    """The error for an operation that ended without a final status (timeout or abort)."""
    if timed_out:
        return UpstreamTimeout(f"{operation}: the PACS did not answer in time", upstream=upstream)
    return UpstreamUnavailable(f"{operation}: the PACS aborted the association", upstream=upstream)

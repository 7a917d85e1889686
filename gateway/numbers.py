"""Integers from request text (paths, query parameters): ASCII digits only, and never too many.

``int()`` takes any Unicode decimal digit ("١٢", "１２") and refuses more than 4,300 digits with a
``ValueError``; ``str.isdecimal`` and the regex ``\\d`` accept the same digits. A request number
goes through :func:`parse_integer` instead, so that both are a 400 naming the parameter, and a
number that reaches the PACS or a frame index is always plain ASCII.
"""

from __future__ import annotations

import re

from gateway.errors import BadRequest

__all__ = ["parse_integer"]

_SIGNED = re.compile(r"[+-]?[0-9]+", re.ASCII)
_UNSIGNED = re.compile(r"[0-9]+", re.ASCII)


def parse_integer(text: str, what: str, *, signed: bool = False, max_digits: int = 9) -> int:
    """`text` as an integer of at most `max_digits` ASCII digits (surrounding blanks allowed).

    Raises
    ------
    BadRequest
        `text` is not such an integer; the message names `what`.
    """
    stripped = text.strip(" ")
    pattern = _SIGNED if signed else _UNSIGNED
    kind = "an integer" if signed else "a non-negative integer"
    if not pattern.fullmatch(stripped):
        raise BadRequest(f"{what}: {_shown(text)} is not {kind} (ASCII digits)")
    if len(stripped.lstrip("+-")) > max_digits:
        raise BadRequest(f"{what}: {_shown(text)} has more than {max_digits} digits")
    return int(stripped)


def _shown(text: str) -> str:
    """`text` quoted for an error message, cut short when long."""
    return repr(text) if len(text) <= 40 else repr(text[:40]) + f"... ({len(text)} characters)"

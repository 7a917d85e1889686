"""Settings from environment variables, for containers that run without a configuration file.

Every key of the TOML configuration has a variable, derived from its path, so that a table or key
added to the configuration is covered without code here:

- ``GATEWAY_<KEY>`` sets ``[gateway] key`` (``GATEWAY_PORT=8080``, ``GATEWAY_CACHE_DIR=/cache``);
- ``GATEWAY_<TABLE>__<KEY>`` sets ``[table] key``, and each further ``__`` goes one table deeper
  (``GATEWAY_UPSTREAMS__ARCHIVE__DIMSE_TIMEOUT=60`` is ``[upstreams.archive] dimse_timeout``,
  ``GATEWAY_UPSTREAMS__MAIN__CAPABILITIES__RELATIONAL=false``);
- ``GATEWAY_UPSTREAM=[NAME=]AET@HOST:PORT`` is the ``--upstream`` flag and ``GATEWAY_CONFIG`` the
  ``--config`` flag.

Names are case-insensitive after the prefix; an empty value counts as unset. A value is converted
to the type of the key it sets when the caller knows it (see :func:`environment_document`), else
read as a TOML value when it is one (``8080``, ``true``, ``["a", "b"]``, ``"quoted"``) and kept as
text otherwise.
"""

from __future__ import annotations

import tomllib
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["CONFIG_VARIABLE", "PREFIX", "UPSTREAM_VARIABLE", "VariableError", "environment_document"]

PREFIX = "GATEWAY_"
CONFIG_VARIABLE = "GATEWAY_CONFIG"
UPSTREAM_VARIABLE = "GATEWAY_UPSTREAM"
_NOT_SETTINGS = frozenset({CONFIG_VARIABLE, UPSTREAM_VARIABLE})
_DESCRIPTIONS: dict[object, str] = {
    int: "a whole number",
    float: "a number",
    bool: "true or false",
    tuple: "a TOML array or comma-separated values",
    list: "a TOML array or comma-separated values",
}

KeyType = Callable[[tuple[str, ...]], object]
"""Given a key's path (``("gateway", "port")``), the type its value must have, or None if unknown."""


class VariableError(ValueError):
    """A ``GATEWAY_*`` variable cannot be read; the message names it."""


def environment_document(environ: Mapping[str, str], key_type: KeyType) -> dict[str, Any]:
    """The configuration the ``GATEWAY_*`` variables of `environ` describe, as nested tables.

    The result has the shape of a parsed TOML configuration, to be laid over the file's.
    """
    document: dict[str, Any] = {}
    for variable in sorted(environ):
        value = environ[variable]
        if not variable.upper().startswith(PREFIX) or variable.upper() in _NOT_SETTINGS or value == "":
            continue
        path = tuple(part.lower() for part in variable[len(PREFIX) :].split("__"))
        if any(not part for part in path):
            raise VariableError(f"{variable}: empty name between '__' separators")
        if len(path) == 1:
            path = ("gateway", *path)
        table = document
        for part in path[:-1]:
            nested = table.setdefault(part, {})
            if not isinstance(nested, dict):
                raise VariableError(f"{variable}: {'.'.join(path[:-1])} is set both as a value and as a table")
            table = nested
        table[path[-1]] = _convert(variable, value, key_type(path))
    return document


def _convert(variable: str, text: str, expected: object) -> Any:
    if isinstance(expected, types.UnionType) or typing.get_origin(expected) is typing.Union:
        options = [option for option in typing.get_args(expected) if option is not type(None)]
        expected = options[0] if len(options) == 1 else None
    origin = typing.get_origin(expected)
    try:
        if expected is str or origin is typing.Literal:
            return text
        if expected is bool:
            return _boolean(text)
        if expected is int:
            return int(text)
        if expected is float:
            return float(text)
        if origin in (tuple, list):
            return _toml_value(text) if text.lstrip().startswith("[") else [v.strip() for v in text.split(",")]
    except ValueError as exc:
        wanted = _DESCRIPTIONS.get(origin or expected, str(expected))
        raise VariableError(f"{variable}={text!r}: expected {wanted}") from exc
    return _toml_value(text, fallback=True)


def _boolean(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("true", "1", "yes", "on"):
        return True
    if lowered in ("false", "0", "no", "off"):
        return False
    raise ValueError(text)


def _toml_value(text: str, *, fallback: bool = False) -> Any:
    try:
        return tomllib.loads(f"value = {text}")["value"]
    except tomllib.TOMLDecodeError:
        if fallback:
            return text
        raise ValueError(text) from None

"""Task groups whose failures reach the client as the gateway's own errors.

anyio raises every failure of a task group wrapped in an :class:`ExceptionGroup`, even a single
one. A fan-out of C-FINDs that meets a busy pool fails in several tasks at once with
:class:`~gateway.errors.PoolExhausted`; unwrapped, that group is a 500 instead of the 503 each
member means. :func:`gateway_errors_unwrapped` re-raises the first :class:`GatewayError` of a
group made only of gateway errors; a group holding anything else is a bug and stays as it is.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from gateway.errors import GatewayError

__all__ = ["first_gateway_error", "gateway_errors_unwrapped"]


def _leaves(group: BaseExceptionGroup[BaseException]) -> Iterator[BaseException]:
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            yield from _leaves(exc)
        else:
            yield exc


def first_gateway_error(group: BaseExceptionGroup[BaseException]) -> GatewayError | None:
    """The first gateway error of `group` if every failure in it (nested groups too) is one, else None."""
    leaves = list(_leaves(group))
    if not leaves or not all(isinstance(exc, GatewayError) for exc in leaves):
        return None
    first = leaves[0]
    assert isinstance(first, GatewayError)
    return first


@contextmanager
def gateway_errors_unwrapped() -> Iterator[None]:
    """Around a task group: re-raise a group of gateway errors as its first one."""
    try:
        yield
    except BaseExceptionGroup as group:
        error = first_gateway_error(group)
        if error is None:
            raise
        raise error from group

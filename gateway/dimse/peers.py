"""Which network addresses an upstream PACS may send C-MOVE instances from.

A C-STORE's calling AE title and Move Originator fields are whatever the sender writes: anyone who
can reach the storage SCP can copy them. The sender's address is harder to forge over TCP, so an
instance for a C-MOVE is only taken from the addresses of the upstream that the move went to: its
``host``, resolved, plus its ``move_source_hosts`` (host names, IP addresses or CIDR networks, or
``*`` for any address) for a PACS that sends from another address than it listens on.

Host names are resolved when a move starts (in its worker thread) and again after
:data:`RESOLVE_TTL` seconds, so a PACS whose address changes is followed.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import threading
import time
from dataclasses import dataclass

from gateway.settings import UpstreamSettings

__all__ = ["RESOLVE_TTL", "SourceAddresses", "normalize_address"]

logger = logging.getLogger(__name__)

RESOLVE_TTL = 60.0
"""Seconds a resolved set of addresses is trusted before the names are resolved again."""

_Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def normalize_address(address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The IP address of a peer, IPv4-mapped IPv6 addresses as IPv4; None if it is not an IP address."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


@dataclass(frozen=True)
class _Resolved:
    networks: tuple[_Network, ...]
    any_address: bool
    at: float


class SourceAddresses:
    """The addresses one upstream's C-MOVE instances may come from (thread-safe)."""

    def __init__(self, settings: UpstreamSettings) -> None:
        self.upstream = settings.name
        self._names = (settings.host, *settings.move_source_hosts)
        self._lock = threading.Lock()
        self._resolved: _Resolved | None = None

    def refresh(self) -> None:
        """Resolve the names now if the last resolution is older than :data:`RESOLVE_TTL` (blocking)."""
        with self._lock:
            current = self._resolved
        if current is not None and time.monotonic() - current.at < RESOLVE_TTL:
            return
        resolved = self._resolve()
        with self._lock:
            self._resolved = resolved

    def admits(self, address: str) -> bool:
        """True if a peer at `address` may send this upstream's instances."""
        with self._lock:
            resolved = self._resolved
        if resolved is None:
            self.refresh()
            with self._lock:
                resolved = self._resolved
        assert resolved is not None
        if resolved.any_address:
            return True
        ip = normalize_address(address)
        return ip is not None and any(ip in network for network in resolved.networks)

    def _resolve(self) -> _Resolved:
        networks: list[_Network] = []
        any_address = False
        for name in self._names:
            if name == "*":
                any_address = True
                continue
            try:
                networks.append(ipaddress.ip_network(name, strict=False))
                continue
            except ValueError:
                pass  # a host name
            try:
                infos = socket.getaddrinfo(name, None, type=socket.SOCK_STREAM)
            except OSError as exc:
                logger.warning(
                    "upstream %s: cannot resolve %r; C-MOVE instances from it will be refused: %s",
                    self.upstream,
                    name,
                    exc,
                )
                continue
            for info in infos:
                ip = normalize_address(str(info[4][0]))
                if ip is not None:
                    networks.append(ipaddress.ip_network(ip))
        return _Resolved(tuple(dict.fromkeys(networks)), any_address, time.monotonic())

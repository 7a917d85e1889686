"""The running upstreams: DIMSE clients (queries, stores) and a capability tracker per configured PACS."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from types import TracebackType

from gateway.dimse.client import UpstreamClient
from gateway.dimse.store import StoreClient
from gateway.search.capabilities import CapabilityTracker
from gateway.settings import Settings

__all__ = ["Upstream", "Upstreams"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Upstream:
    """One configured PACS, ready to query and to store into."""

    name: str
    client: UpstreamClient
    capabilities: CapabilityTracker
    store: StoreClient


class Upstreams:
    """All upstreams of a gateway; opens their pools on enter and closes them on exit."""

    def __init__(self, settings: Settings) -> None:
        self._by_name = {
            u.name: Upstream(
                name=u.name,
                client=UpstreamClient(
                    u, settings.ae_title, fuzzy_matching=bool(u.configured_capabilities.fuzzy_matching)
                ),
                capabilities=CapabilityTracker(u),
                store=StoreClient(u, settings.ae_title),
            )
            for u in settings.upstreams
        }
        self.default = self._by_name[settings.default_upstream.name]
        self._stack = AsyncExitStack()

    def __iter__(self) -> Iterator[Upstream]:
        return iter(self._by_name.values())

    def get(self, name: str) -> Upstream | None:
        """The upstream called `name`, if configured."""
        return self._by_name.get(name)

    async def __aenter__(self) -> Upstreams:
        for upstream in self._by_name.values():
            await self._stack.enter_async_context(upstream.client)
            await self._stack.enter_async_context(upstream.store)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._stack.aclose()
        logger.info("upstream associations closed")

"""The running upstreams: per configured PACS, its DIMSE clients (query, retrieve, store), capabilities and cache."""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from gateway.dimse.client import UpstreamClient
from gateway.dimse.retrieve import RetrieveClient
from gateway.dimse.store import StoreClient
from gateway.dimse.storescp import MoveRouter, StorageServer
from gateway.retrieve.cache import InstanceCache
from gateway.retrieve.service import RetrieveService
from gateway.search.aggregates import StaleAggregates
from gateway.search.capabilities import CapabilityTracker
from gateway.settings import Settings

__all__ = ["Upstream", "Upstreams"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Upstream:
    """One configured PACS, ready to query, retrieve from and store into."""

    name: str
    client: UpstreamClient
    capabilities: CapabilityTracker
    retrieval: RetrieveService
    store: StoreClient
    stale_aggregates: StaleAggregates


class Upstreams:
    """All upstreams of a gateway; opens their pools (and the storage SCP) on enter, closes them on exit."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._temporary_cache = not settings.cache_dir
        self.cache_dir = Path(settings.cache_dir or tempfile.mkdtemp(prefix="dicomweb-gateway-cache-"))
        moving = [u for u in settings.upstreams if u.retrieve == "move"]
        self.router = MoveRouter(settings.ae_title, moving) if moving else None
        self.storage_server = StorageServer(settings, self.router, moving) if self.router is not None else None
        share = settings.cache_max_bytes // len(settings.upstreams)
        self._by_name: dict[str, Upstream] = {}
        for u in settings.upstreams:
            client = UpstreamClient(u, settings.ae_title, fuzzy_matching=bool(u.configured_capabilities.fuzzy_matching))
            cache = InstanceCache(self.cache_dir / u.name, share, settings.cache_ttl)
            retriever = RetrieveClient(client, settings.ae_title, self.router)
            self._by_name[u.name] = Upstream(
                name=u.name,
                client=client,
                capabilities=CapabilityTracker(u),
                retrieval=RetrieveService(retriever, client, cache),
                store=StoreClient(u, settings.ae_title),
                stale_aggregates=StaleAggregates(u.name),
            )
        self.default = self._by_name[settings.default_upstream.name]
        self._stack = AsyncExitStack()

    def __iter__(self) -> Iterator[Upstream]:
        return iter(self._by_name.values())

    def get(self, name: str) -> Upstream | None:
        """The upstream called `name`, if configured."""
        return self._by_name.get(name)

    async def __aenter__(self) -> Upstreams:
        if self.storage_server is not None:
            self.storage_server.start()
            self._stack.callback(self.storage_server.stop)
        if self._temporary_cache:
            self._stack.callback(shutil.rmtree, self.cache_dir, True)
        for upstream in self._by_name.values():
            await self._stack.enter_async_context(upstream.client)
            await self._stack.enter_async_context(upstream.retrieval.retriever)
            await self._stack.enter_async_context(upstream.store)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._stack.aclose()
        logger.info("upstream associations closed")

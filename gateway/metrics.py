"""The gateway's Prometheus metrics: one registry, its metric objects, and the ASGI middleware that times requests.

Code anywhere in the gateway records into the objects below (``DIMSE_OPERATIONS.labels(...).observe(s)``);
``GET /metrics`` renders :data:`REGISTRY` together with the live state of the running upstreams
(pool sizes, cache bytes), which :class:`UpstreamsCollector` reads at scrape time. A new subsystem
adds its metric here, registered with ``registry=REGISTRY``, with label values from a small, fixed
set: never a UID, a patient or a raw URL.

The middleware labels requests with the matched route's path template
(``/dicom-web/studies/{study}/series``), so the number of series stays bounded whatever clients ask.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, MutableMapping
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import anyio
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from gateway.errors import PoolExhausted, UpstreamTimeout

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

    from gateway.upstreams import Upstreams

__all__ = [
    "CONTENT_TYPE",
    "DIMSE_OPERATIONS",
    "HTTP_IN_FLIGHT",
    "HTTP_REQUESTS",
    "POOL_WAIT",
    "REGISTRY",
    "STORED_INSTANCES",
    "MetricsMiddleware",
    "DimseTimer",
    "UpstreamsCollector",
    "render",
    "time_dimse_operation",
]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

disable_created_metrics()  # type: ignore[no-untyped-call]  # no ``*_created`` series: twice the lines, and Prometheus does not use them

REGISTRY = CollectorRegistry(auto_describe=True)
"""Every metric of the gateway (not prometheus-client's global registry: tests build many apps)."""

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)

HTTP_REQUESTS = Histogram(
    "gateway_http_request_duration_seconds",
    "HTTP requests by method, route template and status, from the request to the last byte of the answer.",
    ("method", "route", "status"),
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)
HTTP_IN_FLIGHT = Gauge("gateway_http_requests_in_flight", "HTTP requests being answered.", registry=REGISTRY)
DIMSE_OPERATIONS = Histogram(
    "gateway_dimse_operation_duration_seconds",
    "DIMSE operations by upstream, kind (echo, find, get, move, store) and outcome "
    "(success, failure, cancelled, timeout, aborted, error), from acquiring an association to the final status.",
    ("upstream", "kind", "outcome"),
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)
POOL_WAIT = Histogram(
    "gateway_pool_acquire_wait_seconds",
    "Time an operation waited for a free association slot, by upstream and pool (query, retrieve, store).",
    ("upstream", "pool"),
    buckets=(0.001, 0.01, 0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
    registry=REGISTRY,
)
STORED_INSTANCES = Counter(
    "gateway_stow_instances",
    "Instances received by STOW-RS, by upstream and outcome (stored, warning, failed, not_dicom).",
    ("upstream", "outcome"),
    registry=REGISTRY,
)


class DimseTimer:
    """Times one DIMSE operation into :data:`DIMSE_OPERATIONS`; set :attr:`outcome` before it ends.

    An operation left by an exception counts as ``timeout``, ``pool_exhausted`` or ``error``
    (``cancelled`` when the request itself was cancelled), whatever :attr:`outcome` said.
    """

    def __init__(self, upstream: str, kind: str) -> None:
        self.upstream = upstream
        self.kind = kind
        self.outcome = "error"

    def __enter__(self) -> DimseTimer:
        self._started = time.perf_counter()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        if isinstance(exc, anyio.get_cancelled_exc_class()):
            self.outcome = "cancelled"
        elif exc is not None:
            self.outcome = next((name for kind, name in _EXCEPTION_OUTCOMES if isinstance(exc, kind)), "error")
        DIMSE_OPERATIONS.labels(self.upstream, self.kind, self.outcome).observe(time.perf_counter() - self._started)


_EXCEPTION_OUTCOMES = ((UpstreamTimeout, "timeout"), (PoolExhausted, "pool_exhausted"))


def time_dimse_operation(upstream: str, kind: str) -> DimseTimer:
    """A context manager timing one ``kind`` operation (echo, find, get, move, store) on `upstream`."""
    return DimseTimer(upstream, kind)


class UpstreamsCollector(Collector):
    """Pool and cache figures of the running upstreams, read when scraped."""

    def __init__(self, upstreams: Upstreams) -> None:
        self._upstreams = upstreams

    def collect(self) -> Iterator[Metric]:
        size = GaugeMetricFamily(
            "gateway_pool_associations",
            "Associations per pool by state (idle, in_use), and the pool's bound (max).",
            labels=("upstream", "pool", "state"),
        )
        waiting = GaugeMetricFamily(
            "gateway_pool_waiting", "Operations waiting for an association now.", labels=("upstream", "pool")
        )
        opened = CounterMetricFamily(
            "gateway_pool_associations_opened", "Associations opened.", labels=("upstream", "pool")
        )
        destroyed = CounterMetricFamily(
            "gateway_pool_associations_destroyed",
            "Associations aborted after a timeout, an abort or a cancel.",
            labels=("upstream", "pool"),
        )
        failed = CounterMetricFamily(
            "gateway_pool_open_failures", "Associations that could not be opened.", labels=("upstream", "pool")
        )
        cache_bytes = GaugeMetricFamily(
            "gateway_cache_bytes",
            "Bytes of instance files in the cache (used), and its bound (max).",
            labels=("upstream", "kind"),
        )
        cache_instances = GaugeMetricFamily("gateway_cache_instances", "Instances cached.", labels=("upstream",))
        lookups = CounterMetricFamily(
            "gateway_cache_lookups",
            "Cache lookups by result (hit, miss); the hit ratio is hit / (hit + miss).",
            labels=("upstream", "result"),
        )
        for upstream in self._upstreams:
            pools = (
                ("query", upstream.client.pool),
                ("retrieve", upstream.retrieval.retriever.pool),
                ("store", upstream.store.pool),
            )
            for kind, pool in pools:
                stats = pool.stats()
                labels = [upstream.name, kind]
                size.add_metric([*labels, "idle"], stats.idle)
                size.add_metric([*labels, "in_use"], stats.in_use)
                size.add_metric([*labels, "max"], stats.max_size)
                waiting.add_metric(labels, stats.waiting)
                opened.add_metric(labels, stats.opened)
                destroyed.add_metric(labels, stats.destroyed)
                failed.add_metric(labels, stats.failed_opens)
            cache = upstream.retrieval.cache
            counters = asdict(cache.counters)
            cache_bytes.add_metric([upstream.name, "used"], cache.size)
            cache_bytes.add_metric([upstream.name, "max"], cache.max_bytes)
            cache_instances.add_metric([upstream.name], len(cache))
            lookups.add_metric([upstream.name, "hit"], counters["hits"])
            lookups.add_metric([upstream.name, "miss"], counters["misses"])
        moves = GaugeMetricFamily("gateway_moves_in_flight", "C-MOVEs whose instances the storage SCP is waiting for.")
        moves.add_metric([], len(self._upstreams.router) if self._upstreams.router is not None else 0)
        yield from (size, waiting, opened, destroyed, failed, cache_bytes, cache_instances, lookups, moves)


def render(*registries: CollectorRegistry) -> bytes:
    """The Prometheus text exposition of :data:`REGISTRY` and `registries`."""
    return b"".join(generate_latest(registry) for registry in (REGISTRY, *registries))


Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class MetricsMiddleware:
    """Times every HTTP request into :data:`HTTP_REQUESTS`, by the route template the router matched.

    A plain ASGI middleware (not Starlette's ``BaseHTTPMiddleware``, which would buffer streamed
    answers through a queue): it only watches the ``http.response.*`` messages go by.
    """

    def __init__(self, app: ASGIApp, skip: Iterable[str] = ("/metrics",)) -> None:
        self.app = app
        self._skip = frozenset(skip)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self._skip:
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def watch(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        HTTP_IN_FLIGHT.inc()
        try:
            await self.app(scope, receive, watch)
        finally:
            HTTP_IN_FLIGHT.dec()
            path: str | None = getattr(scope.get("route"), "path", None)
            # Inside a Mount the route's path is relative: its prefix is what the Mount added to root_path.
            mount = scope.get("root_path", "")[len(scope.get("app_root_path", "")) :]
            template = mount + path if path is not None else "unmatched"
            HTTP_REQUESTS.labels(scope["method"], template, str(status)).observe(time.perf_counter() - started)

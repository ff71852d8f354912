"""/metrics in the Prometheus text format: the server's requests, decisions, and the state store's gauges.

Counters and the latency histogram live in a registry of this app (not the process-wide default one, so that
two apps in one process, as in tests, do not share them); the state gauges are read from the store when
Prometheus scrapes, so they are never stale.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from lg.runs.store import RunStore

Asgi = ASGIApp


class StateCollector(Collector):
    def __init__(self, store: Callable[[], RunStore]) -> None:
        self.store = store

    def collect(self) -> Iterator[GaugeMetricFamily]:
        db = self.store().connection
        runs = GaugeMetricFamily("lg_runs", "Runs in the state store by status", labels=["status"])
        for status, count in db.execute("SELECT status, count(*) FROM runs GROUP BY status").fetchall():
            runs.add_metric([str(status)], float(count))
        yield runs
        gates = GaugeMetricFamily("lg_gates", "Approval gates by status", labels=["status"])
        for status, count in db.execute("SELECT status, count(*) FROM gates GROUP BY status").fetchall():
            gates.add_metric([str(status)], float(count))
        yield gates


class Metrics:
    def __init__(self, store: Callable[[], RunStore]) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("lg_http_requests", "HTTP requests served", ["endpoint", "method", "status"],
                                registry=self.registry)
        self.latency = Histogram("lg_http_request_duration_seconds", "Time to serve a request", ["endpoint"],
                                 registry=self.registry,
                                 buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10))
        self.decisions = Counter("lg_decisions", "Decisions submitted, by result", ["result"],
                                 registry=self.registry)
        self.registry.register(StateCollector(store))

    def text(self) -> bytes:
        return generate_latest(self.registry)

    def middleware(self, app: Asgi) -> Asgi:
        """Count and time every HTTP request, labelled by the endpoint that served it."""

        async def measured(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != "http":
                await app(scope, receive, send)
                return
            started, status = time.perf_counter(), [500]

            async def sending(message: Message) -> None:
                if message["type"] == "http.response.start":
                    status[0] = int(message["status"])
                await send(message)

            try:
                await app(scope, receive, sending)
            finally:
                endpoint = scope.get("endpoint")
                name = getattr(endpoint, "__name__", "unmatched")
                self.requests.labels(name, scope.get("method", ""), str(status[0])).inc()
                self.latency.labels(name).observe(time.perf_counter() - started)

        return measured

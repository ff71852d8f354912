"""Pool metrics: counters, spawn-time histograms (with p50/p95 for people), and their Prometheus form."""

from __future__ import annotations

import threading
from collections import Counter, deque
from collections.abc import Iterable, Iterator
from typing import Any

SPAWN_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
LEASE_BUCKETS = (0.0001, 0.001, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0)
RECENT = 1000  # samples kept for percentiles


class Histogram:
    def __init__(self, buckets: tuple[float, ...]) -> None:
        self.buckets = buckets
        self.counts = [0] * len(buckets)
        self.count = 0
        self.total = 0.0
        self.recent: deque[float] = deque(maxlen=RECENT)

    def observe(self, value: float) -> None:
        self.count += 1
        self.total += value
        self.recent.append(value)
        for index, bound in enumerate(self.buckets):
            if value <= bound:
                self.counts[index] += 1

    def summary(self) -> dict[str, Any]:
        ordered = sorted(self.recent)
        return {"count": self.count, "mean": round(self.total / self.count, 4) if self.count else None,
                "p50": _percentile(ordered, 0.50), "p95": _percentile(ordered, 0.95)}


def _percentile(ordered: list[float], fraction: float) -> float | None:
    if not ordered:
        return None
    return round(ordered[min(len(ordered) - 1, int(fraction * len(ordered)))], 4)


class PoolMetrics:
    """Everything `lg pool status` and the /metrics endpoint show. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.leases: Counter[str] = Counter()  # by source: warm (idle VM), restored, cold
        self.failures: Counter[str] = Counter()  # by kind: template, restore, boot, lease_timeout
        self.fallbacks: deque[str] = deque(maxlen=20)  # why the last cold boots were cold, and failures
        self.spawn = {"cold": Histogram(SPAWN_BUCKETS), "restore": Histogram(SPAWN_BUCKETS)}
        self.lease_wait = Histogram(LEASE_BUCKETS)

    def leased(self, source: str, wait_seconds: float) -> None:
        with self._lock:
            self.leases[source] += 1
            self.lease_wait.observe(wait_seconds)

    def spawned(self, kind: str, seconds: float) -> None:
        with self._lock:
            self.spawn[kind].observe(seconds)

    def failed(self, kind: str, why: str | None = None) -> None:
        with self._lock:
            self.failures[kind] += 1
            if why:
                self.fallbacks.append(f"{kind}: {why}")

    def fell_back(self, why: str) -> None:
        """A cold boot where a restore was wanted, and why."""
        with self._lock:
            self.fallbacks.append(why)

    def to_json(self) -> dict[str, Any]:
        with self._lock:
            served = sum(self.leases.values())
            return {
                "leases": dict(self.leases), "leases_total": served,
                "from_pool_ratio": round(self.leases["warm"] / served, 3) if served else None,
                "failures": dict(self.failures), "recent_fallbacks": list(self.fallbacks),
                "spawn_seconds": {kind: histogram.summary() for kind, histogram in self.spawn.items()},
                "lease_wait_seconds": self.lease_wait.summary(),
            }

    def histograms(self) -> Iterator[tuple[str, dict[str, str], Histogram]]:
        with self._lock:
            for kind, histogram in self.spawn.items():
                yield "lg_pool_spawn_seconds", {"kind": kind}, histogram
            yield "lg_pool_lease_wait_seconds", {}, self.lease_wait


def prometheus_collector(metrics: PoolMetrics, gauges: Any) -> Any:
    """A prometheus_client collector over the pool's live numbers; `gauges()` gives the by-key gauges as
    (name, help, [(labels, value)])."""
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily  # noqa: PLC0415

    class Collector:
        def collect(self) -> Iterable[Any]:
            for name, help_text, samples in gauges():
                labels = sorted({key for sample_labels, _ in samples for key in sample_labels})
                family = GaugeMetricFamily(name, help_text, labels=labels)
                for sample_labels, value in samples:
                    family.add_metric([sample_labels.get(key, "") for key in labels], value)
                yield family
            leases = CounterMetricFamily("lg_pool_leases", "VMs leased, by where they came from", labels=["source"])
            failures = CounterMetricFamily("lg_pool_failures", "pool failures, by kind", labels=["kind"])
            with metrics._lock:
                for source in ("warm", "restored", "cold"):
                    leases.add_metric([source], metrics.leases[source])
                for kind, count in sorted(metrics.failures.items()):
                    failures.add_metric([kind], count)
            yield leases
            yield failures
            for name, histogram_labels, histogram in metrics.histograms():
                timing = HistogramMetricFamily(name, "seconds", labels=list(histogram_labels))
                buckets = [(str(bound), float(count)) for bound, count in zip(histogram.buckets, histogram.counts,
                                                                               strict=True)]
                buckets.append(("+Inf", float(histogram.count)))
                timing.add_metric(list(histogram_labels.values()), buckets, histogram.total)
                yield timing

    return Collector()

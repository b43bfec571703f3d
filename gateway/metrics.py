"""The gateway's metrics, exposed with ``prometheus_client`` (text format 0.0.4 at ``/metrics``).

The request path only bumps plain counters of :class:`Metrics` (no locks, no label lookups); a collector turns
them into metric families when scraped, so the exposition format, escaping and content type are the library's.
Counters only grow for the life of the process; gauges (backlog, lag) are the last sample of the backlog task.
Label values are bounded: routes are route templates, reasons are the ``code`` of a refusal, partitions are
numbers. No project or run name appears in a label (they are unbounded and may be sensitive).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

#: Upper bounds of the request latency histogram (seconds).
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

__all__ = ["BUCKETS", "CONTENT_TYPE_LATEST", "Metrics"]


@dataclass
class Metrics:
    requests: dict[tuple[str, str, int], int] = field(default_factory=lambda: defaultdict(int))
    request_bytes: int = 0
    frames: int = 0
    events: int = 0
    blobs: int = 0
    rejections: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    latency_buckets: list[int] = field(default_factory=lambda: [0] * len(BUCKETS))
    latency_count: int = 0
    latency_sum: float = 0.0
    #: Per partition: entries after the committed offset (estimate, see :mod:`gateway.backlog`).
    backlog: dict[int, int] = field(default_factory=dict)
    #: Per partition: milliseconds between the newest stream entry and the committed offset.
    lag_ms: dict[int, int] = field(default_factory=dict)
    #: Per partition: seconds since the owning worker last committed.
    commit_age_s: dict[int, float] = field(default_factory=dict)
    redis_up: int = 0

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        self.requests[(route, method, status)] += 1
        self.latency_count += 1
        self.latency_sum += seconds
        for i, bound in enumerate(BUCKETS):
            if seconds <= bound:
                self.latency_buckets[i] += 1
                break

    def reject(self, reason: str) -> None:
        self.rejections[reason] += 1

    def render(self) -> str:
        """The Prometheus text exposition of every metric."""
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Families(self))
        return generate_latest(registry).decode()


class _Families(Collector):
    def __init__(self, m: Metrics) -> None:
        self.m = m

    def collect(self) -> Iterator[Metric]:
        m = self.m
        c = CounterMetricFamily("stepline_gateway_requests_total",
                                "HTTP requests by route template, method and status.",
                                labels=["route", "method", "status"])
        for (route, method, status), n in sorted(m.requests.items()):
            c.add_metric([route, method, str(status)], n)
        yield c
        yield CounterMetricFamily("stepline_gateway_request_bytes_total", "Request body bytes received (as sent).",
                                  value=m.request_bytes)
        yield CounterMetricFamily("stepline_gateway_frames_total",
                                  "Frames accepted and appended to partition streams.", value=m.frames)
        yield CounterMetricFamily("stepline_gateway_events_total", "Events inside accepted frames.", value=m.events)
        yield CounterMetricFamily("stepline_gateway_blobs_total", "Media blobs stored.", value=m.blobs)
        c = CounterMetricFamily("stepline_gateway_rejections_total", "Refused requests by reason.", labels=["reason"])
        for reason, n in sorted(m.rejections.items()):
            c.add_metric([reason], n)
        yield c
        cum, buckets = 0, []
        for bound, n in zip(BUCKETS, m.latency_buckets, strict=True):
            cum += n
            buckets.append((str(bound), cum))
        buckets.append(("+Inf", m.latency_count))
        yield HistogramMetricFamily("stepline_gateway_request_seconds", "Request latency.", buckets=buckets,
                                    sum_value=m.latency_sum)
        for name, doc, values, scale in (
            ("stepline_stream_backlog_entries",
             "Entries of a partition stream after its committed offset (an upper-bound estimate).", m.backlog, 1.0),
            ("stepline_stream_lag_seconds",
             "Time between the newest entry of a partition stream and its committed offset.", m.lag_ms, 1e-3),
            ("stepline_partition_commit_age_seconds", "Seconds since a partition's last commit.",
             m.commit_age_s, 1.0),
        ):
            g = GaugeMetricFamily(name, doc, labels=["partition"])
            for part, v in sorted(values.items()):
                g.add_metric([str(part)], v * scale)
            yield g
        yield GaugeMetricFamily("stepline_gateway_redis_up", "1 when the last backlog sample reached Redis.",
                                value=m.redis_up)

"""A worker's own metrics, exposed with ``prometheus_client`` at ``/metrics`` (``--metrics-port``; off by default).

The worker bumps plain counters of :class:`WorkerMetrics`; a collector turns them and the worker's gauges into
metric families when scraped (the exposition format and escaping are the library's). Counters only grow for the
life of the process; gauges are read from the worker when scraped. Labels never carry project or run names
(unbounded cardinality), only partitions and rejection reasons.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from .worker import Worker

#: Upper bounds (seconds) of the commit latency histogram.
COMMIT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@dataclass
class WorkerMetrics:
    entries: int = 0
    dead_letters: int = 0
    rejections: dict[str, int] = field(default_factory=dict)
    commit_counts: list[int] = field(default_factory=lambda: [0] * (len(COMMIT_BUCKETS) + 1))
    commit_sum: float = 0.0
    last_commit: dict[int, float] = field(default_factory=dict)  # partition -> wall time of its last commit

    def observe_commit(self, p: int, seconds: float, rejections: list[str], dead_letters: int) -> None:
        i = next((k for k, b in enumerate(COMMIT_BUCKETS) if seconds <= b), len(COMMIT_BUCKETS))
        self.commit_counts[i] += 1
        self.commit_sum += seconds
        self.last_commit[p] = time.time()
        self.dead_letters += dead_letters
        for reason in rejections:
            self.rejections[reason] = self.rejections.get(reason, 0) + 1

    def render(self, w: Worker) -> str:
        """The Prometheus text exposition of the worker's metrics."""
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Families(self, w))
        return generate_latest(registry).decode()


class _Families(Collector):
    def __init__(self, m: WorkerMetrics, w: Worker) -> None:
        self.m, self.w = m, w

    def collect(self) -> Iterator[Metric]:
        m, w = self.m, self.w
        for name, doc, value in (
            ("stepline_worker_entries_total", "Stream entries read and applied.", m.entries),
            ("stepline_worker_commits_total", "Fenced metadata commits that succeeded.", w.commits),
            ("stepline_worker_fenced_total", "Commits refused because another worker took the partition.", w.fenced),
            ("stepline_worker_stream_gaps_total", "Entries trimmed before this worker read them.", w.stream_gaps),
            ("stepline_worker_archive_objects_total", "Stream archive objects written and recorded.",
             w.archive_objects),
            ("stepline_worker_archived_entries_total", "Stream entries archived before trimming.", w.archived_entries),
            ("stepline_worker_dead_letters_total", "Dead letters written (malformed input, rejections).",
             m.dead_letters),
        ):
            yield CounterMetricFamily(name, doc, value=value)
        c = CounterMetricFamily("stepline_worker_rejections_total", "Rejected log calls by reason.", labels=["reason"])
        for reason, n in sorted(m.rejections.items()):
            c.add_metric([reason], n)
        yield c
        cumulative, buckets = 0, []
        for bound, n in zip((*COMMIT_BUCKETS, float("inf")), m.commit_counts, strict=True):
            cumulative += n
            buckets.append(("+Inf" if bound == float("inf") else str(bound), cumulative))
        yield HistogramMetricFamily("stepline_worker_commit_seconds", "Time from a commit's start to its durable end.",
                                    buckets=buckets, sum_value=m.commit_sum)
        yield GaugeMetricFamily("stepline_worker_owned_partitions", "Partitions this worker owns.", value=len(w.owned))
        yield GaugeMetricFamily("stepline_worker_run_states", "Runs whose alignment state is held in memory.",
                                value=sum(len(proc.runs) for proc in w.owned.values()))
        yield CounterMetricFamily("stepline_worker_run_states_evicted",
                                  "Run states dropped from memory (committed, then idle, finished or over the cap) "
                                  "by the partitions this worker owns now.",
                                  value=sum(proc.evicted for proc in w.owned.values()))
        g = GaugeMetricFamily("stepline_worker_partition_uncommitted_entries",
                              "Entries read from an owned partition and not yet in a prepared commit.",
                              labels=["partition"])
        for p, proc in sorted(w.owned.items()):
            g.add_metric([str(p)], proc.entries_since_commit)
        yield g
        now = time.time()
        g = GaugeMetricFamily("stepline_worker_partition_commit_age_seconds",
                              "Seconds since an owned partition's last commit by this worker.", labels=["partition"])
        for p in sorted(w.owned):
            if p in m.last_commit:
                g.add_metric([str(p)], now - m.last_commit[p])
        yield g


async def serve(w: Worker, host: str, port: int) -> web.AppRunner:
    """Serve ``/metrics`` and ``/healthz`` for ``w``; the caller cleans the runner up."""

    async def metrics(_request: web.Request) -> web.Response:
        return web.Response(body=w.metrics.render(w).encode(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(_request: web.Request) -> web.Response:
        return web.json_response({"ok": True, "worker": w.id, "partitions": sorted(w.owned)})

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner

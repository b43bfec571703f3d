"""A worker's own metrics in Prometheus text format (``--metrics-port``; off by default).

Counters only grow for the life of the process; gauges are read from the worker when scraped. Labels never carry
project or run names (unbounded cardinality), only partitions and rejection reasons.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from aiohttp import web

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
        out: list[str] = []

        def metric(name: str, kind: str, doc: str, samples: list[tuple[str, float]]) -> None:
            out.append(f"# HELP {name} {doc}")
            out.append(f"# TYPE {name} {kind}")
            out.extend(f"{name}{labels} {value:g}" for labels, value in samples)

        metric("stepline_worker_entries_total", "counter", "Stream entries read and applied.", [("", self.entries)])
        metric("stepline_worker_commits_total", "counter", "Fenced metadata commits that succeeded.",
               [("", w.commits)])
        metric("stepline_worker_fenced_total", "counter", "Commits refused because another worker took the partition.",
               [("", w.fenced)])
        metric("stepline_worker_stream_gaps_total", "counter", "Entries trimmed before this worker read them.",
               [("", w.stream_gaps)])
        metric("stepline_worker_dead_letters_total", "counter", "Dead letters written (malformed input, rejections).",
               [("", self.dead_letters)])
        metric("stepline_worker_rejections_total", "counter", "Rejected log calls by reason.",
               [(f'{{reason="{r}"}}', n) for r, n in sorted(self.rejections.items())])
        cumulative, buckets = 0, []
        for bound, n in zip((*COMMIT_BUCKETS, float("inf")), self.commit_counts, strict=True):
            cumulative += n
            buckets.append((f'{{le="{"+Inf" if bound == float("inf") else bound}"}}', cumulative))
        out.append("# HELP stepline_worker_commit_seconds Time from a commit's start to its durable end.")
        out.append("# TYPE stepline_worker_commit_seconds histogram")
        out.extend(f"stepline_worker_commit_seconds_bucket{labels} {v}" for labels, v in buckets)
        out.append(f"stepline_worker_commit_seconds_sum {self.commit_sum:g}")
        out.append(f"stepline_worker_commit_seconds_count {cumulative}")
        metric("stepline_worker_owned_partitions", "gauge", "Partitions this worker owns.", [("", len(w.owned))])
        now = time.time()
        metric("stepline_worker_partition_uncommitted_entries", "gauge",
               "Entries read from an owned partition and not yet in a prepared commit.",
               [(f'{{partition="{p}"}}', proc.entries_since_commit) for p, proc in sorted(w.owned.items())])
        metric("stepline_worker_partition_commit_age_seconds", "gauge",
               "Seconds since an owned partition's last commit by this worker.",
               [(f'{{partition="{p}"}}', now - self.last_commit[p]) for p in sorted(w.owned) if p in self.last_commit])
        return "\n".join(out) + "\n"


async def serve(w: Worker, host: str, port: int) -> web.AppRunner:
    """Serve ``/metrics`` and ``/healthz`` for ``w``; the caller cleans the runner up."""

    async def metrics(_request: web.Request) -> web.Response:
        return web.Response(text=w.metrics.render(w), content_type="text/plain", charset="utf-8")

    async def healthz(_request: web.Request) -> web.Response:
        return web.json_response({"ok": True, "worker": w.id, "partitions": sorted(w.owned)})

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner

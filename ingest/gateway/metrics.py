"""Prometheus text exposition (format 0.0.4) of the gateway's counters, written by hand: no client library.

Counters only grow for the life of the process; gauges (backlog, lag) are the last sample of the backlog task.
Label values are bounded: routes are route templates, reasons are the ``code`` of a refusal, partitions are
numbers. No project or run name appears in a label (they are unbounded and may be sensitive).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

#: Upper bounds of the request latency histogram (seconds).
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def _labels(**kv: str | int) -> str:
    inner = ",".join(f'{k}="{_escape(str(v))}"' for k, v in kv.items())
    return "{" + inner + "}" if inner else ""


def _escape(v: str) -> str:
    return v.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


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
    #: Per partition: entries after the committed offset (estimate, see :mod:`ingest.gateway.backlog`).
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
        out: list[str] = []

        def head(name: str, kind: str, help_: str) -> None:
            out.append(f"# HELP {name} {help_}")
            out.append(f"# TYPE {name} {kind}")

        head("stepline_gateway_requests_total", "counter", "HTTP requests by route template, method and status.")
        for (route, method, status), n in sorted(self.requests.items()):
            out.append(f"stepline_gateway_requests_total{_labels(route=route, method=method, status=status)} {n}")
        head("stepline_gateway_request_bytes_total", "counter", "Request body bytes received (as sent).")
        out.append(f"stepline_gateway_request_bytes_total {self.request_bytes}")
        head("stepline_gateway_frames_total", "counter", "Frames accepted and appended to partition streams.")
        out.append(f"stepline_gateway_frames_total {self.frames}")
        head("stepline_gateway_events_total", "counter", "Events inside accepted frames.")
        out.append(f"stepline_gateway_events_total {self.events}")
        head("stepline_gateway_blobs_total", "counter", "Media blobs stored.")
        out.append(f"stepline_gateway_blobs_total {self.blobs}")
        head("stepline_gateway_rejections_total", "counter", "Refused requests by reason.")
        for reason, n in sorted(self.rejections.items()):
            out.append(f"stepline_gateway_rejections_total{_labels(reason=reason)} {n}")
        head("stepline_gateway_request_seconds", "histogram", "Request latency.")
        cum = 0
        for bound, n in zip(BUCKETS, self.latency_buckets, strict=True):
            cum += n
            out.append(f'stepline_gateway_request_seconds_bucket{{le="{bound}"}} {cum}')
        out.append(f'stepline_gateway_request_seconds_bucket{{le="+Inf"}} {self.latency_count}')
        out.append(f"stepline_gateway_request_seconds_sum {self.latency_sum:.6f}")
        out.append(f"stepline_gateway_request_seconds_count {self.latency_count}")
        head("stepline_stream_backlog_entries", "gauge",
             "Entries of a partition stream after its committed offset (an upper-bound estimate).")
        for p, n in sorted(self.backlog.items()):
            out.append(f"stepline_stream_backlog_entries{_labels(partition=p)} {n}")
        head("stepline_stream_lag_seconds", "gauge",
             "Time between the newest entry of a partition stream and its committed offset.")
        for p, ms in sorted(self.lag_ms.items()):
            out.append(f"stepline_stream_lag_seconds{_labels(partition=p)} {ms / 1000:.3f}")
        head("stepline_partition_commit_age_seconds", "gauge", "Seconds since a partition's last commit.")
        for p, s in sorted(self.commit_age_s.items()):
            out.append(f"stepline_partition_commit_age_seconds{_labels(partition=p)} {s:.3f}")
        head("stepline_gateway_redis_up", "gauge", "1 when the last backlog sample reached Redis.")
        out.append(f"stepline_gateway_redis_up {self.redis_up}")
        return "\n".join(out) + "\n"

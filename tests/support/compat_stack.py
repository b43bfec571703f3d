"""The compat suite's stack: one in-process worker on the test's namespace, and waits for committed runs."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import redis
from sqlalchemy import create_engine, select

from history.query import Api, RunNotFound, RunView
from schemas.store import partitions
from workers.worker import Worker


@dataclass
class Stack:
    """A worker consuming the test's namespace; :meth:`finished` waits until a run is committed as finished."""

    redis_url: str
    namespace: str
    data_dir: Path
    worker: Worker

    def api(self) -> Api:
        return Api(data_dir=self.data_dir)

    def finished(self, path: str, timeout: float = 30.0) -> RunView:
        deadline = time.monotonic() + timeout
        with self.api() as api:
            while True:
                try:
                    view = api.run(path)
                    if view.state != "running":
                        return view
                except RunNotFound:
                    pass
                assert time.monotonic() < deadline, f"run {path} not finished after {timeout:.0f}s"
                time.sleep(0.05)

    def only_run(self, project: str, timeout: float = 30.0) -> RunView:
        """The single run of ``project`` once it is finished (for scripts that let the SDK pick the run id)."""
        deadline = time.monotonic() + timeout
        with self.api() as api:
            while not api.runs(project):
                assert time.monotonic() < deadline, f"no run in project {project} after {timeout:.0f}s"
                time.sleep(0.05)
            (view,) = api.runs(project)
        return self.finished(view.path, max(deadline - time.monotonic(), 1.0))

    def drained(self, timeout: float = 30.0) -> None:
        """Wait until every entry now in the partition streams is committed (e.g. a re-import was processed)."""
        names = self.worker.names
        client = redis.Redis.from_url(self.redis_url)
        try:
            want: dict[int, tuple[int, ...]] = {}
            for p in range(names.partitions):
                if client.exists(names.stream(p)):
                    want[p] = _id(client.xinfo_stream(names.stream(p))["last-generated-id"])
        finally:
            client.close()
        engine = create_engine(f"sqlite:///{self.data_dir / 'meta.sqlite'}")
        deadline = time.monotonic() + timeout
        try:
            while True:
                with engine.connect() as conn:
                    done = {int(r.p): _id(r.offset) for r in conn.execute(select(partitions.c.p, partitions.c.offset))}
                if all(done.get(p, (0, 0)) >= last for p, last in want.items()):
                    return
                assert time.monotonic() < deadline, f"streams not committed after {timeout:.0f}s"
                time.sleep(0.05)
        finally:
            engine.dispose()


def _id(raw: bytes | str) -> tuple[int, ...]:
    s = raw.decode() if isinstance(raw, bytes) else raw
    return tuple(int(x) for x in s.split("-")) if "-" in s else (0, 0)

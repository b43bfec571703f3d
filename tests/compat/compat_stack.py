"""The compat suite's stack: one in-process worker on the test's namespace, and waits for committed runs."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from ingest.query import Api, RunNotFound, RunView
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

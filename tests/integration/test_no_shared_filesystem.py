"""No shared file system (issue #18, item 5): two worker processes, each with a local directory of its own, and one
gateway with yet another, all on PostgreSQL + Redis + a bucket (moto's S3 server, started by the tests). 20 runs are
logged through the SDK; one worker is killed with ``kill -9`` mid-stream and the other takes its partitions over.
History read through ``Api`` and through the gateway equals what was logged, and media logged by a run are served by
the gateway from the bucket. Nothing of history lands in any of the local directories.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import random
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from support.pg import fresh_database
from support.s3 import MotoServer, s3_storage
from support.servers import free_port
from support.worker_harness import WorkerFleet, wait_until

import ingest
from history.query import Api
from schemas.media import blob_shas

pytestmark = pytest.mark.integration

RUNS, STEPS, PARTITIONS = 20, 400, 8


def _gateway(
    env: dict[str, str], redis_url: str, namespace: str, data_dir: Path, db_url: str, log: Path
) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gateway",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--redis-url",
                redis_url,
                "--namespace",
                namespace,
                "--partitions",
                str(PARTITIONS),
                "--data-dir",
                str(data_dir),
                "--db-url",
                db_url,
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, **env, "PYTHONUNBUFFERED": "1"},
        )

    def up() -> bool:
        assert proc.poll() is None, log.read_text(errors="replace")
        with contextlib.suppress(OSError):
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            c.request("GET", "/healthz")
            ok = c.getresponse().status == 200
            c.close()
            return ok
        return False

    wait_until(up, 30, "the gateway to answer")
    return proc, port


def _get(port: int, path: str) -> tuple[int, bytes]:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        c.request("GET", path)
        r = c.getresponse()
        return r.status, r.read()
    finally:
        c.close()


def _drive(run: Any, seed: int, want: list[dict[str, Any]], gate: threading.Event) -> None:
    rng = random.Random(seed)
    img = np.full((4, 4, 3), seed * 10 % 256, dtype=np.uint8)
    run.log({"sample": ingest.Image(img)}, step=0, commit=False)
    for i in range(STEPS):
        if i == STEPS // 2:
            gate.wait(120)  # the second half goes after the kill
        row = {"loss": rng.random(), "i": i, "tag": "even" if i % 2 == 0 else "odd"}
        run.log(row, step=i)
        want.append(row)
        if i == 10:
            run.log({"loss": 9.9}, step=3)  # below the cursor: rejected, never stored
    assert run.finish(timeout=120).ok


def test_two_workers_and_a_gateway_share_no_filesystem(
    redis_url: str, namespace: str, tmp_path: Path, s3_server: MotoServer, s3_bucket: str
) -> None:
    storage = s3_storage(s3_server, s3_bucket, prefix="deployment")
    dirs = {name: tmp_path / name for name in ("worker-a", "worker-b", "gateway", "client", "reader")}
    for d in dirs.values():
        d.mkdir()
    with fresh_database() as db_url:
        fleets = [
            WorkerFleet(
                redis_url=redis_url,
                namespace=namespace,
                data_dir=dirs[name],
                db_url=db_url,
                log_dir=tmp_path / "logs",
                partitions=PARTITIONS,
                lease_ttl_ms=4000,
            )
            for name in ("worker-a", "worker-b")
        ]
        gw, port = _gateway(storage.env, redis_url, namespace, dirs["gateway"], db_url, tmp_path / "gateway.log")
        try:
            a = fleets[0].start("a", env=storage.env)
            fleets[1].start("b", env=storage.env)
            wants: list[list[dict[str, Any]]] = [[] for _ in range(RUNS)]
            gate = threading.Event()
            runs = [
                ingest.init(
                    project="noshare",
                    id=f"r{i:02d}",
                    redis_url=redis_url,
                    namespace=namespace,
                    data_dir=str(dirs["client"]),
                    settings={"partitions": PARTITIONS},
                )
                for i in range(RUNS)
            ]
            threads = [
                threading.Thread(target=_drive, args=(r, i, w, gate))
                for i, (r, w) in enumerate(zip(runs, wants, strict=True))
            ]
            for t in threads:
                t.start()
            with Api(data_dir=dirs["reader"], db_url=db_url, objects=storage.objects) as api:
                # Mid-stream: worker a has committed part of the history; kill it, then log the rest.
                wait_until(
                    lambda: sum(r.rows for r in api.runs("noshare")) >= RUNS * 20, 120, "part of the history committed"
                )
                fleets[0].kill9(a)
                gate.set()
                for t in threads:
                    t.join(300)
                    assert not t.is_alive()

                def all_done() -> bool:
                    views = {r.id: r for r in api.runs("noshare")}
                    return len(views) == RUNS and all(v.state == "finished" and v.rows == STEPS for v in views.values())

                wait_until(all_done, 180, "every run finished with all its rows on worker b")
                for i, want in enumerate(wants):
                    view = api.run(f"noshare/r{i:02d}")
                    got = list(view.scan_history(keys=["loss", "i", "tag"], page_size=1000))
                    assert [g["_step"] for g in got] == list(range(STEPS))
                    assert [{k: g[k] for k in ("loss", "i", "tag")} for g in got] == want
                    assert view.rejected == {"non_monotonic_step": 1}
                    # Through the gateway: the same rows, and the run's image from the bucket.
                    status, body = _get(
                        port, f"/api/v1/projects/noshare/runs/r{i:02d}/history?samples=all&keys=loss,i,tag&format=json"
                    )
                    assert status == 200, body[:300]
                    rows = json.loads(body)
                    assert [{k: r[k] for k in ("loss", "i", "tag")} for r in rows] == want
                    image = view.history(keys=["sample"], samples=None, pandas=False)["sample"][0]
                    (sha,) = blob_shas(image)
                    status, blob = _get(port, f"/api/v1/blobs/{sha}?project=noshare&run=r{i:02d}")
                    assert status == 200, blob[:300]
                    assert blob.startswith(b"\x89PNG")
        finally:
            gw.kill()
            gw.wait(10)
            for f in fleets:
                f.close()
    listed = storage.objects.list("")
    assert any(rel.startswith("segments/") for rel, _s, _m in listed)
    assert any(rel.startswith("blobs/") for rel, _s, _m in listed)
    for d in dirs.values():  # every local directory holds no history
        assert not list(d.rglob("*.parquet")), d
        assert not (d / "blobs").exists(), d

"""A local Redis Cluster for tests and development: 3 masters + 3 replicas from the ``redis-server`` binary.

    with LocalCluster(tmp_path) as c:
        url = c.url                      # redis+cluster://127.0.0.1:<port> (one seed node is enough)
        c.kill_master_of(slot)           # kill -9, then c.wait_promoted(...) for its replica to take over

Nodes listen on loopback ports whose cluster bus port (+10000) is free too; ``--cluster-node-timeout`` is short
(1 s) so a failover completes within a few seconds. :meth:`LocalCluster.stop` kills every node it started.
``deploy/local-cluster.sh`` does the same from a shell.
"""

from __future__ import annotations

import contextlib
import random
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import redis


def plain(url: str) -> str:
    """``redis+cluster://h:p`` → ``redis://h:p`` for redis-py's own ``RedisCluster.from_url``."""
    return url.replace("redis+cluster://", "redis://", 1)


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_cluster_ports(n: int) -> list[int]:
    """``n`` consecutive loopback ports whose cluster bus ports (+10000) are free as well."""
    for _ in range(200):
        base = random.randrange(20000, 30000 - n)
        ports = list(range(base, base + n))
        if all(_port_free(p) and _port_free(p + 10000) for p in ports):
            return ports
    raise RuntimeError("no free ports for a Redis Cluster")


@dataclass
class Node:
    port: int
    dir: Path
    proc: subprocess.Popen[bytes] | None = None

    def client(self, timeout: float = 2.0) -> redis.Redis:
        return redis.Redis(port=self.port, socket_timeout=timeout, socket_connect_timeout=timeout)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@dataclass
class LocalCluster:
    dir: Path
    masters: int = 3
    replicas: int = 1
    node_timeout_ms: int = 1000
    extra_args: list[str] = field(default_factory=list)
    nodes: list[Node] = field(default_factory=list)

    @property
    def url(self) -> str:
        live = [n for n in self.nodes if n.alive()]
        return f"redis+cluster://127.0.0.1:{live[0].port}"

    @property
    def seed_urls(self) -> list[str]:
        return [f"redis+cluster://127.0.0.1:{n.port}" for n in self.nodes if n.alive()]

    def start(self) -> LocalCluster:
        if shutil.which("redis-server") is None or shutil.which("redis-cli") is None:
            raise FileNotFoundError("redis-server and redis-cli must be on PATH")
        ports = free_cluster_ports(self.masters * (1 + self.replicas))
        for port in ports:
            d = self.dir / f"node-{port}"
            d.mkdir(parents=True, exist_ok=True)
            node = Node(port, d)
            with (d / "redis.log").open("ab") as log:
                node.proc = subprocess.Popen(
                    ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", str(d),
                     "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                     "--cluster-node-timeout", str(self.node_timeout_ms),
                     # A replica may always take over, however long it was cut off (tests kill masters).
                     "--cluster-replica-validity-factor", "0",
                     "--save", "", "--appendonly", "no", *self.extra_args],
                    stdout=log, stderr=subprocess.STDOUT,
                )
            self.nodes.append(node)
        for n in self.nodes:
            self._wait(lambda n=n: n.client(0.2).ping(), 10, f"node {n.port} to start")
        subprocess.run(
            ["redis-cli", "--cluster", "create", *[f"127.0.0.1:{p}" for p in ports],
             "--cluster-replicas", str(self.replicas), "--cluster-yes"],
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, timeout=30,
        )
        self.wait_ok()
        return self

    def stop(self) -> None:
        for n in self.nodes:
            if n.proc is not None and n.proc.poll() is None:
                n.proc.kill()
        for n in self.nodes:
            if n.proc is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    n.proc.wait(10)

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    # --- state ---------------------------------------------------------------------------------------------------

    @staticmethod
    def _wait(cond: object, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                if cond():  # type: ignore[operator]
                    return
            except redis.RedisError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"Redis Cluster: timed out waiting for {what}")
            time.sleep(0.05)

    def topology(self) -> list[dict[str, object]]:
        """``CLUSTER NODES`` as seen by a live node: port, role, master id, slots, flags."""
        for n in self.nodes:
            if not n.alive():
                continue
            with contextlib.suppress(redis.RedisError), n.client() as c:
                nodes: dict[str, dict[str, object]] = c.execute_command("CLUSTER NODES")
                out = []
                for addr, info in nodes.items():
                    flags = str(info["flags"]).split(",")
                    out.append({"id": info["node_id"], "port": int(addr.split("@")[0].rsplit(":", 1)[1]),
                                "master": "master" in flags, "fail": any(x.startswith("fail") for x in flags),
                                "master_id": info["master_id"], "slots": info["slots"]})
                return out
        raise RuntimeError("no live node")

    def _state_ok(self, n: Node) -> bool:
        with n.client(0.5) as c:
            info = c.execute_command("CLUSTER INFO")
        if isinstance(info, dict):  # redis-py parses CLUSTER INFO into a dict
            return str(info.get("cluster_state")) == "ok"
        return b"cluster_state:ok" in info

    def wait_ok(self, timeout: float = 30) -> None:
        """Every live node reports ``cluster_state:ok`` and every master has its replicas attached."""
        def ok() -> bool:
            if not all(self._state_ok(n) for n in self.nodes if n.alive()):
                return False
            topo = self.topology()
            live_masters = [t for t in topo if t["master"] and not t["fail"] and t["slots"]]
            if len(live_masters) != self.masters:
                return False
            # Replicas done with their initial sync (else a failover right away would find them empty).
            for t in topo:
                if not t["master"] and not t["fail"]:
                    with self.node(int(t["port"])).client(0.5) as c:  # type: ignore[call-overload]
                        if c.info("replication").get("master_link_status") != "up":
                            return False
            return True
        self._wait(ok, timeout, "cluster_state:ok")

    def node(self, port: int) -> Node:
        return next(n for n in self.nodes if n.port == port)

    def master_of_key(self, key: str) -> Node:
        n = next(n for n in self.nodes if n.alive())
        with n.client() as c:
            slot = int(c.execute_command("CLUSTER KEYSLOT", key))
        for t in self.topology():
            if not t["master"] or t["fail"]:
                continue
            for rng in t["slots"]:  # type: ignore[attr-defined]
                lo, hi = rng[0], rng[-1]  # a range, or a single slot
                if int(lo) <= slot <= int(hi):
                    return self.node(int(t["port"]))  # type: ignore[call-overload]
        raise RuntimeError(f"no master serves slot {slot}")

    def replicas_of(self, master: Node) -> list[Node]:
        topo = self.topology()
        mid = next(t["id"] for t in topo if t["port"] == master.port)
        return [self.node(int(t["port"])) for t in topo if t["master_id"] == mid]  # type: ignore[call-overload]

    def node_id(self, node: Node) -> str:
        return str(next(t["id"] for t in self.topology() if t["port"] == node.port))

    def reshard(self, src: Node, dst: Node, slots: int) -> None:
        """Move ``slots`` slots (with their keys, ``MIGRATE``) from ``src`` to ``dst`` with ``redis-cli --cluster
        reshard``: clients see ``ASK`` while a slot migrates and ``MOVED`` after."""
        subprocess.run(
            ["redis-cli", "--cluster", "reshard", f"127.0.0.1:{src.port}", "--cluster-from", self.node_id(src),
             "--cluster-to", self.node_id(dst), "--cluster-slots", str(slots), "--cluster-yes",
             "--cluster-pipeline", "20"],
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, timeout=120,
        )

    def migrate_slot(self, slot: int, src: Node, dst: Node, pause_s: float = 0.0) -> int:
        """Move one slot and its keys from ``src`` to ``dst`` the way ``redis-cli --cluster reshard`` does
        (IMPORTING/MIGRATING, ``MIGRATE`` key by key, then SETSLOT NODE everywhere); ``pause_s`` between keys keeps
        the slot half-migrated for a while, so clients meet ``ASK`` (then ``MOVED``). Returns the keys moved."""
        sid, did = self.node_id(src), self.node_id(dst)
        moved = 0
        with dst.client(10) as d, src.client(10) as s:
            d.execute_command("CLUSTER SETSLOT", slot, "IMPORTING", sid)
            s.execute_command("CLUSTER SETSLOT", slot, "MIGRATING", did)
            while True:
                keys = s.execute_command("CLUSTER GETKEYSINSLOT", slot, 1)
                if not keys:
                    break
                s.execute_command("MIGRATE", "127.0.0.1", dst.port, "", 0, 10000, "KEYS", *keys)
                moved += len(keys)
                time.sleep(pause_s)
            d.execute_command("CLUSTER SETSLOT", slot, "NODE", did)
            s.execute_command("CLUSTER SETSLOT", slot, "NODE", did)
        for t in self.topology():
            if t["master"] and not t["fail"] and t["port"] not in (src.port, dst.port):
                with self.node(int(t["port"])).client() as c:  # type: ignore[call-overload]
                    c.execute_command("CLUSTER SETSLOT", slot, "NODE", did)
        return moved

    def kill(self, node: Node) -> None:
        """kill -9 a node (no shutdown, no last replication)."""
        assert node.proc is not None
        node.proc.kill()
        node.proc.wait(10)

    def wait_promoted(self, replica: Node, timeout: float = 30) -> None:
        """Wait until ``replica`` is a master and the cluster is ok again."""
        def promoted() -> bool:
            with replica.client(0.5) as c:
                role = c.execute_command("ROLE")
            return bool(role and role[0] in (b"master", "master"))
        self._wait(promoted, timeout, f"replica {replica.port} to be promoted")
        deadline = time.monotonic() + timeout
        while True:
            try:
                if all(self._state_ok(n) for n in self.nodes if n.alive()):
                    return
            except redis.RedisError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError("Redis Cluster: not ok after the failover")
            time.sleep(0.05)

"""The SDK's HTTP transport: the same frames as the Redis transport, posted to the gateway (:mod:`gateway`).

One :class:`HttpTransport` per run, used by one sender at a time (the run's thread, or the asyncio sender through
``asyncio.to_thread``), over one keep-alive connection (``http.client``; no extra dependency).

``send(batch)``: first ``PUT /api/v1/blobs/{sha256}?project=&run=`` for every media blob not yet stored by this
transport, then ONE ``POST /api/v1/projects/{p}/runs/{r}/frames`` with the batch (a msgpack array of frame bytes,
``Content-Type: application/x-stepline-frames``, gzip when ``http_encoding="gzip"``). The gateway accepts a
request whole or refuses it whole, so:

- 202 → every frame of the batch is acknowledged (it leaves the outbox, exactly as after a Redis ``EXEC``).
- 429, 503, 408, other 5xx, 401/403 (a key can be fixed), connection errors, timeouts → :class:`GatewayUnavailable`
  carrying the server's ``Retry-After``; the sender keeps the frames, backs off (at least ``Retry-After``) and
  spills them to disk like a Redis outage. Resending is harmless (workers skip ``(producer, seq)`` duplicates).
- 400/413/415/422 (the gateway will never accept this request) → the frames are sent one by one, so only a frame
  the gateway itself refuses is dropped, with an error in the log (``refused_frames`` counts them). The SDK
  validates with the same schemas and default limits, so this only happens when a gateway runs smaller limits.

Read-your-writes: the 202 names the stream ids of the frames (``last_id`` keeps the last); :meth:`wait_committed`
asks ``GET .../committed?id=`` (:mod:`gateway.commits`) until a worker's commit reaches it, the time is up, or the
gateway says no worker runs.
"""

from __future__ import annotations

import gzip
import http.client
import json
import logging
import time
from collections import Counter
from urllib.parse import quote, urlsplit

import msgpack

from schemas import SteplineError

from .settings import ClientSettings, SettingsError
from .spill import Entry

logger = logging.getLogger("ingest")

FRAMES_TYPE = "application/x-stepline-frames"
_RETRYABLE_4XX = frozenset({401, 403, 408, 409, 425, 429})


class GatewayUnavailable(SteplineError, ConnectionError):
    """The gateway cannot take the request now (down, overloaded, rate limit, key refused); retry later."""

    def __init__(self, message: str, *, status: int | None = None, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # an HTTP date: rare, and the backoff covers it


class HttpTransport:
    """Sends batches of one run's frames to the gateway; ``close()`` drops the connection."""

    def __init__(self, settings: ClientSettings, project: str, run: str) -> None:
        if settings.url is None:
            raise SettingsError("HttpTransport needs settings.url")
        u = urlsplit(settings.url)
        if u.scheme not in ("http", "https") or not u.hostname:
            raise SettingsError(f"url must be http://host:port or https://host:port, got {settings.url!r}")
        self._https = u.scheme == "https"
        self._host = u.hostname
        self._port = u.port
        self._base = u.path.rstrip("/")
        self.settings = settings
        self.project = project
        self.run = run
        self._frames_path = f"{self._base}/api/v1/projects/{quote(project, safe='')}/runs/{quote(run, safe='')}/frames"
        self._blob_query = f"project={quote(project, safe='')}&run={quote(run, safe='')}"
        self._conn: http.client.HTTPConnection | None = None
        self._stored_blobs: set[str] = set()
        self.refused_frames = 0
        self.requests = 0
        #: Replies by HTTP status, and 429/503 replies that came without ``Retry-After`` (for tests and benches).
        self.statuses: Counter[int] = Counter()
        self.missing_retry_after = 0
        #: The stream id of the last frame the gateway appended (its 202 names them), for read-your-writes.
        self.last_id: str | None = None

    def _note_ids(self, data: bytes) -> None:
        try:
            ids = json.loads(data).get("ids")
        except (ValueError, AttributeError):
            return  # an older gateway: no ids, no read-your-writes over HTTP
        if isinstance(ids, list) and ids and isinstance(ids[-1], str):
            self.last_id = ids[-1]

    def wait_committed(self, last_id: str, timeout: float) -> tuple[bool, str, int | None, int | None]:
        """``(committed, reason, rows, rejected)``: asks the gateway until a worker's commit reaches ``last_id``
        or ``timeout`` seconds pass. Never raises: an unreachable or older gateway is a reason."""
        path = f"{self._base}/api/v1/projects/{quote(self.project, safe='')}/runs/{quote(self.run, safe='')}/committed"
        deadline = time.monotonic() + timeout
        per_request = max(0.5, self.settings.socket_timeout_s - 1.0)  # the gateway answers before the socket gives up
        while True:
            left = deadline - time.monotonic()
            query = f"?id={quote(last_id, safe='')}&timeout={max(0.0, min(left, per_request)):.3f}"
            try:
                status, _ra, data = self._request("GET", path + query, b"", {})
            except GatewayUnavailable as e:
                return False, str(e), None, None
            if status != 200:
                return False, f"the gateway answered {status}: {data[:200]!r}", None, None
            try:
                reply = json.loads(data)
            except ValueError:
                return False, f"the gateway answered {data[:200]!r}", None, None
            if reply.get("committed"):
                return True, "", reply.get("rows"), reply.get("rejected")
            if "no worker" in str(reply.get("reason")) or time.monotonic() >= deadline:
                return False, str(reply.get("reason")), None, None

    def _connection(self) -> http.client.HTTPConnection:
        if self._conn is None:
            cls = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
            self._conn = cls(self._host, self._port, timeout=self.settings.socket_timeout_s)
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _request(self, method: str, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, float | None,
                                                                                              bytes]:
        h = {"Content-Length": str(len(body)), **headers}
        if self.settings.api_key:
            h["Authorization"] = f"Bearer {self.settings.api_key}"
        conn = self._connection()
        try:
            conn.request(method, path, body=body, headers=h)
            resp = conn.getresponse()
            data = resp.read()
        except (OSError, http.client.HTTPException) as e:
            self.close()  # a half-used connection cannot be trusted: reconnect next time
            raise GatewayUnavailable(f"gateway unreachable: {type(e).__name__}: {e}") from e
        self.requests += 1
        self.statuses[resp.status] += 1
        if resp.status in (429, 503) and resp.getheader("Retry-After") is None:
            self.missing_retry_after += 1
        if resp.will_close:
            self.close()
        return resp.status, _retry_after(resp.getheader("Retry-After")), data

    def _check(self, status: int, retry_after: float | None, data: bytes, what: str) -> bool:
        """True when accepted, False when refused for good; raises GatewayUnavailable when it is worth a retry."""
        if 200 <= status < 300:
            return True
        if status >= 500 or status in _RETRYABLE_4XX:
            raise GatewayUnavailable(f"gateway answered {status} to {what}: {data[:200]!r}", status=status,
                                     retry_after=retry_after)
        return False

    def _put_blobs(self, batch: list[Entry]) -> None:
        for e in batch:
            for key, data in e.blobs.items():
                sha = key.rsplit(":", 1)[-1]
                if sha in self._stored_blobs:
                    continue
                status, ra, body = self._request("PUT", f"{self._base}/api/v1/blobs/{sha}?{self._blob_query}", data,
                                                 {"Content-Type": "application/octet-stream"})
                if not self._check(status, ra, body, f"blob {sha}"):
                    # Not remembered as stored: a frame referencing it gets 422 missing_blob and names it.
                    logger.error("stepline: the gateway refused blob %s (%d): %r", sha, status, body[:200])
                    continue
                if len(self._stored_blobs) > 100_000:
                    self._stored_blobs.clear()
                self._stored_blobs.add(sha)

    def _post(self, frames: list[bytes]) -> tuple[int, float | None, bytes]:
        body: bytes = msgpack.packb(frames, use_bin_type=True)
        headers = {"Content-Type": FRAMES_TYPE}
        if self.settings.http_encoding == "gzip":
            body = gzip.compress(body, compresslevel=1, mtime=0)
            headers["Content-Encoding"] = "gzip"
        return self._request("POST", self._frames_path, body, headers)

    def send(self, batch: list[Entry]) -> int:
        """Send a batch; return how many leading entries are done (acknowledged, or refused for good)."""
        if not batch:
            return 0
        self._put_blobs(batch)
        status, ra, data = self._post([e.frame for e in batch])
        if status == 422 and b"missing_blob" in data:
            # A blob this transport uploaded earlier is gone from the gateway's buffer (uploads that no frame
            # references expire soon; buffered blobs expire after blob_ttl_s): upload the batch's blobs again, once.
            for e in batch:
                self._stored_blobs.difference_update(key.rsplit(":", 1)[-1] for key in e.blobs)
            self._put_blobs(batch)
            status, ra, data = self._post([e.frame for e in batch])
        if self._check(status, ra, data, f"{len(batch)} frames"):
            self._note_ids(data)
            return len(batch)
        # Refused for good: find the frames the gateway refuses, one request each, and keep the rest.
        done = 0
        for e in batch:
            try:
                status, ra, data = self._post([e.frame])
                if self._check(status, ra, data, "1 frame"):
                    self._note_ids(data)
                else:
                    self.refused_frames += 1
                    logger.error("stepline: the gateway refused a frame of run %s for good (%d): %r; dropped",
                                 self.run, status, data[:300])
            except GatewayUnavailable:
                if done:
                    return done
                raise
            done += 1
        return done


def wait_hint(err: BaseException) -> float | None:
    """The server's ``Retry-After`` of a failed send, if it gave one."""
    return err.retry_after if isinstance(err, GatewayUnavailable) else None


__all__ = ["GatewayUnavailable", "HttpTransport", "wait_hint"]

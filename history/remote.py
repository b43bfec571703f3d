"""The query API over HTTP: ``Api(url="https://host:8080", api_key="slk_...")`` reads through a stepline gateway
with the same surface and the same results as the local :class:`history.query.Api`.

::

    api = ingest.Api(url="http://gateway:8080", api_key="slk_...")   # or STEPLINE_URL / STEPLINE_API_KEY
    for run in api.runs("team/proj", filters={"config.lr": {"$gt": 0.01}}, order="-summary_metrics.val_loss"):
        df = run.history(keys=["val/loss"])
        for row in run.scan_history(keys=["train/loss"], page_size=5000):   # streamed page by page
            ...

Guarantees:

- Same values as the local ``Api`` on the same data: the gateway answers in its ``exact`` format (msgpack in the
  store's own codec, ``application/x-stepline-msgpack``), so numbers keep their dtype and bits (NaN, ±inf, -0.0,
  int64), numpy arrays their dtype and shape, media come back as :class:`schemas.Media`; ``history()`` gives the
  same dict of numpy arrays (or DataFrame), ``scan_history()`` the same row dicts, ``sampled()`` the same arrays.
- ``scan_history`` streams: rows are decoded one page at a time as the gateway sends them; memory holds one page.
- One connection pool per ``Api`` (keep-alive). A 503 or 429 is retried with exponential backoff (honouring
  ``Retry-After``), as are refused connections and resets, ``retries`` times; then :class:`GatewayError`.
- Errors are the local ones: unknown run → :class:`RunNotFound`, malformed argument or filter →
  :class:`QueryError` (with the gateway's message, naming the operator or field); a missing or wrong key (401) or
  another project's key (403) → :class:`AccessDenied` (a :class:`GatewayError`, and a ``PermissionError``).

The client is ``urllib3`` (blocking, pooled, with its own retry policy): the SDK's ``Api`` is synchronous, and an
async client would need a private event loop thread for nothing.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any
from urllib.parse import quote, urlencode

import numpy as np
import urllib3
from urllib3.util.retry import Retry

from schemas import SteplineError
from schemas.store import STEP

from .query import (
    Api,
    Array,
    QueryError,
    RunNotFound,
    Runs,
    RunView,
    Sampled,
    history_keys,
    split_project_path,
    split_run_path,
)
from .stored import unpack_stored

__all__ = ["AccessDenied", "GatewayError", "RemoteApi", "RemoteRunView"]

EXACT_TYPE = "application/x-stepline-msgpack"
COLUMNS_TYPE = "application/x-stepline-columns"
DEFAULT_TIMEOUT_S = 60.0
DEFAULT_RETRIES = 5


class GatewayError(SteplineError):
    """The gateway could not answer (unreachable, still busy after the retries, or an unexpected reply)."""


class AccessDenied(GatewayError, PermissionError):
    """401 (no key, or a wrong or revoked one) or 403 (a key of another project or without read scope)."""


def remote_settings(url: str | None, api_key: str | None, environ: Mapping[str, str] = os.environ,
                    ) -> tuple[str, str | None]:
    """The gateway URL and key: arguments > ``STEPLINE_URL`` / ``STEPLINE_API_KEY`` > the gateway of a running
    local ``stepline up`` (:func:`schemas.local.local_stack`); QueryError when none is found."""
    url = url or environ.get("STEPLINE_URL") or None
    if url is None:
        from schemas.local import local_stack

        stack = local_stack(environ)
        url = stack.gateway_url if stack is not None else None
    if not url:
        raise QueryError("no gateway URL: pass url=..., or set STEPLINE_URL (or run `stepline up` here)")
    if not url.startswith(("http://", "https://")):
        raise QueryError(f"the gateway URL must start with http:// or https://, got {url!r:.80}")
    return url.rstrip("/"), api_key or environ.get("STEPLINE_API_KEY") or None


def wants_remote(args: Sequence[Any], kwargs: Mapping[str, Any], environ: Mapping[str, str] = os.environ) -> bool:
    """Whether ``Api(*args, **kwargs)`` reads over HTTP: a ``url`` or ``api_key`` argument says so; a data
    directory, database or engine argument says local; else ``STEPLINE_URL`` set (and neither
    ``STEPLINE_DATA_DIR`` nor ``STEPLINE_DB_URL``) says HTTP."""
    if kwargs.get("url") or kwargs.get("api_key"):
        return True
    if args or any(kwargs.get(k) is not None for k in ("data_dir", "db_url", "engine")):
        return False
    return bool(environ.get("STEPLINE_URL")) and not (environ.get("STEPLINE_DATA_DIR")
                                                        or environ.get("STEPLINE_DB_URL"))


class RemoteApi(Api):
    """:class:`history.query.Api` over a gateway (``Api(url=..., api_key=...)`` makes one). Thread-safe."""

    def __init__(
        self, data_dir: Any = None, db_url: Any = None, *, url: str | None = None, api_key: str | None = None,
        timeout: float = DEFAULT_TIMEOUT_S, retries: int = DEFAULT_RETRIES, **_local: Any,
    ) -> None:
        self.url, self.api_key = remote_settings(url, api_key)
        headers = {"Accept": f"{EXACT_TYPE}, {COLUMNS_TYPE}", "User-Agent": "stepline-history"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        retry = Retry(total=retries, connect=retries, read=retries, status=retries, backoff_factor=0.1,
                      backoff_max=5.0, status_forcelist=(429, 503), allowed_methods=frozenset({"GET"}),
                      respect_retry_after_header=True, raise_on_status=False)
        self._http = urllib3.PoolManager(num_pools=4, maxsize=8, headers=headers, retries=retry,
                                         timeout=urllib3.Timeout(connect=min(timeout, 10.0), read=timeout))

    def close(self) -> None:
        self._http.clear()

    def __repr__(self) -> str:
        return f"<RemoteApi {self.url}>"

    # --- HTTP ------------------------------------------------------------------------------------------------

    def _request(self, path: str, params: Mapping[str, Any] | None = None, stream: bool = False,
                 ) -> urllib3.BaseHTTPResponse:
        query = {k: v for k, v in (params or {}).items() if v is not None}
        target = self.url + path + ("?" + urlencode(query, doseq=True) if query else "")
        try:
            resp = self._http.request("GET", target, preload_content=not stream)
        except urllib3.exceptions.MaxRetryError as e:
            raise GatewayError(f"gateway {self.url} unreachable: {e.reason}") from None
        except urllib3.exceptions.HTTPError as e:
            raise GatewayError(f"gateway {self.url}: {type(e).__name__}: {e}") from None
        if resp.status >= 400:
            body = resp.data if not stream else resp.read()
            resp.release_conn()
            _raise(resp.status, body, self.url)
        return resp

    def _get(self, path: str, params: Mapping[str, Any] | None = None) -> Any:
        resp = self._request(path, params)
        ctype = resp.headers.get("Content-Type", "")
        if not ctype.startswith(EXACT_TYPE):
            raise GatewayError(f"gateway {self.url} answered {ctype!r} to a request for {EXACT_TYPE} "
                               "(an older gateway?)")
        return unpack_stored(resp.data)

    def _columns(self, path: str, params: Mapping[str, Any]) -> dict[str, Array]:
        """A ``history`` reply in the columnar form (gateway.read._columns_body): each numeric column is an aligned,
        writable view of one buffer holding the body (no copy per column)."""
        resp = self._request(path, params, stream=True)
        try:
            ctype = resp.headers.get("Content-Type", "")
            if not ctype.startswith(COLUMNS_TYPE):
                raise GatewayError(f"gateway {self.url} answered {ctype!r} to a request for {COLUMNS_TYPE}")
            buf = _read_body(resp)
        finally:
            resp.release_conn()
        size = len(buf)
        n = int.from_bytes(buf[:4], "big")
        head = unpack_stored(bytes(buf[4:4 + n]))
        offset = 4 + n + (-(4 + n) % 8)
        arrays: dict[str, Any] = head["arrays"]
        data: dict[str, Array] = {}
        for name, (dtype, shape, nbytes) in arrays.items():
            if offset + nbytes > size:
                raise GatewayError(f"gateway {self.url}: column {name!r} runs past the end of the reply")
            count = nbytes // np.dtype(dtype).itemsize
            data[name] = np.frombuffer(buf, dtype=np.dtype(dtype), count=count, offset=offset).reshape(shape)
            offset += nbytes + (-nbytes % 8)
        return {name: data[name] if name in data else _array(head["data"][name]) for name in head["columns"]}

    # --- the Api surface -------------------------------------------------------------------------------------

    def runs(
        self, path: str, filters: Mapping[str, Any] | None = None, order: str = "-created_at",
        per_page: int = 50, *, state: str | Sequence[str] | None = None,
    ) -> Runs:
        if per_page < 1:
            raise QueryError(f"per_page must be >= 1, got {per_page}")
        project = split_project_path(path)
        params: dict[str, Any] = {"order": order, "per_page": per_page}
        if filters is not None:
            params["filters"] = json.dumps(filters, allow_nan=True)
        if state is not None:
            params["state"] = state if isinstance(state, str) else ",".join(state)
        return _RemoteRuns(self, f"/api/v1/projects/{_q(project)}/runs", params, per_page)

    def run(self, path: str) -> RunView:
        project, run_id = split_run_path(path)
        info = self._get(f"/api/v1/projects/{_q(project)}/runs/{_q(run_id)}", {"rejections": 0})
        return RemoteRunView(self, info, full=True)


def _q(s: str) -> str:
    return quote(s, safe="")


def _raise(status: int, body: bytes, url: str) -> None:
    try:
        err = json.loads(body)
        code, message = str(err.get("error")), str(err.get("message"))
    except (ValueError, AttributeError):
        code, message = f"http_{status}", body[:200].decode(errors="replace")
    if status == 404 and code == "not_found":
        raise RunNotFound(message)
    if status == 400:
        raise QueryError(message)
    if status in (401, 403):
        raise AccessDenied(f"gateway {url} refused the key ({status} {code}): {message}")
    raise GatewayError(f"gateway {url} answered {status} {code}: {message}")


class _RemoteRuns(Runs):
    """Pages of a runs query fetched from the gateway (``per_page`` and ``page`` parameters)."""

    def __init__(self, api: RemoteApi, path: str, params: dict[str, Any], per_page: int) -> None:
        super().__init__(api, [], [], per_page)
        self._remote, self._path, self._params = api, path, params

    def _fetch(self, n: int) -> dict[str, Any]:
        body: dict[str, Any] = self._remote._get(self._path, {**self._params, "page": n})
        self._count = int(body["total"])
        return body

    def _page(self, n: int) -> list[RunView]:
        page = self._pages.get(n)
        if page is None:
            page = self._pages[n] = [RemoteRunView(self._remote, r, full=False) for r in self._fetch(n)["runs"]]
        return page

    def __len__(self) -> int:
        if self._count is None:
            self._fetch(0)
        assert self._count is not None
        return self._count


#: Keys of the gateway's run info that RunView reads from ``info`` (the listing has only some of them).
_LISTED = ("config", "summary", "group", "job_type", "tags", "notes")


class RemoteRunView(RunView):
    """A run read through the gateway; the listing's runs fetch the rest of their info when first asked."""

    def __init__(self, api: RemoteApi, info: dict[str, Any], full: bool) -> None:
        self._remote = api
        self.project = info["project"]
        self.id = info["id"]
        self.name = info["name"] or info["id"]
        self.state = info["state"]
        self.rows = int(info["rows"])
        self.last_step = None if info["last_step"] is None else int(info["last_step"])
        self.created_at = info["created_at"]
        self.updated_at = info["updated_at"]
        self._info: dict[str, Any] | None = None
        self._listed = {k: info.get(k) for k in _LISTED}
        if full:
            self._info = _as_info(info)

    @property
    def info(self) -> dict[str, Any]:
        if self._info is None:
            full = self._remote._get(self._base, {"rejections": 0})
            self._info = _as_info(full)
        return self._info

    @info.setter
    def info(self, value: dict[str, Any]) -> None:
        self._info = value

    @property
    def _base(self) -> str:
        return f"/api/v1/projects/{_q(self.project)}/runs/{_q(self.id)}"

    @property
    def summary(self) -> dict[str, Any]:
        return dict((self._info or self._listed).get("summary") or {})

    @property
    def config(self) -> dict[str, Any]:
        return dict((self._info or self._listed).get("config") or {})

    @property
    def group(self) -> str | None:
        return (self._info or self._listed).get("group")

    @property
    def job_type(self) -> str | None:
        return (self._info or self._listed).get("job_type")

    @property
    def tags(self) -> list[str]:
        return list((self._info or self._listed).get("tags") or [])

    @property
    def notes(self) -> str | None:
        return (self._info or self._listed).get("notes")

    def __repr__(self) -> str:
        return f"<RemoteRunView {self.project}/{self.id} ({self.state})>"

    def references_blob(self, sha256: str) -> bool:
        raise QueryError("references_blob is the gateway's own check; it is not available over HTTP")

    def rejections(self, limit: int | None = None) -> list[dict[str, Any]]:
        got = self._remote._get(self._base, {"rejections": "all" if limit is None else limit})
        return list(got["rejections"])

    def history(
        self, keys: Sequence[str] | None = None, samples: int | None = 500, x_axis: str = STEP,
        min_step: int | None = None, max_step: int | None = None, pandas: bool = True, split_kinds: bool = False,
    ) -> Any:
        if samples is not None and samples < 1:
            raise QueryError(f"samples must be >= 1 or None, got {samples}")
        params = {"key": _key_list(keys), "samples": "all" if samples is None else samples,
                  "x_axis": x_axis, "min_step": min_step, "max_step": max_step,
                  "split_kinds": 1 if split_kinds else None}
        data = self._remote._columns(self._base + "/history", params)
        if pandas:
            try:
                import pandas as pd
            except ImportError:
                return data
            return pd.DataFrame(data)
        return data

    def scan_history(
        self, keys: Sequence[str] | None = None, page_size: int = 1000, min_step: int | None = 0,
        max_step: int | None = None, split_kinds: bool = False,
    ) -> Iterator[dict[str, Any]]:
        if page_size < 1:
            raise QueryError(f"page_size must be >= 1, got {page_size}")
        history_keys(keys)
        return self._stream(keys, page_size, min_step, max_step, split_kinds)

    def _stream(self, keys: Sequence[str] | None, page_size: int, lo: int | None, hi: int | None,
              split_kinds: bool) -> Iterator[dict[str, Any]]:
        # The gateway pages at most 10,000 rows per request page; the stream carries every row either way.
        params = {"key": _key_list(keys), "page_size": min(page_size, 10_000),
                  "min_step": lo, "max_step": hi, "split_kinds": 1 if split_kinds else None}
        resp = self._remote._request(self._base + "/scan", params, stream=True)
        try:
            while True:
                head = _read_exact(resp, 4)
                if not head:
                    return
                page = _read_exact(resp, int.from_bytes(head, "big"))
                yield from unpack_stored(page)
        finally:
            resp.release_conn()

    def sampled(
        self, key: str, x_axis: str = STEP, buckets: int = 1000, x_min: float | None = None,
        x_max: float | None = None,
    ) -> Sampled:
        if buckets < 1:
            raise QueryError(f"buckets must be >= 1, got {buckets}")
        body = self._remote._get(self._base + "/sampled", {"key": key, "x_axis": x_axis, "buckets": buckets,
                                                           "x_min": _num(x_min), "x_max": _num(x_max)})
        return Sampled(x=_array(body["x"]), y=_array(body["y"]).astype(np.float64, copy=False),
                       step=_array(body["step"]).astype(np.int64, copy=False),
                       bucket_x0=_array(body["bucket_x0"]), bucket_x1=_array(body["bucket_x1"]),
                       bucket_min=_array(body["bucket_min"]).astype(np.float64, copy=False),
                       bucket_max=_array(body["bucket_max"]).astype(np.float64, copy=False),
                       count=int(body["count"]), sampled=bool(body["sampled"]))


def _key_list(keys: Sequence[str] | None) -> list[str] | None:
    """Keys as repeated ``key=`` parameters, one key each whatever it holds (commas, spaces, any text); the
    gateway's comma-separated ``keys=`` cannot carry a key with a comma."""
    return history_keys(keys)


def _num(v: float | None) -> str | None:
    return None if v is None else repr(float(v))


def _as_info(info: dict[str, Any]) -> dict[str, Any]:
    """The gateway's run info in the shape of ``runs.info`` (what RunView reads)."""
    out = dict(info)
    out["rejected"] = info.get("rejections_by_reason") or {}
    return out


def _array(v: Any) -> Array:
    """A column as the local Api gives it: numeric arrays as sent (a copy the caller owns), lists as object
    arrays."""
    if isinstance(v, np.ndarray):
        return v if v.flags.writeable else v.copy()
    out = np.empty(len(v), dtype=object)
    for i, x in enumerate(v):  # cell by cell: numpy would broadcast a list of equal-length lists into 2-D
        out[i] = x
    return out


def _read_body(resp: urllib3.BaseHTTPResponse) -> bytearray:
    """The whole body in one writable buffer (the columns are views of it, as the local ones are arrays they
    own), read in 256 KiB pieces: reading it whole first and copying it would allocate the body twice, and a fresh
    18 MB allocation costs more in page faults than the copy itself (profiled: 2M points, 40 ms of 119)."""
    length = resp.headers.get("Content-Length")
    if length is None or not length.isdigit():
        return bytearray(resp.read())
    buf = bytearray(int(length))
    view = memoryview(buf)
    got = 0
    try:
        while got < len(buf):
            n = resp.readinto(view[got:got + (1 << 18)])
            if not n:
                raise GatewayError(f"the gateway's reply ended after {got} of {len(buf)} bytes")
            got += n
    except urllib3.exceptions.HTTPError as e:
        raise GatewayError(f"the gateway's reply broke off: {type(e).__name__}: {e}") from None
    return buf


def _read_exact(resp: urllib3.BaseHTTPResponse, n: int) -> bytes:
    chunks: list[bytes] = []
    left = n
    while left:
        try:
            chunk = resp.read(left)
        except urllib3.exceptions.HTTPError as e:
            raise GatewayError(f"the gateway's scan stream broke off: {type(e).__name__}: {e}") from None
        if not chunk:
            if left == n and n == 4:
                return b""
            raise GatewayError("the gateway's scan stream ended in the middle of a page (the gateway failed "
                               "while scanning; see its log)")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)

"""The write API: frames and media blobs, validated whole before anything reaches Redis.

``POST /api/v1/projects/{project}/runs/{run}/frames``

- ``Content-Type: application/x-stepline-frames``: the body is ONE msgpack array whose items are the frames'
  bytes (msgpack ``bin``), each exactly what the SDK would XADD (:func:`schemas.encode_frame_raw`), in order.
- ``Content-Encoding``: ``identity`` (default), ``gzip`` or ``zstd``; decoding stops at ``max_decoded_bytes``.
- Every frame is decoded with ``schemas.decode_frame(strict=True)`` and must name the URL's project and run.
  A value holding an int outside int64 anywhere (a logged value, a block column, config, summary) is refused with
  422 ``int_range`` naming the frame and the key, as ``log()`` refuses it: msgpack carries ints up to 2**64 - 1,
  which no stored column holds, and a worker would otherwise reject the call after the 202.
  Media blobs the frames reference must already be in Redis (``PUT /api/v1/blobs/...`` first).
- All frames go to the run's partition stream in ONE atomic Lua script that first checks the referenced blobs (so
  a blob expiring between the check and the write cannot half-apply it; the stream and the blobs share the
  partition's hash tag, so this holds on a Redis Cluster too): a request is accepted whole or refused whole.
  Sending a request again is harmless (workers skip ``(producer, seq)`` duplicates).
- 202 ``{"accepted": frames, "events": n, "partition": p, "ids": [...]}``. Refusals: 400 (malformed body or
  encoding, bad path), 401/403 (key), 408 (body too slow), 413 (body, decoded body, frame count, frame or event
  over a limit), 415 (content type or encoding), 422 (a frame that does not validate, is for another run, or
  references a missing blob), 429 + ``Retry-After`` (key rate, or the partition backlog past the high-water
  mark), 503 + ``Retry-After`` (Redis unreachable).

``PUT /api/v1/blobs/{sha256}?project=P&run=R``

- The blob's partition is the run's (blobs live next to the frames that reference them, in one Cluster slot), so
  the query names the run; the key needs ``write`` on ``P``. The body (``application/octet-stream``, optionally
  gzip/zstd encoded) must hash to ``sha256``; it is stored with ``SET NX`` (the SDK's key): 201 when stored, 200
  when it was there already (stored once).
- An upload lives ``blob_pending_ttl_s`` (1 h) until a frame that references it is appended; that append extends
  it (and its owner set) to ``blob_ttl_s`` (7 days, the SDK's TTL). Uploads never referenced expire quickly.
- Ownership: each upload adds ``P`` to the blob's owner set ``<ns>:{pNN}:blobown:<sha256>`` (same TTL). A frame
  may reference a blob only when its project sent the bytes (422 ``missing_blob`` otherwise): a project cannot
  make another project's blob its own by naming its sha, even when their runs share a partition.
- Quota: the bytes a project holds in Redis through the gateway are at most ``blob_quota_bytes``; past it 429
  ``blob_quota`` with ``Retry-After`` (413 ``blob_over_quota`` for a blob larger than the whole quota). An upload
  counts until it would expire (``blob_pending_ttl_s``); a frame that references a blob counts it for the project
  of the frame until ``blob_ttl_s`` from then, whoever uploaded it. An upload of a blob that is stored already
  adds no bytes and costs nothing. Accounting keys: ``<ns>:{bq-<h>}:blobs`` (sorted set: ``<partition>:<sha256>``
  → expiry, ms, Redis's clock) and ``<ns>:{bq-<h>}:sizes`` (hash: member → bytes, and ``_total``), ``h`` = the
  first 16 hex digits of sha256(project); they expire when the project is idle.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import zlib
from collections.abc import Iterable
from typing import Any

import msgpack
from aiohttp import web

from schemas import (
    FRAME_FIELD,
    Config,
    LimitError,
    Log,
    LogBlock,
    SchemaError,
    Start,
    Summary,
    decode_frame,
)
from schemas.clients import REDIS_ERRORS
from schemas.frame import check_run_id
from schemas.media import blob_shas
from schemas.values import INT64_MAX, INT64_MIN

from .errors import Refused
from .settings import GatewaySettings
from .state import GW

try:  # Python 3.14+
    from compression.zstd import ZstdDecompressor, ZstdError  # type: ignore[import-not-found,unused-ignore]
except ImportError:  # pragma: no cover - depends on the Python version
    from backports.zstd import ZstdDecompressor, ZstdError

log = logging.getLogger("stepline.gateway")
FRAMES_TYPE = "application/x-stepline-frames"
ENCODINGS = ("identity", "gzip", "zstd")
#: Bodies larger than this are decoded in a worker thread, so a big frame never stalls the event loop.
_INLINE_BYTES = 32 << 10


def path_ids(request: web.Request) -> tuple[str, str | None]:
    try:
        project = check_run_id(request.match_info["project"], "project")
        run = request.match_info.get("run")
        if run is not None:
            run = check_run_id(run, "run")
    except SchemaError as e:
        raise Refused(400, "bad_path", str(e)) from None
    return project, run


async def read_body(request: web.Request, gw: GW, cap: int) -> bytes:
    """The raw body, at most ``cap`` bytes, delivered within ``body_timeout_s``; then decoded per its encoding."""
    enc = request.headers.get("Content-Encoding", "identity").strip().lower() or "identity"
    if enc not in ENCODINGS:
        raise Refused(415, "unsupported_encoding", f"Content-Encoding {enc!r} is not one of {list(ENCODINGS)}")
    if request.content_length is not None and request.content_length > cap:
        raise Refused(413, "body_too_large", f"body is {request.content_length} bytes, the limit is {cap}")

    async def read_all() -> bytes:
        chunks: list[bytes] = []
        size = 0
        while True:
            chunk = await request.content.readany()
            if not chunk:
                return b"".join(chunks)
            size += len(chunk)
            if size > cap:
                raise Refused(413, "body_too_large", f"body is over the limit of {cap} bytes")
            chunks.append(chunk)

    try:
        raw = await asyncio.wait_for(read_all(), gw.settings.body_timeout_s)
    except TimeoutError:
        raise Refused(408, "body_timeout",
                      f"the body did not arrive within {gw.settings.body_timeout_s:g} s") from None
    gw.metrics.request_bytes += len(raw)
    if request.content_length is not None and len(raw) != request.content_length:
        raise Refused(400, "truncated_body", f"got {len(raw)} of {request.content_length} bytes")
    if enc == "identity":
        return raw
    return decompress(raw, enc, gw.settings.max_decoded_bytes)


def decompress(raw: bytes, enc: str, cap: int) -> bytes:
    """Decode a gzip or zstd body, refusing more than ``cap`` decoded bytes (a decompression bomb stops there)."""
    try:
        if enc == "gzip":
            d = zlib.decompressobj(16 + zlib.MAX_WBITS)
            out = d.decompress(raw, cap + 1)
            complete = d.eof and not d.unused_data
        else:
            z = ZstdDecompressor()
            out = z.decompress(raw, cap + 1)
            complete = z.eof and not z.unused_data
    except (zlib.error, ZstdError) as e:
        raise Refused(400, "bad_encoding", f"the body is not valid {enc}: {e}") from None
    if len(out) > cap:
        raise Refused(413, "decoded_too_large", f"the decoded body is over the limit of {cap} bytes")
    if not complete:
        raise Refused(400, "bad_encoding", f"the {enc} body is truncated or has trailing data")
    return out


def split_frames(body: bytes, max_frames: int) -> list[bytes]:
    """The frames of a body: one msgpack array of ``bin`` items, nothing after it."""
    up = msgpack.Unpacker(max_buffer_size=max(len(body), 1), raw=False, max_bin_len=len(body), max_str_len=0,
                          max_array_len=len(body), max_map_len=0, max_ext_len=0)
    up.feed(body)
    try:
        n = up.read_array_header()
    except Exception as e:  # msgpack raises OutOfData, StackError, ValueError, ...
        raise Refused(400, "bad_body", f"the body must be a msgpack array of frames ({type(e).__name__})") from None
    if n == 0:
        raise Refused(400, "bad_body", "the body holds no frame")
    if n > max_frames:
        raise Refused(413, "too_many_frames", f"{n} frames in one request, the limit is {max_frames}")
    frames: list[bytes] = []
    try:
        for i in range(n):
            item = up.unpack()
            if not isinstance(item, bytes):
                raise Refused(400, "bad_body", f"item {i} of the body is {type(item).__name__}, not frame bytes")
            frames.append(item)
        if up.tell() != len(body):
            raise Refused(400, "bad_body", "trailing bytes after the array of frames")
    except Refused:
        raise
    except Exception as e:
        raise Refused(400, "bad_body", f"malformed msgpack body ({type(e).__name__})") from None
    return frames


def validate(frames: list[bytes], project: str, run: str, gw: GW) -> tuple[int, set[str]]:
    """Decode every frame strictly; return the event count and the blobs referenced. Raises Refused."""
    limits = gw.settings.limits
    events = 0
    blobs: set[str] = set()
    for i, raw in enumerate(frames):
        try:
            f = decode_frame(raw, limits, strict=True)
        except LimitError as e:
            raise Refused(413, e.code, f"frame {i}: {e}", frame=i) from None
        except SchemaError as e:
            raise Refused(422, e.code, f"frame {i}: {e}", frame=i) from None
        except (RecursionError, MemoryError, ValueError, TypeError) as e:
            # Not expected from decode_frame (it raises SchemaError), but a hostile body must never be a 500.
            raise Refused(422, "malformed", f"frame {i} does not decode: {type(e).__name__}", frame=i) from None
        if f.project != project or f.run != run:
            raise Refused(422, "run_mismatch", f"frame {i} is for {f.project}/{f.run}, the URL names {project}/{run}",
                          frame=i)
        events += len(f.events)
        _refuse_wide_ints(f.events, i)
        for ev in f.events:
            if isinstance(ev, Log | Config | Summary):
                blobs |= blob_shas(ev.data)
            elif isinstance(ev, Start):
                blobs |= blob_shas(ev.config)
            elif isinstance(ev, LogBlock):
                for col in ev.cols:
                    if isinstance(col, list):
                        blobs |= blob_shas(col)
    return events, blobs


def _refuse_wide_ints(events: list[Any], frame: int) -> None:
    """Refuse (422 ``int_range``, naming the key) an int outside int64 anywhere in the values of ``events``."""
    for ev in events:
        items: Iterable[tuple[str, Any]]
        if isinstance(ev, Log):
            items, what = ev.data.items(), "value"
        elif isinstance(ev, LogBlock):
            # Array columns are int64 or float64 already; list columns hold the calls' values.
            items, what = ((k, c) for k, c in zip(ev.keys, ev.cols, strict=True) if isinstance(c, list)), "value"
        elif isinstance(ev, Config | Start):
            items, what = (ev.data if isinstance(ev, Config) else ev.config).items(), "config value"
        elif isinstance(ev, Summary):
            items, what = ev.data.items(), "summary value"
        else:
            continue
        for key, value in items:
            wide = _wide_int(value)
            if wide is not None:
                how = "is" if type(value) is int else "holds"
                raise Refused(422, "int_range", f"frame {frame}: {what} of {key!r:.200} {how} an int outside int64: "
                              f"{wide}", frame=frame, key=key)


def _wide_int(value: Any) -> int | None:
    """The first int outside int64 in a decoded value, inside lists and maps too (their depth is bounded by the
    decoder's limits), or None. Media values were checked by the decoder."""
    t = type(value)
    if t is int:
        return None if INT64_MIN <= value <= INT64_MAX else int(value)
    if t is list or t is dict:
        for v in value if t is list else value.values():
            if type(v) in (int, list, dict):
                wide = _wide_int(v)
                if wide is not None:
                    return wide
    return None


async def post_frames(request: web.Request) -> web.Response:
    gw = request.app[GW.KEY]
    project, run = path_ids(request)
    assert run is not None
    await gw.auth.authorize(request.headers.get("Authorization"), project, "write", request.remote or "?")
    ctype = request.headers.get("Content-Type", "").split(";")[0].strip().lower()
    if ctype != FRAMES_TYPE:
        raise Refused(415, "unsupported_media_type", f"Content-Type must be {FRAMES_TYPE}, got {ctype or 'none'!r}")
    names = gw.settings.names
    p = names.partition(project, run)
    if gw.backlog is not None and gw.backlog.over(p):
        raise Refused(429, "backlog", f"partition {p} is behind (backlog past {gw.settings.backlog_high_water} "
                      "entries); retry later", retry_after=gw.settings.retry_after_s)
    body = await read_body(request, gw, gw.settings.max_body_bytes)
    frames = split_frames(body, gw.settings.max_frames_per_request)
    if len(body) > _INLINE_BYTES:
        events, blobs = await asyncio.to_thread(validate, frames, project, run, gw)
    else:
        events, blobs = validate(frames, project, run, gw)
    ids = await _append(gw, p, project, frames, sorted(blobs))
    gw.metrics.frames += len(frames)
    gw.metrics.events += events
    if gw.backlog is not None:
        gw.backlog.added(p, len(frames))
    return web.json_response({"accepted": len(frames), "events": events, "partition": p, "ids": ids}, status=202)


# Check the referenced blobs and append the frames in one atomic step: a Lua script over the partition's keys only
# (stream, blobs and their owner sets share the hash tag, one Cluster slot), so it is valid on a single Redis and a
# Redis Cluster alike (a cluster client's WATCH/immediate-command pipeline mode does not behave as the
# single-server one). KEYS: stream, n blob keys, n owner-set keys. ARGV: field, project, blob TTL (ms), frames...
# A blob counts as stored for this project when its bytes are there and the project uploaded them; once the
# frames are appended, every referenced blob (and its owner set) lives at least the full blob TTL. Returns
# {0, missing positions} or {1, stream ids, blob sizes}.
_APPEND = """
local n = (#KEYS - 1) / 2
local missing = {}
for i = 1, n do
  if redis.call('EXISTS', KEYS[1 + i]) == 0 or redis.call('SISMEMBER', KEYS[1 + n + i], ARGV[2]) == 0 then
    missing[#missing + 1] = i
  end
end
if #missing > 0 then return {0, missing} end
local ids = {}
for i = 4, #ARGV do ids[#ids + 1] = redis.call('XADD', KEYS[1], '*', ARGV[1], ARGV[i]) end
local ttl = tonumber(ARGV[3])
for i = 1, n do
  if redis.call('PTTL', KEYS[1 + i]) < ttl then
    redis.call('PEXPIRE', KEYS[1 + i], ttl)
    redis.call('PEXPIRE', KEYS[1 + n + i], ttl)
  end
end
local sizes = {}
for i = 1, n do sizes[i] = redis.call('STRLEN', KEYS[1 + i]) end
return {1, ids, sizes}
"""


async def _append(gw: GW, p: int, project: str, frames: list[bytes], shas: list[str]) -> list[str]:
    names = gw.settings.names
    blob_keys = [names.blob(p, s) for s in shas]
    owner_keys = [blob_owners_key(gw.settings, p, s) for s in shas]
    try:
        ok, detail, *sizes = await gw.redis.eval(
            _APPEND, 1 + 2 * len(shas), names.stream(p), *blob_keys, *owner_keys, FRAME_FIELD, project,
            _ms(gw.settings.blob_ttl_s), *frames)
    except REDIS_ERRORS as e:
        raise Refused(503, "redis_unavailable", f"Redis is unreachable or failing: {type(e).__name__}",
                      retry_after=gw.settings.retry_after_s) from None
    if not ok:
        missing = [shas[int(i) - 1] for i in detail]
        raise Refused(422, "missing_blob", f"{len(missing)} referenced blobs are not stored for project "
                      f"{project!r}; PUT /api/v1/blobs/{{sha256}}?project=&run= first", missing=missing[:20])
    if shas:
        # The frames are in: a failure to account for them is logged, not answered (a resend would be a duplicate).
        pairs = [x for sha, size in zip(shas, sizes[0], strict=True) for x in (f"{p}:{sha}", int(size))]
        try:
            await _quota_call(gw, _EXTEND, project, _ms(gw.settings.blob_ttl_s), *pairs)
        except Refused as e:
            log.warning("gateway: blob accounting of project %r not updated: %s", project, e)
    return [r.decode() if isinstance(r, bytes) else str(r) for r in detail]


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


def blob_owners_key(settings: GatewaySettings, p: int, sha: str) -> str:
    """The set of projects that uploaded blob ``sha`` of partition ``p`` through the gateway (next to the blob)."""
    names = settings.names
    return f"{names.namespace}:{names.tag(p)}:blobown:{sha}"


def quota_keys(settings: GatewaySettings, project: str) -> tuple[str, str]:
    """The project's upload accounting: a sorted set (member ``<p>:<sha>`` → expiry, ms) and a hash of sizes."""
    h = hashlib.sha256(project.encode()).hexdigest()[:16]
    base = f"{settings.names.namespace}:{{bq-{h}}}"
    return f"{base}:blobs", f"{base}:sizes"


# The accounting scripts share a prologue: the time (Redis's clock, one for every gateway), and the uploads whose
# keys have expired dropped from the count (at most 1000 per call: each call adds at most one). KEYS: the project's
# sorted set and hash. Their own TTL is ARGV[1] (ms) past the latest expiry they hold, so an idle project's vanish.
_PROLOGUE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local gone = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, 1000)
for _, m in ipairs(gone) do
  local size = tonumber(redis.call('HGET', KEYS[2], m) or '0')
  redis.call('HINCRBY', KEYS[2], '_total', -size)
  redis.call('HDEL', KEYS[2], m)
  redis.call('ZREM', KEYS[1], m)
end
local keep = tonumber(ARGV[1])
local function touch()
  redis.call('PEXPIRE', KEYS[1], keep)
  redis.call('PEXPIRE', KEYS[2], keep)
end
"""

# Charge an upload: ARGV keep, member, size, TTL of the upload (ms), quota (0: none).
# Returns {1, charged} when allowed (charged 0: this project's upload of it is counted already), or
# {0, ms until the oldest counted upload expires} when the quota is full.
_RESERVE = _PROLOGUE + """
if redis.call('ZSCORE', KEYS[1], ARGV[2]) then return {1, 0} end
local size = tonumber(ARGV[3])
local total = tonumber(redis.call('HGET', KEYS[2], '_total') or '0')
local quota = tonumber(ARGV[5])
if quota > 0 and total + size > quota then
  local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  return {0, first[2] and (tonumber(first[2]) - now) or 1000}
end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[4]), ARGV[2])
redis.call('HSET', KEYS[2], ARGV[2], size)
redis.call('HINCRBY', KEYS[2], '_total', size)
touch()
return {1, 1}
"""

# Undo a charge (the upload found the blob stored already, or did not reach Redis): ARGV keep, member.
_RELEASE = _PROLOGUE + """
local size = redis.call('HGET', KEYS[2], ARGV[2])
if size then
  redis.call('HINCRBY', KEYS[2], '_total', -tonumber(size))
  redis.call('HDEL', KEYS[2], ARGV[2])
  redis.call('ZREM', KEYS[1], ARGV[2])
end
return 1
"""

# Charge referenced blobs to the referencing project for the blob TTL (the append extended them to it), whoever
# uploaded them first: ARGV keep, TTL (ms), then member and size pairs.
_EXTEND = _PROLOGUE + """
local exp = now + tonumber(ARGV[2])
for i = 3, #ARGV, 2 do
  if not redis.call('ZSCORE', KEYS[1], ARGV[i]) then
    redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1])
    redis.call('HINCRBY', KEYS[2], '_total', tonumber(ARGV[i + 1]))
  end
  redis.call('ZADD', KEYS[1], 'GT', exp, ARGV[i])
end
touch()
return 1
"""

# Store an upload: KEYS blob, owner set; ARGV bytes, TTL (ms), project. The owner set lives as long as the blob.
_STORE = """
local created = redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2])
redis.call('SADD', KEYS[2], ARGV[3])
local ttl = redis.call('PTTL', KEYS[1])
if ttl > 0 then redis.call('PEXPIRE', KEYS[2], ttl) end
if created then return 1 end
return 0
"""


async def _quota_call(gw: GW, script: str, project: str, *args: int | str) -> Any:
    """Run one of the accounting scripts on ``project``'s keys with ``args`` after ARGV[1]."""
    keep = _ms(gw.settings.blob_ttl_s + 3600.0)
    zset, sizes = quota_keys(gw.settings, project)
    try:
        return await gw.redis.eval(script, 2, zset, sizes, keep, *args)
    except REDIS_ERRORS as e:
        raise Refused(503, "redis_unavailable", f"Redis is unreachable or failing: {type(e).__name__}",
                      retry_after=gw.settings.retry_after_s) from None


def blob_target(request: web.Request) -> tuple[str, str, str]:
    """``(sha256, project, run)`` of a blob request (``/blobs/{sha256}?project=&run=``), or a 400."""
    sha = request.match_info["sha256"]
    if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
        raise Refused(400, "bad_path", "the blob's name must be its sha256 as 64 lowercase hex digits")
    try:
        project = check_run_id(request.query.get("project"), "project")
        run = check_run_id(request.query.get("run"), "run")
    except SchemaError as e:
        raise Refused(400, "bad_param", f"?project=&run= name the run the blob belongs to: {e}") from None
    return sha, project, run


async def put_blob(request: web.Request) -> web.Response:
    gw = request.app[GW.KEY]
    sha, project, run = blob_target(request)
    await gw.auth.authorize(request.headers.get("Authorization"), project, "write", request.remote or "?")
    ctype = request.headers.get("Content-Type", "application/octet-stream").split(";")[0].strip().lower()
    if ctype != "application/octet-stream":
        raise Refused(415, "unsupported_media_type", f"Content-Type must be application/octet-stream, got {ctype!r}")
    data = await read_body(request, gw, gw.settings.max_blob_bytes)
    if hashlib.sha256(data).hexdigest() != sha:
        raise Refused(422, "hash_mismatch", "the body does not hash to the sha256 in the URL")
    s = gw.settings
    p = s.names.partition(project, run)
    member = f"{p}:{sha}"
    if s.blob_quota_bytes and len(data) > s.blob_quota_bytes:
        raise Refused(413, "blob_over_quota", f"the blob is {len(data)} bytes, over the project's quota of "
                      f"{s.blob_quota_bytes} bytes of uploads waiting in Redis")
    pending = _ms(min(s.blob_pending_ttl_s, s.blob_ttl_s))
    blob_key, owners_key = s.names.blob(p, sha), blob_owners_key(s, p, sha)
    try:
        there = bool(await gw.redis.exists(blob_key))
    except REDIS_ERRORS as e:
        raise Refused(503, "redis_unavailable", f"Redis is unreachable or failing: {type(e).__name__}",
                      retry_after=s.retry_after_s) from None
    charged = 0
    if not there:  # new bytes: within the quota, charged before they are stored
        allowed, detail = await _quota_call(gw, _RESERVE, project, member, len(data), pending, s.blob_quota_bytes)
        if not allowed:
            raise Refused(429, "blob_quota", f"project {project!r} holds over {s.blob_quota_bytes} bytes of "
                          "uploads waiting in Redis; retry when some have expired",
                          retry_after=min(max(int(detail), 1000) / 1000, 60.0))
        charged = int(detail)
    try:
        created = await gw.redis.eval(_STORE, 2, blob_key, owners_key, data, pending, project)
    except REDIS_ERRORS as e:
        if charged:
            with contextlib.suppress(Refused):
                await _quota_call(gw, _RELEASE, project, member)
        raise Refused(503, "redis_unavailable", f"Redis is unreachable or failing: {type(e).__name__}",
                      retry_after=s.retry_after_s) from None
    if created and there:  # it expired in between: these bytes are new after all (charged, past the check)
        await _quota_call(gw, _RESERVE, project, member, len(data), pending, 0)
    elif charged and not created:  # stored by someone else in between: nothing added
        await _quota_call(gw, _RELEASE, project, member)
    gw.metrics.blobs += int(bool(created))
    return web.json_response({"sha256": sha, "partition": p, "stored": bool(created)}, status=201 if created else 200)

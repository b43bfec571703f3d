"""The write API: frames and media blobs, validated whole before anything reaches Redis.

``POST /api/v1/projects/{project}/runs/{run}/frames``

- ``Content-Type: application/x-stepline-frames``: the body is ONE msgpack array whose items are the frames'
  bytes (msgpack ``bin``), each exactly what the SDK would XADD (:func:`schemas.encode_frame_raw`), in order.
- ``Content-Encoding``: ``identity`` (default), ``gzip`` or ``zstd``; decoding stops at ``max_decoded_bytes``.
- Every frame is decoded with ``schemas.decode_frame(strict=True)`` and must name the URL's project and run.
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
  gzip/zstd encoded) must hash to ``sha256``; it is stored with ``SET NX EX blob_ttl`` exactly as the SDK does:
  201 when stored, 200 when it was there already (stored once).
"""

from __future__ import annotations

import asyncio
import hashlib
import zlib

import msgpack
from aiohttp import web
from redis.exceptions import RedisError

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
from schemas.frame import check_run_id
from schemas.media import blob_shas

from .errors import Refused
from .state import GW

try:  # Python 3.14+
    from compression.zstd import ZstdDecompressor, ZstdError  # type: ignore[import-not-found,unused-ignore]
except ImportError:  # pragma: no cover - depends on the Python version
    from backports.zstd import ZstdDecompressor, ZstdError

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
    ids = await _append(gw, p, frames, sorted(blobs))
    gw.metrics.frames += len(frames)
    gw.metrics.events += events
    if gw.backlog is not None:
        gw.backlog.added(p, len(frames))
    return web.json_response({"accepted": len(frames), "events": events, "partition": p, "ids": ids}, status=202)


# Check the referenced blobs and append the frames in one atomic step: a Lua script over the partition's keys only
# (stream and blobs share the hash tag, one Cluster slot), so it is valid on a single Redis and a Redis Cluster
# alike (a cluster client's WATCH/immediate-command pipeline mode does not behave as the single-server one).
_APPEND = """
local missing = {}
for i = 2, #KEYS do
  if redis.call('EXISTS', KEYS[i]) == 0 then missing[#missing + 1] = i - 1 end
end
if #missing > 0 then return {0, missing} end
local ids = {}
for i = 2, #ARGV do ids[#ids + 1] = redis.call('XADD', KEYS[1], '*', ARGV[1], ARGV[i]) end
return {1, ids}
"""


async def _append(gw: GW, p: int, frames: list[bytes], shas: list[str]) -> list[str]:
    names = gw.settings.names
    blob_keys = [names.blob(p, s) for s in shas]
    try:
        ok, detail = await gw.redis.eval(
            _APPEND, 1 + len(blob_keys), names.stream(p), *blob_keys, FRAME_FIELD, *frames)
    except (RedisError, OSError) as e:
        raise Refused(503, "redis_unavailable", f"Redis is unreachable or failing: {type(e).__name__}",
                      retry_after=gw.settings.retry_after_s) from None
    if not ok:
        missing = [shas[int(i) - 1] for i in detail]
        raise Refused(422, "missing_blob", f"{len(missing)} referenced blobs are not stored; "
                      "PUT /api/v1/blobs/{sha256} first", missing=missing[:20])
    return [r.decode() if isinstance(r, bytes) else str(r) for r in detail]


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
    p = gw.settings.names.partition(project, run)
    try:
        created = await gw.redis.set(gw.settings.names.blob(p, sha), data, nx=True, ex=int(gw.settings.blob_ttl_s))
    except (RedisError, OSError) as e:
        raise Refused(503, "redis_unavailable", f"Redis is unreachable or failing: {type(e).__name__}",
                      retry_after=gw.settings.retry_after_s) from None
    gw.metrics.blobs += int(bool(created))
    return web.json_response({"sha256": sha, "partition": p, "stored": bool(created)}, status=201 if created else 200)

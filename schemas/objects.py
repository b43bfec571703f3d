"""Where segments and media blobs live: the one storage client of stepline, a pyarrow file system and a base path.

The storage location is chosen by one setting, ``--storage-url`` / ``STEPLINE_STORAGE_URL``:

- unset (the default) or ``file:///abs/path``: the local data directory (``<data-dir>``, or that path);
- ``s3://bucket/prefix``: an S3-compatible bucket (AWS S3, MinIO, Ceph, Cloudflare R2, GCS's S3 interface), through
  :class:`pyarrow.fs.S3FileSystem`, which pyarrow ships (no extra dependency, range reads and coalesced concurrent
  column-chunk fetches built into its Parquet reader). The endpoint and region come from ``AWS_ENDPOINT_URL_S3`` /
  ``AWS_ENDPOINT_URL`` and ``AWS_REGION`` / ``AWS_DEFAULT_REGION`` (or the flags ``--s3-endpoint-url`` /
  ``--s3-region``, or ``?endpoint=...&region=...`` on the URL); credentials from ``AWS_ACCESS_KEY_ID`` /
  ``AWS_SECRET_ACCESS_KEY`` / ``AWS_SESSION_TOKEN`` or, when those are unset, the AWS SDK's default chain
  (profile, web identity, instance role). Credentials are deliberately not flags: a command line is visible to
  every user of the host.

Guarantees (both backends, so callers never branch on the backend):

- :meth:`ObjectStore.put` returns only once the object is complete under its final name, and an object that exists
  under its final name is complete: local files are written to a unique temporary name, fsync'd and renamed; an S3
  PUT is atomic (the bytes are built in memory first, so a failure half-way leaves no object, or at worst an
  incomplete multipart upload that S3 never shows as an object).
- An object holds exactly the bytes given, whatever its name's extension (no compression by extension).
- Objects are immutable: a name is written once (segments get fresh UUID names, blobs are content-addressed), so
  any cache keyed by name is sound.
- Reads are lazy: :meth:`ObjectStore.parquet` opens a random-access file, so pyarrow fetches the footer and then only
  the column chunks asked for (HTTP range requests on S3, a memory map locally), never the whole object.
- A missing object raises :class:`FileNotFoundError` on both backends; an unreachable or failing store raises
  :class:`OSError` (after the S3 client's own retries with backoff, which cover ``503 SlowDown``), which the workers
  treat as an outage: uncommitted work is dropped and redone from the committed offset.

Relative names (``segments/...``, ``blobs/...``) come from :mod:`schemas.store` and are what the metadata stores.
pyarrow is imported lazily: the SDK, which imports :mod:`schemas`, never loads it.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

if TYPE_CHECKING:
    import pyarrow as pa
    import pyarrow.fs as pafs
    import pyarrow.parquet as pq

#: Attempts per S3 request (the SDK's standard retry strategy: exponential backoff with jitter, retrying throttling
#: such as ``503 SlowDown``, 5xx and connection errors). Past them the caller sees an ``OSError``.
S3_ATTEMPTS = 6


@dataclass(frozen=True, slots=True)
class StorageTarget:
    """A parsed storage URL: where objects go and how to reach them (no connection made)."""

    url: str  # as given, for messages ("local" when unset)
    local_dir: Path | None  # the local backend's directory, else None
    bucket: str = ""
    prefix: str = ""
    endpoint: str | None = None
    region: str | None = None


def parse_storage_url(
    url: str | None,
    data_dir: Path,
    *,
    endpoint: str | None = None,
    region: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> StorageTarget:
    """Parse ``url`` (None or empty: the local ``data_dir``). Raises ``ValueError`` with the reason for a URL that
    names no usable location (the settings turn it into a ``SettingsError`` naming the variable)."""
    env = os.environ if environ is None else environ
    if not url:
        return StorageTarget("local", Path(data_dir).absolute())
    parts = urlsplit(url)
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost") or not parts.path.startswith("/"):
            raise ValueError(f"storage URL {url!r}: a file URL is file:///absolute/path")
        return StorageTarget(url, Path(parts.path))
    if parts.scheme != "s3":
        raise ValueError(
            f"storage URL {url!r}: the scheme must be s3:// or file:// (or leave it unset for the data directory)"
        )
    bucket = parts.netloc
    if not bucket or "@" in bucket or ":" in bucket:
        raise ValueError(
            f"storage URL {url!r}: s3://bucket/prefix needs a bucket name (credentials never go in the "
            "URL: use AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY)"
        )
    query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    unknown = set(query) - {"endpoint", "region"}
    if unknown:
        raise ValueError(f"storage URL {url!r}: unknown parameter(s) {sorted(unknown)} (endpoint and region only)")
    prefix = parts.path.strip("/")
    if any(p in ("", ".", "..") for p in prefix.split("/")) and prefix:
        raise ValueError(f"storage URL {url!r}: the prefix has an empty, '.' or '..' part")
    ep = endpoint or query.get("endpoint") or env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL") or None
    rg = region or query.get("region") or env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or None
    if ep is not None and urlsplit(ep).scheme not in ("http", "https"):
        raise ValueError(f"S3 endpoint {ep!r}: give it as http://host:port or https://host")
    return StorageTarget(url, None, bucket, prefix, ep, rg)


class ObjectStore:
    """Objects under one base path of one pyarrow file system. Thread-safe (pyarrow file systems are)."""

    def __init__(self, fs: pafs.FileSystem, base: str, url: str, *, local: bool) -> None:
        self.fs = fs
        self.base = base.rstrip("/")
        self.url = url
        self.local = local
        #: How many objects a reader should fetch at once: a bucket answers each request after a round trip, so
        #: reading several segments concurrently pays off; a local memory map does not need it.
        self.read_concurrency = 1 if local else 8
        #: How many objects a writer should store at once (a commit's segments, its blobs), for the same reason.
        self.write_concurrency = 1 if local else 8

    def __repr__(self) -> str:
        return f"<ObjectStore {self.url}>"

    def path(self, rel: str) -> str:
        """The file system path of a relative name."""
        return f"{self.base}/{rel}"

    def local_path(self, rel: str) -> Path | None:
        """The local file of ``rel``, or None for a remote store (for messages and ``sendfile``-style serving)."""
        return Path(self.path(rel)) if self.local else None

    # --- writing ---------------------------------------------------------------------------------------------

    def put(self, rel: str, data: bytes | pa.Buffer) -> int:
        """Store ``data`` under ``rel``, complete before this returns (see the module's guarantees); its size."""
        if self.local:
            return _put_local(Path(self.path(rel)), data)
        # compression=None: pyarrow would otherwise (de)compress by the name's extension (``.gz``, ``.zst``, ...),
        # and an object's bytes must be exactly the ones given.
        with self.fs.open_output_stream(self.path(rel), compression=None) as out:
            out.write(data)
        return len(data)

    def put_parquet(self, rel: str, table: pa.Table, **options: Any) -> int:
        """Encode ``table`` as Parquet in memory and :meth:`put` it; its size in bytes."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        sink = pa.BufferOutputStream()
        pq.write_table(table, sink, **options)
        return self.put(rel, sink.getvalue())

    def delete(self, rel: str) -> None:
        """Remove ``rel``; nothing happens when it is gone already."""
        with contextlib.suppress(FileNotFoundError):
            self.fs.delete_file(self.path(rel))

    # --- reading ---------------------------------------------------------------------------------------------

    def exists(self, rel: str) -> bool:
        import pyarrow.fs as pafs

        return bool(self.fs.get_file_info(self.path(rel)).type == pafs.FileType.File)

    def get(self, rel: str) -> bytes:
        """The whole object (FileNotFoundError when missing): for small objects such as media blobs."""
        with self.fs.open_input_stream(self.path(rel), compression=None) as f:
            return bytes(f.read())

    def chunks(self, rel: str, size: int = 1 << 20) -> Iterator[bytes]:
        """The object in pieces of at most ``size`` bytes, opened at the first ``next()`` (FileNotFoundError)."""
        with self.fs.open_input_stream(self.path(rel), compression=None) as f:
            while piece := f.read(size):
                yield bytes(piece)

    def open(self, rel: str) -> pa.NativeFile:
        """A random-access file: reads fetch only the ranges asked for (one HEAD first on a bucket, for the size)."""
        if self.local:
            import pyarrow as pa

            return pa.memory_map(self.path(rel))  # FileNotFoundError when missing
        return self.fs.open_input_file(self.path(rel))

    def parquet(self, rel: str, metadata: pq.FileMetaData | None = None) -> pq.ParquetFile:
        """A Parquet file opened lazily (footer first, then only the column chunks read). ``metadata`` (a footer read
        earlier: files never change) saves fetching it again. Remote reads coalesce nearby column chunks into
        fewer, concurrent range requests (``pre_buffer``)."""
        import pyarrow.parquet as pq

        return pq.ParquetFile(self.open(rel), metadata=metadata, pre_buffer=not self.local)

    def holds_any(self, prefix: str) -> bool:
        """Whether anything is under ``prefix``: one listing of its first level (bounded whatever it holds)."""
        import pyarrow.fs as pafs

        sel = pafs.FileSelector(self.path(prefix.strip("/")), recursive=False, allow_not_found=True)
        return bool(self.fs.get_file_info(sel))

    def list(self, prefix: str) -> list[tuple[str, int, float]]:
        """Objects under ``prefix`` (a relative directory): ``(relative name, size, modification time as epoch
        seconds)``; empty when the prefix holds nothing."""
        import pyarrow.fs as pafs

        sel = pafs.FileSelector(self.path(prefix.strip("/")), recursive=True, allow_not_found=True)
        out = []
        n = len(self.base) + 1
        for info in self.fs.get_file_info(sel):
            if info.type != pafs.FileType.File:
                continue
            mtime = info.mtime.timestamp() if info.mtime is not None else 0.0
            out.append((info.path[n:], int(info.size or 0), mtime))
        return out


def open_store(
    target: StorageTarget,
    *,
    environ: Mapping[str, str] | None = None,
    connect_timeout_s: float = 5.0,
    request_timeout_s: float = 30.0,
) -> ObjectStore:
    """Connect (lazily: no request is made here, and no directory is created before the first write) to the
    location ``target`` names."""
    import pyarrow.fs as pafs

    if target.local_dir is not None:
        return ObjectStore(
            pafs.LocalFileSystem(use_mmap=True), str(target.local_dir.absolute()), target.url, local=True
        )
    env = os.environ if environ is None else environ
    kw: dict[str, Any] = {}
    if target.endpoint:
        ep = urlsplit(target.endpoint)
        kw["endpoint_override"] = ep.netloc + ep.path.rstrip("/")
        kw["scheme"] = ep.scheme
    if env.get("AWS_ACCESS_KEY_ID") and env.get("AWS_SECRET_ACCESS_KEY"):
        kw["access_key"] = env["AWS_ACCESS_KEY_ID"]
        kw["secret_key"] = env["AWS_SECRET_ACCESS_KEY"]
        if env.get("AWS_SESSION_TOKEN"):
            kw["session_token"] = env["AWS_SESSION_TOKEN"]
    fs = pafs.S3FileSystem(
        region=target.region or "us-east-1",
        connect_timeout=connect_timeout_s,
        request_timeout=request_timeout_s,
        retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=S3_ATTEMPTS),
        # One PutObject per object instead of a multipart upload (create, part, complete): a third of the requests
        # and a third of the latency for segments and blobs, which are written whole.
        allow_delayed_open=True,
        **kw,
    )
    base = target.bucket + (f"/{target.prefix}" if target.prefix else "")
    return ObjectStore(fs, base, target.url, local=False)


def local_store(data_dir: Path | str) -> ObjectStore:
    """The default location: the local data directory."""
    return open_store(parse_storage_url(None, Path(data_dir)))


def as_store(where: ObjectStore | Path | str) -> ObjectStore:
    """An object store as given, or the local store of a data directory (the older ``data_dir`` arguments)."""
    return where if isinstance(where, ObjectStore) else local_store(where)


def _put_local(path: Path, data: bytes | pa.Buffer) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    # A unique temporary name: two workers may store the same content-addressed blob at once.
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return len(data)

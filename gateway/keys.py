"""API keys: per project, with scopes, stored hashed in ``sl_api_keys`` (:mod:`schemas.store`).

A key is shown once, at creation: ``slk_<id>_<secret>`` where ``id`` (16 hex characters) names the row and
``secret`` is 32 random bytes (URL-safe base64). The table keeps ``sha256(secret)`` only. A fast hash is enough
here because the secret has 256 bits of entropy: nobody can search that space, so a slow password hash (bcrypt,
argon2) would only make every request slower without making a stolen table any easier to abuse. Hashes are
compared with :func:`hmac.compare_digest` (constant time), and the lookup is by ``id``, never by the secret.

Scopes: ``write`` (POST frames, PUT blobs), ``read`` (every GET of the read API), ``admin`` (both). A key only
ever opens its own project.

``keys_main(argv)`` is the body of ``stepline keys create|list|revoke``.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import json
import secrets
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Engine, create_engine, insert, inspect, select, update

from schemas import SettingsError
from schemas.frame import check_run_id
from schemas.store import api_keys

SCOPES = ("write", "read", "admin")
PREFIX = "slk_"


@dataclass(frozen=True, slots=True)
class ApiKey:
    id: str
    project: str
    scopes: frozenset[str]
    created_at: float
    revoked_at: float | None

    def allows(self, project: str, scope: str) -> bool:
        """Whether this key may do ``scope`` (write/read) on ``project``."""
        return (self.revoked_at is None and project == self.project
                and (scope in self.scopes or "admin" in self.scopes))


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def parse_token(token: str) -> tuple[str, str] | None:
    """``(id, secret)`` of a well-formed token, else None."""
    if not token.startswith(PREFIX) or len(token) > 200:
        return None
    kid, sep, secret = token[len(PREFIX):].partition("_")
    if not sep or len(kid) != 16 or not secret or any(c not in "0123456789abcdef" for c in kid):
        return None
    return kid, secret


def parse_scopes(raw: str) -> frozenset[str]:
    scopes = frozenset(s.strip() for s in raw.split(",") if s.strip())
    bad = scopes - set(SCOPES)
    if not scopes or bad:
        raise SettingsError(f"scopes must be a comma-separated subset of {list(SCOPES)}, got {raw!r}")
    return scopes


class KeyStore:
    """Reads and writes ``sl_api_keys``. Synchronous (call it from a thread inside an event loop)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def _has_table(self) -> bool:
        url = self.engine.url
        if url.get_backend_name() == "sqlite" and url.database and not Path(url.database).exists():
            return False  # never create the file from a reader
        return inspect(self.engine).has_table(api_keys.name)

    def ensure_table(self) -> None:
        api_keys.create(self.engine, checkfirst=True)

    def create(self, project: str, scopes: frozenset[str]) -> tuple[ApiKey, str]:
        """A new key; returns it and the token (shown once, never stored)."""
        check_run_id(project, "project")
        self.ensure_table()
        kid = secrets.token_hex(8)
        secret = base64.urlsafe_b64encode(secrets.token_bytes(32)).decode().rstrip("=")
        now = time.time()
        with self.engine.begin() as conn:
            conn.execute(insert(api_keys).values(
                id=kid, project=project, scopes=",".join(sorted(scopes)), hash=hash_secret(secret), created_at=now,
            ))
        return ApiKey(kid, project, scopes, now, None), f"{PREFIX}{kid}_{secret}"

    def list(self, project: str | None = None) -> list[ApiKey]:
        if not self._has_table():
            return []
        q = select(api_keys).order_by(api_keys.c.created_at)
        if project is not None:
            q = q.where(api_keys.c.project == project)
        with self.engine.connect() as conn:
            return [_key(r._mapping) for r in conn.execute(q)]

    def revoke(self, kid: str) -> bool:
        """Revoke a key; False when there is no such key (or it was revoked already)."""
        if not self._has_table():
            return False
        with self.engine.begin() as conn:
            res = conn.execute(update(api_keys).where(api_keys.c.id == kid, api_keys.c.revoked_at.is_(None))
                               .values(revoked_at=time.time()))
            return bool(res.rowcount)

    def active_count(self) -> int:
        if not self._has_table():
            return 0
        with self.engine.connect() as conn:
            return len(conn.execute(select(api_keys.c.id).where(api_keys.c.revoked_at.is_(None))).all())

    def lookup(self, kid: str) -> tuple[ApiKey, str] | None:
        """The key with id ``kid`` and the stored SHA-256 of its secret (revoked keys too), or None."""
        if not self._has_table():
            return None
        with self.engine.connect() as conn:
            row = conn.execute(select(api_keys).where(api_keys.c.id == kid)).first()
        return None if row is None else (_key(row._mapping), str(row.hash))

    def verify(self, token: str) -> ApiKey | None:
        """The key a token belongs to when its secret matches (revoked keys are returned: the caller decides)."""
        parsed = parse_token(token)
        if parsed is None:
            return None
        kid, secret = parsed
        found = self.lookup(kid)
        if found is None:
            hmac.compare_digest(hash_secret(secret), "0" * 64)  # same work for unknown ids
            return None
        key, stored = found
        return key if hmac.compare_digest(hash_secret(secret), stored) else None


def _key(m: object) -> ApiKey:
    r = dict(m)  # type: ignore[call-overload]
    return ApiKey(
        id=r["id"], project=r["project"], scopes=frozenset(str(r["scopes"]).split(",")),
        created_at=float(r["created_at"]), revoked_at=None if r["revoked_at"] is None else float(r["revoked_at"]),
    )


def writer_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        return create_engine(url, connect_args={"timeout": 30})
    return create_engine(url, pool_size=1, max_overflow=0, pool_pre_ping=True)


def keys_main(argv: list[str] | None = None) -> int:
    """``stepline keys create PROJECT --scopes write,read | list [PROJECT] | revoke ID``."""
    from .settings import GatewaySettings

    ap = argparse.ArgumentParser(prog="stepline keys", description="Create, list and revoke gateway API keys.")
    ap.add_argument("--data-dir", type=Path, help="data directory (STEPLINE_DATA_DIR, default ./stepline-data)")
    ap.add_argument("--db-url", help="metadata SQLAlchemy URL (STEPLINE_DB_URL; default SQLite in the data dir)")
    sub = ap.add_subparsers(dest="action", required=True)
    p = sub.add_parser("create", help="create a key and print it (it is shown only this once)")
    p.add_argument("project")
    p.add_argument("--scopes", default="write", help="comma-separated: write, read, admin (default write)")
    p = sub.add_parser("list", help="list keys (never their secrets)")
    p.add_argument("project", nargs="?")
    p.add_argument("--format", choices=["table", "json"], default="table")
    p = sub.add_parser("revoke", help="revoke a key by id")
    p.add_argument("id")
    args = ap.parse_args(argv)
    try:
        settings = GatewaySettings.from_env(data_dir=args.data_dir, db_url=args.db_url)
    except (SettingsError, ValueError) as e:
        print(f"stepline keys: {e}", file=sys.stderr)
        return 2
    if settings.db_url is None:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    engine = writer_engine(settings.metadata_url)
    store = KeyStore(engine)
    try:
        if args.action == "create":
            try:
                key, token = store.create(args.project, parse_scopes(args.scopes))
            except (SettingsError, ValueError) as e:
                print(f"stepline keys: {e}", file=sys.stderr)
                return 2
            print(f"created key {key.id} for project {key.project} with scopes {','.join(sorted(key.scopes))}",
                  file=sys.stderr)
            print(token)
            return 0
        if args.action == "list":
            keys = store.list(args.project)
            if args.format == "json":
                print(json.dumps([{"id": k.id, "project": k.project, "scopes": sorted(k.scopes),
                                   "created_at": k.created_at, "revoked_at": k.revoked_at} for k in keys]))
                return 0
            print(f"{'id':16}  {'project':24}  {'scopes':18}  {'created':19}  revoked")
            for k in keys:
                created = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(k.created_at))
                revoked = "" if k.revoked_at is None else time.strftime("%Y-%m-%d %H:%M:%S",
                                                                         time.localtime(k.revoked_at))
                print(f"{k.id:16}  {k.project:24}  {','.join(sorted(k.scopes)):18}  {created:19}  {revoked}")
            return 0
        if store.revoke(args.id):
            print(f"revoked key {args.id}")
            return 0
        print(f"stepline keys: no active key {args.id!r}", file=sys.stderr)
        return 1
    finally:
        engine.dispose()

"""A fresh PostgreSQL database per test (created and dropped here), shared by the store and worker tests."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from .servers import PG_URL, need


@contextmanager
def fresh_database() -> Iterator[str]:
    """Yield the SQLAlchemy URL of a new, empty database; drop it afterwards."""
    try:
        import psycopg
    except ImportError:
        need("psycopg is not installed")
    base = PG_URL.replace("postgresql+psycopg://", "postgresql://")
    name = f"sl_test_{uuid.uuid4().hex[:12]}"
    try:
        admin = psycopg.connect(base, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as e:
        need(f"no PostgreSQL at {PG_URL}: {e}")
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield PG_URL.rsplit("/", 1)[0] + "/" + name
        finally:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

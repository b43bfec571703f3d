"""A fresh PostgreSQL database per test (created and dropped here), shared by the store and worker tests."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

PG_URL = os.environ.get("STEPLINE_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def need(reason: str) -> None:
    """Skip with ``reason``, or fail under CI where every server must be there (tests/conftest.py's rule)."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"required in CI: {reason}")
    pytest.skip(reason)


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

"""Several workers starting together on a new SQLite file: switching it to WAL mode must wait for the others."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

from sqlalchemy import text

from schemas.store import writer_engine


def test_first_connection_waits_for_a_writer_before_switching_to_wal(tmp_path: Path) -> None:
    db = tmp_path / "meta.sqlite"
    other = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
    other.execute("CREATE TABLE t (x INTEGER)")
    # Another worker's first transaction (BEGIN IMMEDIATE: the write lock) while the file is still in rollback
    # mode: SQLite answers the mode switch with "database is locked" at once, without its busy handler.
    other.execute("BEGIN IMMEDIATE")
    other.execute("INSERT INTO t VALUES (1)")
    release = threading.Timer(0.5, lambda: other.execute("COMMIT"))
    release.start()
    engine = writer_engine(f"sqlite:///{db}")
    try:
        t0 = time.monotonic()
        with engine.connect() as conn:
            mode = conn.execute(text("PRAGMA journal_mode")).scalar()
        assert str(mode).lower() == "wal"
        assert time.monotonic() - t0 >= 0.3  # it did wait for the other transaction rather than skip the switch
    finally:
        release.join()
        engine.dispose()
        other.close()

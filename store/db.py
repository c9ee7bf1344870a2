"""SQLite connections for kger's small databases (traces, judge cache): plain sqlite3, no extra dependency."""
from __future__ import annotations

import sqlite3
from datetime import datetime, timezone
from pathlib import Path


def connect(path: Path | str) -> sqlite3.Connection:
    """Autocommit connection (transactions are explicit), WAL so readers never block the writer,
    and a 30 s busy timeout so two kger processes wait for each other instead of failing."""
    memory = str(path) == ":memory:"
    if not memory:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(str(path), timeout=30, isolation_level=None, check_same_thread=False)
    db.row_factory = sqlite3.Row
    if not memory:
        db.execute("pragma journal_mode=wal")
    db.execute("pragma foreign_keys=on")
    return db


def utcnow() -> str:
    """ISO 8601 in UTC with microseconds: sorts as text, so SQL can compare it directly."""
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def to_utc_text(moment: datetime) -> str:
    """The same text form for a filter bound; a naive datetime is taken as local time."""
    return moment.astimezone(timezone.utc).isoformat(timespec="microseconds")

"""SQLite connections for kger's small databases (traces, judge cache, checkpoints): plain sqlite3.

A damaged file must not make kger unusable, and must not be lost: `open_db` moves it aside (kept as
`NAME.damaged-<timestamp>`, with its -wal/-shm files), starts a fresh one and says so in one line. A
database that cannot be written (a read-only home) is a `ReadOnlyStateError`, one line, which callers that
can work without writing (ask from a read-only home) turn into a note.
"""
from __future__ import annotations

import errno
import logging
import os
import sqlite3
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Optional
from urllib.parse import quote

from retrieval.errors import KgerError

log = logging.getLogger("kger.store")

_DAMAGED = ("SQLITE_CORRUPT", "SQLITE_NOTADB")
_READ_ONLY_ERRNOS = (errno.EROFS, errno.EACCES, errno.EPERM)


class ReadOnlyStateError(KgerError):
    """A kger database (or its folder) cannot be written: a read-only filesystem or no permission."""


def connect(path: Path | str) -> sqlite3.Connection:
    """Autocommit connection (transactions are explicit), WAL so readers never block the writer,
    and a 30 s busy timeout so two kger processes wait for each other instead of failing."""
    memory = str(path) == ":memory:"
    if not memory:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(str(path), timeout=30, isolation_level=None, check_same_thread=False)
    db.row_factory = sqlite3.Row
    try:
        if not memory:
            db.execute("pragma journal_mode=wal")
        db.execute("pragma foreign_keys=on")
    except BaseException:
        db.close()
        raise
    return db


def connect_read_only(path: Path | str, live: bool = False) -> sqlite3.Connection:
    """A connection that never writes (not even WAL or lock files), for a database on a read-only filesystem.
    `live`: read-only but seeing other processes' commits (mode=ro: SQLite may keep its -shm/-wal beside it)."""
    mode = "mode=ro" if live else "immutable=1"
    db = sqlite3.connect(f"file:{quote(str(Path(path).resolve()))}?{mode}", uri=True, isolation_level=None,
                         check_same_thread=False, timeout=30)
    db.row_factory = sqlite3.Row
    return db


def is_damaged(e: BaseException) -> bool:
    return isinstance(e, sqlite3.DatabaseError) and (
        getattr(e, "sqlite_errorname", "") in _DAMAGED
        or str(e) in ("database disk image is malformed", "file is not a database"))


def is_read_only(e: BaseException) -> bool:
    if isinstance(e, OSError):
        return e.errno in _READ_ONLY_ERRNOS
    name = getattr(e, "sqlite_errorname", "")
    return isinstance(e, sqlite3.OperationalError) and (
        name.startswith("SQLITE_READONLY") or name.startswith("SQLITE_CANTOPEN") or "readonly" in str(e))


def move_aside(path: Path) -> Path:
    """Rename a damaged database (and its -wal/-shm/-journal companions) to NAME.damaged-<timestamp>[-N]."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    dest = path.with_name(f"{path.name}.damaged-{stamp}")
    n = 1
    while dest.exists():
        n += 1
        dest = path.with_name(f"{path.name}.damaged-{stamp}-{n}")
    os.replace(path, dest)
    for suffix in ("-wal", "-shm", "-journal"):
        extra = Path(f"{path}{suffix}")
        if extra.exists():
            os.replace(extra, Path(f"{dest}{suffix}"))
    return dest


def open_db(path: Path | str, what: str, setup: Optional[Callable[[sqlite3.Connection], None]] = None
            ) -> sqlite3.Connection:
    """`connect` then `setup` (schema, functions). A damaged file is moved aside and a fresh one made (said in
    one warning); a read-only one raises ReadOnlyStateError. `what` names the file for the user."""
    path = Path(path)
    for attempt in (1, 2):
        db = None
        try:
            db = connect(path)
            if setup is not None:
                setup(db)
            return db
        except (sqlite3.DatabaseError, OSError) as e:
            if db is not None:
                db.close()
            if is_read_only(e):
                raise ReadOnlyStateError(f"{path} ({what}) cannot be written: its folder is read-only ({e})") from None
            if attempt == 2 or not is_damaged(e):
                raise
            try:
                kept = move_aside(path)
            except OSError as moving:
                raise ReadOnlyStateError(f"{path} ({what}) is damaged ({e}) and cannot be moved aside ({moving}): "
                                         f"move or delete it yourself") from None
            log.warning("%s (%s) was damaged (%s): kept it as %s and started a fresh one; delete the kept file "
                        "when you no longer need it", path, what, e, kept.name)
    raise AssertionError("unreachable")


def utcnow() -> str:
    """ISO 8601 in UTC with microseconds: sorts as text, so SQL can compare it directly."""
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def to_utc_text(moment: datetime) -> str:
    """The same text form for a filter bound; a naive datetime is taken as local time."""
    return moment.astimezone(timezone.utc).isoformat(timespec="microseconds")


class LockedDB:
    """One SQLite connection (`_db`) behind one lock (`_lock`), shared by the threads of one process: what
    cache.db and traces.db have in common. Closing takes the lock, so no statement is cut off mid-way."""

    _db: sqlite3.Connection
    _lock: "threading.Lock | threading.RLock"

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

"""The conversation checkpoint database (checkpoints.db, LangGraph's SqliteSaver): dropping threads and
giving the space back. Storage work, so it lives in store/ and `kger trace prune` only calls it."""
from __future__ import annotations

from pathlib import Path


def db_size(path: Path) -> int:
    """A SQLite database's bytes on disk, with its WAL and shared-memory files."""
    return sum(p.stat().st_size for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm")) if p.is_file())


def prune_checkpoints(path: Path, threads: list[str]) -> int:
    """Drop these conversation threads from the checkpoint database (LangGraph's own delete), then VACUUM."""
    import sqlite3

    from langgraph.checkpoint.sqlite import SqliteSaver

    if not path.is_file():
        return 0
    conn = sqlite3.connect(str(path), check_same_thread=False)
    try:
        saver = SqliteSaver(conn)
        for thread in threads:
            saver.delete_thread(thread)
        conn.commit()
        conn.isolation_level = None
        conn.execute("vacuum")
        conn.execute("pragma wal_checkpoint(truncate)")
    finally:
        conn.close()
    return len(threads)

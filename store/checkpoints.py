"""The conversation checkpoint database (checkpoints.db, LangGraph's SqliteSaver): dropping threads, keeping a
thread to its last checkpoint, compacting the files older versions left, and giving the space back. Storage
work, so it lives in store/; `Assistant.ask`, agent/persist.py and `kger trace prune` only call it.

Why a thread keeps one checkpoint: LangGraph's SqliteSaver writes the whole state at every step of every turn
and never drops the old ones, so a thread's file grows with every turn even when the state is bounded (issue
20 §1). kger never travels back in a thread's history (the full record of every run is in traces.db), so after
each turn the thread keeps its latest checkpoint only: what the next turn starts from.
"""
from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any, Optional

# checkpoints.db's PRAGMA user_version: 1 = every thread holds one checkpoint with a bounded state
COMPACTED = 1

_DROP_OLDER = (
    "DELETE FROM checkpoints WHERE {where} checkpoint_id <> (SELECT max(c.checkpoint_id) FROM checkpoints c "
    "WHERE c.thread_id = checkpoints.thread_id AND c.checkpoint_ns = checkpoints.checkpoint_ns)",
    "DELETE FROM writes WHERE {where} NOT EXISTS (SELECT 1 FROM checkpoints c WHERE c.thread_id = writes.thread_id "
    "AND c.checkpoint_ns = writes.checkpoint_ns AND c.checkpoint_id = writes.checkpoint_id)",
)


def db_size(path: Path) -> int:
    """A SQLite database's bytes on disk, with its WAL and shared-memory files."""
    return sum(p.stat().st_size for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm")) if p.is_file())


def _in_transaction(conn: sqlite3.Connection, statements: list[tuple[str, tuple]]) -> None:
    """Run the statements as one transaction, whatever the connection's isolation level."""
    if conn.isolation_level is None:
        conn.execute("BEGIN IMMEDIATE")
    try:
        for sql, args in statements:
            conn.execute(sql, args)
        conn.commit()
    except BaseException:
        conn.rollback()
        raise


def keep_latest(saver: Any, thread_id: str) -> None:
    """Drop every checkpoint of `thread_id` but the latest, with the writes of the dropped ones.

    SqliteSaver: two DELETEs in one transaction under the saver's lock (a thread is never left without its
    latest checkpoint). Any other saver (InMemorySaver): its public API, the latest checkpoint read, the
    thread deleted, the checkpoint and its pending writes put back."""
    from langgraph.checkpoint.sqlite import SqliteSaver

    if isinstance(saver, SqliteSaver):
        where = "thread_id = ? AND"
        with saver.lock:
            _in_transaction(saver.conn, [(sql.format(where=where), (str(thread_id),)) for sql in _DROP_OLDER])
        return
    restore(saver, thread_id, saver.get_tuple({"configurable": {"thread_id": thread_id}}))


def restore(saver: Any, thread_id: str, tup: Any) -> None:
    """Make `tup` (a CheckpointTuple read before, or None) the thread's only checkpoint: a cancelled turn's
    steps are dropped, so the thread is as the last finished turn left it. SqliteSaver: the newer rows
    deleted in one transaction; any other saver: the thread deleted and `tup` put back."""
    from langgraph.checkpoint.sqlite import SqliteSaver

    if isinstance(saver, SqliteSaver) and tup is not None:
        args = (str(thread_id), tup.config["configurable"]["checkpoint_id"])
        with saver.lock:
            _in_transaction(saver.conn, [(f"DELETE FROM {table} WHERE thread_id = ? AND checkpoint_id > ?", args)
                                         for table in ("checkpoints", "writes")])
        return
    saver.delete_thread(thread_id)
    if tup is None:
        return
    ns = tup.config["configurable"].get("checkpoint_ns", "")
    # the class's own put and put_writes: not an instance's guard for a cancelled turn (agent/cancel.py)
    put, put_writes = type(saver).put, type(saver).put_writes
    config = put(saver, {"configurable": {"thread_id": thread_id, "checkpoint_ns": ns}}, tup.checkpoint, tup.metadata,
                 dict(tup.checkpoint.get("channel_versions") or {}))
    by_task: dict[str, list[tuple[str, Any]]] = {}
    for task_id, channel, value in tup.pending_writes or []:
        by_task.setdefault(task_id, []).append((channel, value))
    for task_id, writes in by_task.items():
        put_writes(saver, config, writes, task_id)


def compact(conn: sqlite3.Connection, serde: Any, drop_channels: tuple[str, ...] = ("messages",)) -> Optional[int]:
    """Bring a checkpoints.db written before threads were bounded to the bounded form, once: each thread keeps
    its latest checkpoint, without `drop_channels` (the whole conversation's messages with every turn's tool
    artifacts; a thread's next turn starts its messages afresh anyway), then VACUUM. Returns the number of
    threads compacted, or None when the file was already compacted (PRAGMA user_version)."""
    if conn.execute("pragma user_version").fetchone()[0] >= COMPACTED:
        return None
    stale = conn.execute("select count(*) from (select 1 from checkpoints group by thread_id having count(*) > 1)"
                         ).fetchone()[0]
    if stale:
        rewritten = []
        for tid, ns, cid, type_, blob in conn.execute(
                "select thread_id, checkpoint_ns, checkpoint_id, type, checkpoint from checkpoints c where "
                "checkpoint_id = (select max(checkpoint_id) from checkpoints d where d.thread_id = c.thread_id and "
                "d.checkpoint_ns = c.checkpoint_ns)").fetchall():
            checkpoint = serde.loads_typed((type_, blob))
            values = checkpoint.get("channel_values") or {}
            if any(ch in values for ch in drop_channels):
                checkpoint["channel_values"] = {k: v for k, v in values.items() if k not in drop_channels}
                new_type, new_blob = serde.dumps_typed(checkpoint)
                rewritten.append(("update checkpoints set type = ?, checkpoint = ? where thread_id = ? and "
                                  "checkpoint_ns = ? and checkpoint_id = ?", (new_type, new_blob, tid, ns, cid)))
        _in_transaction(conn, [(sql.format(where=""), ()) for sql in _DROP_OLDER] + rewritten)
    conn.execute(f"pragma user_version = {COMPACTED}")
    if stale:
        vacuum(conn)
    return stale


def vacuum(conn: sqlite3.Connection) -> bool:
    """Give freed pages back to the file system; False when another connection holds the file (it is then
    left for the next time, never waited for)."""
    level = conn.isolation_level
    try:
        conn.isolation_level = None
        conn.execute("vacuum")
        conn.execute("pragma wal_checkpoint(truncate)")
        return True
    except sqlite3.OperationalError:
        return False
    finally:
        conn.isolation_level = level


def prune_checkpoints(path: Path, threads: list[str]) -> int:
    """Drop these conversation threads from the checkpoint database (LangGraph's own delete), then VACUUM."""
    from langgraph.checkpoint.sqlite import SqliteSaver

    if not path.is_file():
        return 0
    conn = sqlite3.connect(str(path), check_same_thread=False)
    try:
        saver = SqliteSaver(conn)
        for thread in threads:
            saver.delete_thread(thread)
        conn.commit()
        if threads:
            vacuum(conn)
    finally:
        conn.close()
    return len(threads)

"""Trace records: one row per run (a question, a chat turn, a batch, an eval) and its ordered events.

A run is started before the graph runs and each event is committed as it happens, so a crash keeps
everything up to the crash (status stays 'running'; the next open that finds the writing process gone marks it
'interrupted', store/liveness.py). Events store what each step saw and returned,
including what the LLM said, so showing a trace never calls a model. Every value is passed through
``store.redact.record`` first: JSON-able, no API key.
"""
from __future__ import annotations

import json
import re
import sqlite3
import threading
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

from retrieval.errors import KgerError
from store import liveness
from store.db import LockedDB, ReadOnlyStateError, connect_read_only, open_db, to_utc_text, utcnow
from store.migrations import migrate
from store.paths import traces_db_path
from store.redact import record, scrub_text

KINDS = ("ask", "chat", "batch", "eval")
FINAL_STATUSES = ("ok", "error", "cancelled")  # cancelled: Ctrl-C in a chat turn (agent/cancel.py)
INTERRUPTED_ERROR = "interrupted: the process writing this run ended before it finished"
_JSON_COLUMNS = ("models", "answer", "timings")
_HEX = re.compile(r"^[0-9a-f]+$")


class UnknownRunError(KgerError, KeyError):
    """No run has this id (or id prefix)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else "unknown run"


class AmbiguousRunError(UnknownRunError):
    """Several runs start with this prefix."""


def _dump(value: Any) -> str | None:
    return None if value is None else json.dumps(record(value), ensure_ascii=False, allow_nan=False)


def _text(value: Any) -> str | None:
    return None if value is None else scrub_text(str(value))


def _row(row: sqlite3.Row) -> dict:
    """A run as a dict; a 'running' run whose writer is gone reads as 'interrupted' (a read-only reader
    cannot mark it, the next writer will)."""
    out = dict(row)
    if out.get("status") == "running" and liveness.is_dead(
            out.get("writer_pid"), out.get("writer_host"), out.get("writer_start")):
        out["status"], out["error"] = "interrupted", out.get("error") or INTERRUPTED_ERROR
    for column in _JSON_COLUMNS:
        if out.get(column) is not None:
            out[column] = json.loads(out[column])
    return out


def _functions(db: sqlite3.Connection) -> sqlite3.Connection:
    db.create_function("kger_casefold", 1, lambda s: None if s is None else s.casefold(), deterministic=True)
    return db


def _open_current_read_only(path: Path) -> sqlite3.Connection | None:
    """A read-only connection when every migration is applied; None when the schema needs work (or the file
    is damaged), which the normal open then does (migrates, or moves the damaged file aside)."""
    from store.migrations import MIGRATIONS

    try:
        db = _functions(connect_read_only(path, live=True))
    except sqlite3.DatabaseError:
        return None
    try:
        applied = {r[0] for r in db.execute("select name from _kger_migrations")}
    except sqlite3.DatabaseError:
        applied = set()
    if all(fn.__name__ in applied for fn in MIGRATIONS):
        return db
    db.close()
    return None


class TraceDB(LockedDB):
    """traces.db (``HOME/traces.db`` by default). One connection, guarded by a lock: safe to share
    between the threads of one process; other processes wait on SQLite's 30 s busy timeout."""

    def __init__(self, path: Path | str | None = None, *, reader: bool = False):
        """`reader`: for commands that only read (trace list, show, export): an existing database whose schema
        is current is opened read-only, so reading never writes to it (no migration, no journal change)."""
        self.path = traces_db_path() if path is None else path
        self._lock = threading.RLock()
        self.read_only = False  # a trace database on a read-only filesystem: listed and shown, never written
        if reader and Path(self.path).is_file():
            self._db = _open_current_read_only(Path(self.path))
            if self._db is not None:
                self.read_only = True
                return
        try:  # a damaged file is kept aside and a fresh one started (store.db.open_db says so)
            self._db = open_db(self.path, "the trace database", lambda db: migrate(_functions(db)))
        except ReadOnlyStateError:
            if not Path(self.path).is_file():
                raise
            self._db, self.read_only = _functions(connect_read_only(self.path)), True
            return
        self.mark_interrupted()

    def mark_interrupted(self) -> int:
        """Mark 'interrupted' every run still 'running' whose writing process is gone (store/liveness.py);
        runs of live processes, of other hosts and of unknown writers are left alone. Returns how many."""
        with self._lock:
            rows = self._db.execute("select id, writer_pid, writer_host, writer_start from runs"
                                    " where status = 'running' and writer_pid is not null").fetchall()
            dead = [r["id"] for r in rows if liveness.is_dead(r["writer_pid"], r["writer_host"], r["writer_start"])]
            for run_id in dead:
                self._db.execute(
                    "update runs set status = 'interrupted', finished = ?, error = coalesce(error, ?)"
                    " where id = ? and status = 'running'",
                    (utcnow(), INTERRUPTED_ERROR, run_id))
        return len(dead)

    def _write(self, sql: str, params: tuple) -> sqlite3.Cursor:
        with self._lock:
            return self._db.execute(sql, params)

    # -- writing -------------------------------------------------------------------------------
    def start_run(
        self,
        *,
        input: str,
        kind: str,
        llm: str | None,
        store: str | None,
        bundle: str | None,
        models: Any,
        thread_id: str | None = None,
    ) -> str:
        """Record a run as 'running' and return its id (uuid4 hex: any short prefix is likely unique)."""
        if kind not in KINDS:
            raise ValueError(f"run kind must be one of {KINDS}, not {kind!r}")
        if self.read_only:
            raise ReadOnlyStateError(f"{self.path} is read-only: this run cannot be recorded")
        run_id = uuid.uuid4().hex
        self._write(
            "insert into runs (id, created, thread_id, kind, input, llm, store, bundle, models, status,"
            " writer_pid, writer_host, writer_start) values (?, ?, ?, ?, ?, ?, ?, ?, ?, 'running', ?, ?, ?)",
            (run_id, utcnow(), _text(thread_id), kind, _text(input), _text(llm), _text(store), _text(bundle),
             _dump(models), *liveness.me()),
        )
        return run_id

    def add_event(self, run_id: str, node: str, kind: str, payload: dict) -> int:
        """Append one event (committed at once) and return its sequence number within the run."""
        with self._lock:
            self._db.execute("begin immediate")
            try:
                if not self._db.execute("select 1 from runs where id = ?", (run_id,)).fetchone():
                    raise UnknownRunError(f"No run {run_id!r} in {self.path}")
                seq = self._db.execute(
                    "select coalesce(max(seq), -1) + 1 from events where run_id = ?", (run_id,)
                ).fetchone()[0]
                self._db.execute(
                    "insert into events (run_id, seq, node, kind, payload, created) values (?, ?, ?, ?, ?, ?)",
                    (run_id, seq, _text(node), _text(kind), _dump(payload), utcnow()),
                )
                self._db.execute("commit")
            except BaseException:
                self._db.execute("rollback")
                raise
        return seq

    def finish_run(
        self, run_id: str, *, answer: dict | None, timings: dict, status: str = "ok", error: str | None = None
    ) -> None:
        if status not in FINAL_STATUSES:
            raise ValueError(f"a finished run's status is one of {FINAL_STATUSES}, not {status!r}")
        cursor = self._write(
            "update runs set status = ?, answer = ?, timings = ?, error = ?, finished = ? where id = ?",
            (status, _dump(answer), _dump(timings), _text(error), utcnow(), run_id),
        )
        if cursor.rowcount == 0:
            raise UnknownRunError(f"No run {run_id!r} in {self.path}")

    # -- pruning -------------------------------------------------------------------------------
    def prune(self, before: datetime, dry_run: bool = False) -> dict:
        """Delete the runs started before `before` with their events, in one transaction; then VACUUM.

        Returns the counts and the conversation threads no remaining run refers to (a chat thread whose
        later turns are kept stays), so the caller can drop their checkpoints too. `dry_run`: the same
        counts, the transaction rolled back."""
        cutoff = to_utc_text(before)
        with self._lock:
            self._db.execute("begin immediate")
            try:
                old = "select id from runs where created < ?"
                events = self._db.execute(
                    f"select count(*) from events where run_id in ({old})", (cutoff,)).fetchone()[0]
                threads = {r[0] for r in self._db.execute(
                    "select distinct thread_id from runs where created < ? and thread_id is not null", (cutoff,))}
                self._db.execute(f"delete from events where run_id in ({old})", (cutoff,))
                runs = self._db.execute("delete from runs where created < ?", (cutoff,)).rowcount
                kept = {r[0] for r in self._db.execute(
                    "select distinct thread_id from runs where thread_id is not null")}
                self._db.execute("rollback" if dry_run else "commit")
            except BaseException:
                self._db.execute("rollback")
                raise
            if dry_run:
                return {"runs": runs, "events": events, "threads": sorted(threads - kept)}
            self._db.execute("vacuum")
            self._db.execute("pragma wal_checkpoint(truncate)")
        return {"runs": runs, "events": events, "threads": sorted(threads - kept)}

    # -- reading -------------------------------------------------------------------------------
    def list_runs(
        self,
        limit: int | None = 3,
        since: datetime | None = None,
        until: datetime | None = None,
        text: str | None = None,
    ) -> list[dict]:
        """Newest first (``limit`` 0 or None: all). ``text`` matches the input, ignoring case;
        ``since``/``until`` bound the start time (naive datetimes are local time)."""
        where, params = _run_filter(since, until, text)
        sql = (
            "select runs.*, (select count(*) from events where events.run_id = runs.id) as event_count from runs"
            + (" where " + " and ".join(where) if where else "")
            + " order by created desc, rowid desc"
        )
        if limit:
            sql += " limit ?"
            params.append(int(limit))
        with self._lock:
            return [_row(r) for r in self._db.execute(sql, params)]

    def count_runs(self, since: datetime | None = None, until: datetime | None = None, text: str | None = None) -> int:
        """How many runs `list_runs` with the same filters and no limit would return."""
        where, params = _run_filter(since, until, text)
        with self._lock:
            return self._db.execute("select count(*) from runs" + (" where " + " and ".join(where) if where else ""),
                                    params).fetchone()[0]

    def short_ids(self, ids: list[str], least: int = 8) -> dict[str, str]:
        """Each id's shortest prefix of at least `least` characters that no other stored run shares: what
        `trace list` shows, and `resolve` accepts."""
        out = {}
        with self._lock:
            for run_id in ids:
                n = least
                while n < len(run_id) and self._db.execute(
                        "select count(*) from runs where substr(id, 1, ?) = ?", (n, run_id[:n])).fetchone()[0] > 1:
                    n += 2
                out[run_id] = run_id[:n]
        return out

    def resolve(self, run_id: str) -> str:
        """The full id for an id or a unique prefix of one."""
        run_id = run_id.strip().lower()
        with self._lock:
            if self._db.execute("select 1 from runs where id = ?", (run_id,)).fetchone():
                return run_id
            matches = (
                [r[0] for r in self._db.execute(
                    "select id from runs where substr(id, 1, ?) = ? order by created desc limit 6",
                    (len(run_id), run_id),
                )]
                if run_id and _HEX.match(run_id)
                else []
            )
        if not matches:
            raise UnknownRunError(f"No run {run_id!r} in {self.path}: list recent runs with `kger trace list`")
        if len(matches) > 1:
            shown = ", ".join(m[: len(run_id) + 4] for m in matches[:5])
            raise AmbiguousRunError(f"Run id prefix {run_id!r} is ambiguous: it matches several runs ({shown}, ...); give more of it")
        return matches[0]

    def get_run(self, run_id: str) -> dict:
        """A run with its events (payloads parsed), by id or unique id prefix."""
        full = self.resolve(run_id)
        with self._lock:
            run = _row(self._db.execute("select * from runs where id = ?", (full,)).fetchone())
            run["events"] = [
                {**dict(e), "payload": None if e["payload"] is None else json.loads(e["payload"])}
                for e in self._db.execute(
                    "select seq, node, kind, payload, created from events where run_id = ? order by seq", (full,)
                )
            ]
        return run


def _run_filter(since: datetime | None, until: datetime | None, text: str | None) -> tuple[list[str], list]:
    """The where-clauses and parameters of a run listing's filters."""
    where, params = [], []
    if since is not None:
        where.append("created >= ?")
        params.append(to_utc_text(since))
    if until is not None:
        where.append("created <= ?")
        params.append(to_utc_text(until))
    if text:
        where.append("instr(kger_casefold(input), ?) > 0")
        params.append(text.casefold())
    return where, params

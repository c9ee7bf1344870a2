"""The trace database's schema, as small named migrations (the simonw/llm pattern).

Never edit a migration once released: add ``mNNN_...`` below it. ``migrate()`` runs on every open and
records what it applied in ``_kger_migrations``.
"""
from __future__ import annotations

import sqlite3
from typing import Callable

from store.db import utcnow

MIGRATIONS: list[Callable[[sqlite3.Connection], None]] = []
migration = MIGRATIONS.append


@migration
def m001_initial(db: sqlite3.Connection) -> None:
    db.execute(
        """
        create table runs (
            id text primary key,
            created text not null,
            thread_id text,
            kind text not null,
            input text,
            llm text,
            store text,
            bundle text,
            models text,
            status text not null,
            answer text,
            timings text,
            error text,
            finished text
        )
        """
    )
    db.execute(
        """
        create table events (
            run_id text not null references runs(id),
            seq integer not null,
            node text,
            kind text,
            payload text,
            created text not null,
            primary key (run_id, seq)
        )
        """
    )
    db.execute("create index runs_created on runs(created)")
    db.execute("create index runs_thread_id on runs(thread_id)")


@migration
def m002_run_writer(db: sqlite3.Connection) -> None:
    """Who writes a run (store/liveness.py): a run left 'running' by a dead process is marked 'interrupted'."""
    db.execute("alter table runs add column writer_pid integer")
    db.execute("alter table runs add column writer_host text")
    db.execute("alter table runs add column writer_start text")


def migrate(db: sqlite3.Connection) -> list[str]:
    """Apply pending migrations, each in its own transaction; returns the names applied now.

    ``begin immediate`` takes the write lock before reading what is applied, so two processes opening
    a new database at once cannot both run a migration.
    """
    db.execute("create table if not exists _kger_migrations (name text primary key, applied_at text not null)")
    applied_now: list[str] = []
    for fn in MIGRATIONS:
        db.execute("begin immediate")
        try:
            done = db.execute("select 1 from _kger_migrations where name = ?", (fn.__name__,)).fetchone()
            if not done:
                fn(db)
                db.execute(
                    "insert into _kger_migrations (name, applied_at) values (?, ?)", (fn.__name__, utcnow())
                )
                applied_now.append(fn.__name__)
            db.execute("commit")
        except BaseException:
            db.execute("rollback")
            raise
    return applied_now

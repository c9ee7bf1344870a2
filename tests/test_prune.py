"""Bounded state (issue 10): one-shot turns keep no checkpoints; `kger trace prune` drops old runs and threads."""
from __future__ import annotations

import json
import sqlite3
from datetime import datetime, timedelta, timezone

from langgraph.checkpoint.sqlite import SqliteSaver
from typer.testing import CliRunner

from agent.assistant import Assistant
from agent.cli import app
from agent.graph import serializer
from store.paths import checkpoints_db_path, traces_db_path
from store.traces import TraceDB

runner = CliRunner()


def _assistant(word_searcher) -> Assistant:
    path = checkpoints_db_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    saver = SqliteSaver(sqlite3.connect(str(path), check_same_thread=False), serde=serializer())
    return Assistant(searcher=word_searcher, k=3, pool=5, traces=TraceDB(traces_db_path()), checkpointer=saver)


def _threads() -> dict[str, int]:
    with sqlite3.connect(str(checkpoints_db_path())) as db:
        if not db.execute("select 1 from sqlite_master where name = 'checkpoints'").fetchone():
            return {}  # never written: LangGraph creates its tables on the first checkpoint
        return dict(db.execute("select thread_id, count(*) from checkpoints group by thread_id").fetchall())


def _age(run_ids: list[str], days: int) -> None:
    """Backdate runs, as if they had been made `days` ago."""
    when = (datetime.now(timezone.utc) - timedelta(days=days)).isoformat(timespec="microseconds")
    with sqlite3.connect(str(traces_db_path())) as db:
        db.executemany("update runs set created = ? where id = ?", [(when, r) for r in run_ids])


def test_one_shot_turns_keep_no_checkpoints_and_threads_do(word_searcher):
    a = _assistant(word_searcher)
    for q in ("left ear", "right nasal cavity", "throat"):
        ans = a.ask(q, kind="batch")
        assert ans.status == "ok" and ans.thread_id is None and ans.rows
    assert _threads() == {}
    a.ask("left ear", thread_id="conv")
    follow = a.ask("only the right side", thread_id="conv")
    assert follow.question == "right ear" and follow.thread_id == "conv"
    assert set(_threads()) == {"conv"}


def test_trace_prune_drops_old_runs_events_and_threads(word_searcher):
    a = _assistant(word_searcher)
    old = [a.ask("left ear", thread_id="old-chat").run_id, a.ask("throat", kind="batch").run_id]
    mixed = [a.ask("right ear", thread_id="mixed").run_id]  # an old turn of a conversation still going on
    _age(old + mixed, days=10)
    with sqlite3.connect(str(traces_db_path())) as db:  # each run's plan, retrieve, judge, reflect, fuse events
        old_events = db.execute(f"select count(*) from events where run_id in ({','.join('?' * 3)})",
                                old + mixed).fetchone()[0]
    assert old_events >= 15  # 5 a run at least; more where the loop searched again
    a.ask("only the left side", thread_id="mixed")
    keep = a.ask("right nasal cavity", thread_id="new").run_id
    a.traces.close()
    assert set(_threads()) == {"old-chat", "mixed", "new"}

    r = runner.invoke(app, ["trace", "prune", "--before", "2000-01-01", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["runs"] == 0 and json.loads(r.stdout)["bytes_freed"] == 0
    r = runner.invoke(app, ["trace", "prune", "--before", "2000-01-01"])
    assert r.exit_code == 0 and "Nothing to remove" in r.stdout and "freed" not in r.stdout

    r = runner.invoke(app, ["trace", "prune", "--before", "7d", "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert (doc["runs"], doc["events"], doc["threads"]) == (3, old_events, 1) and doc["bytes_freed"] > 0
    assert set(_threads()) == {"mixed", "new"}  # 'mixed' has a recent turn: its thread stays
    with TraceDB(traces_db_path()) as db:
        runs = db.list_runs(limit=0)
    assert len(runs) == 2 and keep in {r["id"] for r in runs}

    r = runner.invoke(app, ["trace", "prune", "--before", "yesterday"])
    assert r.exit_code == 2 and "not a date" in r.output
    soon = (datetime.now() + timedelta(minutes=1)).isoformat(timespec="minutes")  # an ISO date-time, local
    r = runner.invoke(app, ["trace", "prune", "--before", soon])
    assert r.exit_code == 1 and "in the future" in r.output and "--yes" in r.output  # issue 22 row 6
    r = runner.invoke(app, ["trace", "prune", "--before", soon, "--dry-run", "--yes", "--json"])
    assert r.exit_code == 0 and json.loads(r.stdout)["runs"] == 2 and json.loads(r.stdout)["dry_run"]
    r = runner.invoke(app, ["trace", "prune", "--before", soon, "--yes"])
    assert r.exit_code == 0 and "Removed 2 runs" in r.stdout and "freed" in r.stdout
    assert _threads() == {}

"""traces.db: the schema, migrations, crash safety, listing, id prefixes and secret scrubbing."""
from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import uuid
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest

from store.db import connect
from store.migrations import MIGRATIONS, migrate
from store.paths import traces_db_path
from store.traces import AmbiguousRunError, TraceDB, UnknownRunError

ROOT = Path(__file__).resolve().parents[1]
KEY = "AIzaSyFAKE-test-key-0123456789abcdef"


def columns(db: sqlite3.Connection, table: str) -> list[tuple[str, str, int, int]]:
    """(name, type, notnull, pk position) per column, in order."""
    return [(r["name"], r["type"].lower(), r["notnull"], r["pk"]) for r in db.execute(f"pragma table_info({table})")]


def new_run(traces: TraceDB, text: str = "left ear drum, bulging", **kw) -> str:
    args = dict(input=text, kind="ask", llm="offline", store="default", bundle="fp123", models={"folds": 5})
    return traces.start_run(**{**args, **kw})


def test_schema_is_exactly_this():
    db = connect(":memory:")
    assert migrate(db) == ["m001_initial", "m002_run_writer"]
    assert columns(db, "runs") == [
        ("id", "text", 0, 1),
        ("created", "text", 1, 0),
        ("thread_id", "text", 0, 0),
        ("kind", "text", 1, 0),
        ("input", "text", 0, 0),
        ("llm", "text", 0, 0),
        ("store", "text", 0, 0),
        ("bundle", "text", 0, 0),
        ("models", "text", 0, 0),
        ("status", "text", 1, 0),
        ("answer", "text", 0, 0),
        ("timings", "text", 0, 0),
        ("error", "text", 0, 0),
        ("finished", "text", 0, 0),
        ("writer_pid", "integer", 0, 0),  # who writes the run: a dead writer's run is 'interrupted'
        ("writer_host", "text", 0, 0),
        ("writer_start", "text", 0, 0),
    ]
    assert columns(db, "events") == [
        ("run_id", "text", 1, 1),
        ("seq", "integer", 1, 2),
        ("node", "text", 0, 0),
        ("kind", "text", 0, 0),
        ("payload", "text", 0, 0),
        ("created", "text", 1, 0),
    ]
    assert columns(db, "_kger_migrations") == [("name", "text", 0, 1), ("applied_at", "text", 1, 0)]
    tables = {r[0] for r in db.execute("select name from sqlite_master where type = 'table'")}
    assert tables == {"runs", "events", "_kger_migrations"}


def test_migrations_are_idempotent_and_recorded(tmp_path):
    path = tmp_path / "t.db"
    with TraceDB(path) as traces:
        run_id = new_run(traces)
    db = connect(path)
    assert migrate(db) == []  # second (and third) run applies nothing and keeps the data
    assert migrate(db) == []
    rows = db.execute("select name, applied_at from _kger_migrations").fetchall()
    assert [r["name"] for r in rows] == [fn.__name__ for fn in MIGRATIONS]
    assert datetime.fromisoformat(rows[0]["applied_at"]).tzinfo is not None
    assert db.execute("select id from runs").fetchone()[0] == run_id
    assert db.execute("pragma journal_mode").fetchone()[0] == "wal"


def test_default_path_is_under_kger_home(kger_home):
    with TraceDB() as traces:
        new_run(traces)
    assert traces_db_path() == kger_home / "traces.db" and (kger_home / "traces.db").is_file()


def test_round_trip_with_events_and_answer():
    with TraceDB(":memory:") as traces:
        run_id = new_run(traces, thread_id="chat-1")
        plan = {"tool_calls": [{"name": "retrieve", "args": {"q": "ear"}}]}
        assert traces.add_event(run_id, "plan", "llm", plan) == 0
        assert traces.add_event(run_id, "retrieve", "tool", {"ids": ["a", "b"], "scores": np.array([0.9, 0.5])}) == 1
        assert traces.add_event(run_id, "judge", "llm", {"score": float("nan"), "why": "no side"}) == 2
        traces.finish_run(run_id, answer={"ranked": ["b", "a"]}, timings={"total_s": 1.5})
        run = traces.get_run(run_id)
    assert run["status"] == "ok" and run["kind"] == "ask" and run["thread_id"] == "chat-1"
    assert run["models"] == {"folds": 5} and run["answer"] == {"ranked": ["b", "a"]}
    assert run["timings"] == {"total_s": 1.5}
    assert run["finished"] >= run["created"]
    assert [(e["seq"], e["node"], e["kind"]) for e in run["events"]] == [
        (0, "plan", "llm"), (1, "retrieve", "tool"), (2, "judge", "llm")
    ]
    assert run["events"][1]["payload"] == {"ids": ["a", "b"], "scores": [0.9, 0.5]}
    assert run["events"][2]["payload"] == {"score": None, "why": "no side"}  # strict JSON: NaN stored as null


def test_bad_input_is_refused():
    with TraceDB(":memory:") as traces:
        with pytest.raises(ValueError, match="kind"):
            new_run(traces, kind="dream")
        run_id = new_run(traces)
        with pytest.raises(ValueError, match="status"):
            traces.finish_run(run_id, answer=None, timings={}, status="running")
        with pytest.raises(UnknownRunError):
            traces.add_event("f" * 32, "plan", "llm", {})
        with pytest.raises(UnknownRunError):
            traces.finish_run("f" * 32, answer=None, timings={})


CRASHER = textwrap.dedent(
    """
    import os, signal, sys
    from store.traces import TraceDB
    traces = TraceDB(sys.argv[1])
    run_id = traces.start_run(input="crash me", kind="batch", llm="offline", store="s", bundle="b", models=None)
    print(run_id, flush=True)
    traces.add_event(run_id, "plan", "llm", {"step": 1})
    traces.add_event(run_id, "retrieve", "tool", {"step": 2})
    os.kill(os.getpid(), signal.SIGKILL)  # no finish_run, no close
    """
)


def test_events_survive_a_crash(tmp_path):
    path = tmp_path / "traces.db"
    out = subprocess.run([sys.executable, "-c", CRASHER, str(path)], cwd=ROOT, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=60)
    assert out.returncode == -signal.SIGKILL, out.stderr[-2000:]
    run_id = out.stdout.split()[0]
    with TraceDB(path) as traces:
        run = traces.get_run(run_id)
    assert run["status"] == "interrupted" and run["finished"]  # its process is gone (issue 22 row 7)
    assert [e["payload"] for e in run["events"]] == [{"step": 1}, {"step": 2}]


def test_concurrent_writers_get_distinct_sequence_numbers(tmp_path):
    """Threads share one TraceDB; a second TraceDB stands for another process on the same file."""
    path = tmp_path / "traces.db"
    first, second = TraceDB(path), TraceDB(path)
    run_id = new_run(first)

    def write(traces: TraceDB, who: str) -> None:
        for i in range(25):
            traces.add_event(run_id, who, "tool", {"i": i})

    threads = [
        threading.Thread(target=write, args=(db, f"{n}-{i}"))
        for n, db in (("a", first), ("b", second))
        for i in range(3)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    events = first.get_run(run_id)["events"]
    assert [e["seq"] for e in events] == list(range(150))
    assert sorted(e["payload"]["i"] for e in events if e["node"] == "b-2") == list(range(25))
    first.close()
    second.close()


def test_list_runs_newest_first_with_filters(tmp_path):
    path = tmp_path / "traces.db"
    with TraceDB(path) as traces:
        ids = [new_run(traces, text) for text in ("Left EAR drum", "nasal polyp", "vocal cords open", "ear wax, right")]
    # give the runs known start times (a day apart), oldest first
    raw = connect(path)
    for day, run_id in enumerate(ids, start=1):
        raw.execute("update runs set created = ? where id = ?", (f"2026-03-0{day}T12:00:00.000000+00:00", run_id))
    with TraceDB(path) as traces:
        assert [r["id"] for r in traces.list_runs()] == ids[::-1][:3]  # default: last 3
        assert [r["id"] for r in traces.list_runs(limit=0)] == ids[::-1]
        assert [r["id"] for r in traces.list_runs(limit=None, text="ear")] == [ids[3], ids[0]]  # case-insensitive
        assert traces.list_runs(text="EAR DRUM")[0]["input"] == "Left EAR drum"
        since = datetime(2026, 3, 2, tzinfo=timezone.utc)
        until = datetime(2026, 3, 3, 23, tzinfo=timezone.utc)
        assert [r["id"] for r in traces.list_runs(limit=0, since=since, until=until)] == [ids[2], ids[1]]
        assert [r["id"] for r in traces.list_runs(limit=0, since=since, text="ear")] == [ids[3]]
        assert traces.list_runs(text="larynx") == []
        listed = traces.list_runs(limit=1)[0]
        assert listed["models"] == {"folds": 5} and listed["event_count"] == 0


def test_get_run_by_unique_prefix(monkeypatch):
    fixed = iter(["abc12300" + "0" * 24, "abc12399" + "0" * 24, "ffe00000" + "1" * 24])
    monkeypatch.setattr("store.traces.uuid.uuid4", lambda: uuid.UUID(next(fixed)))
    with TraceDB(":memory:") as traces:
        a, b, c = new_run(traces, "one"), new_run(traces, "two"), new_run(traces, "three")
        assert traces.get_run("ffe")["id"] == c
        assert traces.get_run("ABC1239")["id"] == b
        assert traces.get_run(a)["input"] == "one"
        with pytest.raises(AmbiguousRunError, match="matches several runs") as err:
            traces.get_run("abc123")
        assert isinstance(err.value, KeyError)
        with pytest.raises(UnknownRunError) as err:
            traces.get_run("0123")
        assert str(err.value).startswith("No run '0123'") and "kger trace list" in str(err.value)
        with pytest.raises(KeyError):
            traces.get_run("%")  # not a LIKE wildcard
        with pytest.raises(KeyError):
            traces.get_run("")


def test_secrets_never_reach_the_disk(tmp_path, monkeypatch):
    monkeypatch.setenv("GOOGLE_API_KEY", KEY)
    path = tmp_path / "traces.db"
    with TraceDB(path) as traces:
        run_id = traces.start_run(
            input=f"describe {KEY}", kind="chat", llm="gemini", store="default", bundle="fp",
            models={"gemini": {"api_key": KEY, "headers": [f"x-goog-api-key: {KEY}"]}, KEY: "as a dict key"},
        )
        traces.add_event(run_id, "judge", "llm", {
            "url": "https://generativelanguage.googleapis.com/v1beta/models/m:generateContent"
                   "?key=AIzaOTHER123456&alt=sse",
            "nested": [{"deep": (f"Bearer {KEY}",)}],
            "short": "abc",
        })
        traces.finish_run(run_id, answer=None, timings={}, status="error", error=f"401 for key {KEY}")
        run = traces.get_run(run_id)
    assert run["input"] == "describe [redacted]"
    assert run["models"] == {
        "gemini": {"api_key": "[redacted]", "headers": ["x-goog-api-key: [redacted]"]},
        "[redacted]": "as a dict key",
    }
    payload = run["events"][0]["payload"]
    assert payload["url"].endswith("generateContent?key=[redacted]&alt=sse")
    assert payload["nested"] == [{"deep": ["Bearer [redacted]"]}] and payload["short"] == "abc"
    assert run["error"] == "401 for key [redacted]"
    for f in tmp_path.iterdir():  # the database and its WAL
        data = f.read_bytes()
        assert KEY.encode() not in data and b"AIzaOTHER123456" not in data


def test_short_or_absent_key_is_not_used_to_blank_text(monkeypatch):
    monkeypatch.setenv("GOOGLE_API_KEY", "ear")  # too short to be a real key: would blank real words
    with TraceDB(":memory:") as traces:
        run_id = new_run(traces, "left ear")
        assert traces.get_run(run_id)["input"] == "left ear"

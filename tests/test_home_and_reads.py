"""An empty KGER_HOME is an error, and reading traces never writes to traces.db (issue 22 row 8)."""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from retrieval.errors import InputError
from store import paths
from store.traces import TraceDB

ROOT = Path(__file__).resolve().parents[1]


def _kger(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", "from agent.cli import main; main()", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120, env={**os.environ, **env})


@pytest.mark.parametrize("value", ["", " "])
def test_empty_home_is_an_error_not_dot_kger(monkeypatch, tmp_path, value):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("KGER_HOME", value)
    with pytest.raises(InputError, match="KGER_HOME is set but empty"):
        paths.kger_home()
    done = _kger("trace", "list", KGER_HOME=value, HOME=str(tmp_path))
    assert done.returncode == 1 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "KGER_HOME" in done.stderr and ("empty" in done.stderr or "blank" in done.stderr)
    assert not (tmp_path / ".kger").exists()


def _state(path: Path) -> tuple[str, int]:
    return hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mtime_ns


def test_trace_list_show_export_leave_traces_db_untouched(kger_home, tmp_path):
    with TraceDB() as db:
        run = db.start_run(input="left ear", kind="ask", llm="offline", store="s", bundle=None, models=None)
        db.finish_run(run, answer={"rows": []}, timings={})
    db_path = paths.traces_db_path()
    before = _state(db_path)
    for args in (["trace", "list"], ["trace", "show", run[:8]], ["trace", "export", run[:8]]):
        done = _kger(*args)
        assert done.returncode == 0, done.stderr
        assert _state(db_path) == before, args
    with TraceDB(reader=True) as db:  # a reader sees the same runs and cannot record one
        assert db.read_only and [r["id"] for r in db.list_runs()] == [run]


def test_a_reader_of_a_database_without_the_schema_migrates_through_the_normal_open(kger_home):
    import sqlite3

    kger_home.mkdir()
    sqlite3.connect(paths.traces_db_path()).close()  # an empty database file: no tables yet
    with TraceDB(reader=True) as db:
        assert not db.read_only and db.list_runs() == []

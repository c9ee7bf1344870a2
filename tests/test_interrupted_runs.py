"""Runs left 'running' by a killed process are 'interrupted' when traces.db next opens; runs of a live
process, another host or an unknown writer are left alone (issue 22 row 7)."""
from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

from store import liveness
from store.paths import traces_db_path
from store.traces import TraceDB

ROOT = Path(__file__).resolve().parents[1]
WRITER = """
import sys, time
from store.traces import TraceDB
db = TraceDB()
print(db.start_run(input=sys.argv[1], kind="ask", llm="offline", store="s", bundle=None, models=None), flush=True)
time.sleep(120)
"""


def _writer(text: str) -> tuple[subprocess.Popen, str]:
    p = subprocess.Popen([sys.executable, "-c", WRITER, text], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    return p, p.stdout.readline().strip()


def _statuses() -> dict[str, str]:
    with sqlite3.connect(traces_db_path()) as db:
        return dict(db.execute("select id, status from runs"))


def test_a_killed_writers_run_is_interrupted_and_a_live_ones_is_not(kger_home):
    killed, dead_run = _writer("killed during /ask")
    alive, live_run = _writer("still answering")
    try:
        killed.send_signal(signal.SIGKILL)
        killed.wait(30)
        with TraceDB(reader=True) as db:  # a reader shows it, changes nothing
            shown = {r["id"]: r["status"] for r in db.list_runs(limit=0)}
        assert shown == {dead_run: "interrupted", live_run: "running"}
        assert _statuses() == {dead_run: "running", live_run: "running"}
        with TraceDB() as db:  # the next writer marks it
            assert db.mark_interrupted() == 0  # already done by the open
            run = db.get_run(dead_run)
        assert run["status"] == "interrupted" and "ended before it finished" in run["error"] and run["finished"]
        assert _statuses() == {dead_run: "interrupted", live_run: "running"}
    finally:
        alive.kill()
        alive.wait(30)
    with TraceDB() as db:
        assert db.get_run(live_run)["status"] == "interrupted"


def test_reused_pid_other_host_and_unknown_writer(kger_home):
    with TraceDB() as db:
        ids = [db.start_run(input=str(i), kind="ask", llm=None, store=None, bundle=None, models=None) for i in range(4)]
    pid = os.getpid()
    with sqlite3.connect(traces_db_path()) as raw:
        raw.execute("update runs set writer_start = 'not-my-start' where id = ?", (ids[0],))  # pid reused since
        raw.execute("update runs set writer_host = 'elsewhere' where id = ?", (ids[1],))
        raw.execute("update runs set writer_pid = null where id = ?", (ids[2],))  # written before m002
    with TraceDB() as db:
        got = [db.get_run(i)["status"] for i in ids]
    assert got == ["interrupted", "running", "running", "running"]
    assert not liveness.is_dead(pid, liveness.host(), liveness.start_ticks(pid))

"""Failures are never silent, and bugs are not user errors (issue 10).

A store that dies mid-run gives an error answer (ask: exit 1, one line; batch: an error line, retried by a
rerun, exit non-zero), never "No image found" with exit 0. Tested with a real `chroma run` killed with SIGKILL
during the 71-query ENTRep batch. An unexpected exception is an internal error with a crash file."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from agent.cli import app
from tests.conftest import ROOT, T2I_JSON, ChromaServer, need_entrep

runner = CliRunner()
KEYS = {"GOOGLE_API_KEY": "AIzaGOOGLEsecretKEY0123456789", "GEMINI_API_KEY": "AIzaGEMINIsecretKEY987654321"}


def kger(*args, home: Path, **kw) -> subprocess.CompletedProcess | subprocess.Popen:
    argv = [sys.executable, "-c", "from agent.cli import main; main()", *map(str, args), "--home", str(home)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    if kw.pop("background", False):
        return subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def latest(path: Path) -> dict[str, dict]:
    out = {}
    for line in path.read_text().splitlines():
        doc = json.loads(line)
        out[doc["query"]] = doc
    return out


def test_a_chroma_server_killed_mid_batch_leaves_error_lines_and_a_rerun_completes(real_store, entrep_train,
                                                                                   tmp_path):
    need_entrep(T2I_JSON)
    _, bundle = real_store
    home = tmp_path / "home"
    server = ChromaServer(tmp_path / "chroma").start()
    try:
        done = kger("index", entrep_train / "imgs", "--bundle", bundle, "--store", "srv", "--chroma-url", server.url,
                    home=home)
        assert done.returncode == 0, done.stderr
        common = ("--store", "srv", "--chroma-url", server.url, "--k", "3", "--pool", "5")
        ref_out = tmp_path / "ref.jsonl"
        done = kger("batch", T2I_JSON, "--out", ref_out, *common, home=home)
        assert done.returncode == 0, done.stderr
        reference = latest(ref_out)
        assert len(reference) == 71 and not any(d["error"] for d in reference.values())

        out, sub = tmp_path / "out.jsonl", tmp_path / "sub.json"
        proc = kger("batch", T2I_JSON, "--out", out, "--submission", sub, "--json", *common, home=home,
                    background=True)
        deadline = time.monotonic() + 300
        while not (out.is_file() and len(out.read_text().splitlines()) >= 5):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.02)
        server.kill()  # SIGKILL, mid-batch
        stdout, stderr = proc.communicate(timeout=600)
        assert proc.returncode == 1, stderr
        summary = json.loads(stdout)
        lines = latest(out)
        answered = {q for q, d in lines.items() if not d["error"]}
        failed = {q for q, d in lines.items() if d["error"]}
        assert len(lines) == 71 and failed and summary["failed"] == len(failed) and summary["done"] == len(answered)
        assert all("Chroma server" in lines[q]["error"] and not lines[q]["rows"] for q in failed)
        # the submission names every query it lacks, on stderr and in --json
        assert set(json.loads(sub.read_text())) == answered
        assert {u["query"] for u in summary["unanswered_in_submission"]} == failed
        assert "not in the submission" in stderr
        for q in answered:  # what was answered before the kill is what an uninterrupted batch answers
            assert [r["id"] for r in lines[q]["rows"]] == [r["id"] for r in reference[q]["rows"]]

        server.start()  # the same data folder and port
        done = kger("batch", T2I_JSON, "--out", out, "--submission", sub, "--json", *common, home=home)
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["done"] == len(failed)
        final = latest(out)
        assert len(final) == 71 and not any(d["error"] for d in final.values())
        assert {q: [r["id"] for r in d["rows"]] for q, d in final.items()} == \
               {q: [r["id"] for r in d["rows"]] for q, d in reference.items()}
        assert len(json.loads(sub.read_text())) == 71
    finally:
        server.stop()


@pytest.fixture
def store_home(real_store, monkeypatch):
    home, _ = real_store
    monkeypatch.setenv("KGER_HOME", str(home))
    return home


def _raise(exc: BaseException):
    def fail(*args, **kwargs):
        raise exc
    return fail


def test_a_store_failure_mid_turn_is_an_error_answer_not_an_empty_one(store_home, monkeypatch):
    from retrieval.search import Searcher
    from store.gallery import StoreError
    from store.traces import TraceDB

    monkeypatch.setattr(Searcher, "by_vector", _raise(StoreError("Lost the Chroma server at http://x (gone)")))
    r = runner.invoke(app, ["ask", "left ear", "--json"])
    assert r.exit_code == 1
    doc = json.loads(r.stdout)
    assert doc["status"] == "error" and "Lost the Chroma server" in doc["error"] and doc["rows"] == []
    assert len(r.stderr.strip().splitlines()) == 1 and "Lost the Chroma server" in r.stderr
    with TraceDB(store_home / "traces.db") as db:
        run = db.get_run(doc["run_id"])
    assert run["status"] == "error" and "Lost the Chroma server" in run["error"]


def test_bad_tool_arguments_stay_a_tool_error(store_home):
    """A planner's invalid filter is the one tool failure the graph absorbs (the trace keeps it): the other call
    answers, and the trace's retrieve event names the bad region. The description pins no region, so the
    hard constraint (agent/constraints.py) has nothing to put in the bad filter's place: the tool gets 'mouth'."""
    from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
    from langchain_core.messages import AIMessage

    from agent.assistant import Assistant
    from agent.judges.offline import OfflineJudge
    from store.traces import TraceDB

    bad = GenericFakeChatModel(messages=iter([AIMessage(content="", tool_calls=[
        {"name": "retrieve", "args": {"query": "throat", "region": "mouth"}, "id": "c1", "type": "tool_call"},
        {"name": "retrieve", "args": {"query": "throat", "region": "throat"}, "id": "c2", "type": "tool_call"}])]))
    base = Assistant.open("default", k=3, persist=False)
    with TraceDB(store_home / "traces.db") as db:
        a = Assistant(searcher=base.searcher, planner=bad, judge=OfflineJudge(), k=3, traces=db)
        ans = a.ask("white patches", a.turn(rounds=0))  # the planner's own round, where its bad filter is
        run = db.get_run(ans.run_id)
    assert ans.status == "ok" and ans.rows[0].label == "throat"
    [retrieve] = [ev["payload"] for ev in run["events"] if (ev["node"], ev["kind"]) == ("retrieve", "candidates")]
    assert len(retrieve["errors"]) == 1 and "region" in retrieve["errors"][0], retrieve["errors"]
    assert "'mouth'" in retrieve["errors"][0], retrieve["errors"]


def test_a_bug_is_an_internal_error_with_a_scrubbed_crash_file(store_home, monkeypatch):
    from retrieval.search import Searcher

    for name, value in KEYS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(Searcher, "by_vector", _raise(RuntimeError(f"boom {KEYS['GEMINI_API_KEY']} "
                                                                   f"{KEYS['GOOGLE_API_KEY']}")))
    r = runner.invoke(app, ["ask", "left ear"])
    assert r.exit_code == 1 and "Internal error" in r.stderr and "RuntimeError" in r.stderr
    assert "Traceback (most recent call last)" not in r.output and not any(v in r.output for v in KEYS.values())
    crashes = sorted((store_home / "crashes").glob("crash-*.txt"))
    assert crashes and str(crashes[-1]) in r.stderr.replace("\n", "")
    text = crashes[-1].read_text()
    assert "Traceback" in text and "RuntimeError: boom" in text
    assert not any(v in text for v in KEYS.values()) and "[redacted]" in text
    # KGER_DEBUG=1: the traceback itself
    monkeypatch.setenv("KGER_DEBUG", "1")
    r = runner.invoke(app, ["ask", "left ear"])
    assert r.exit_code == 1 and isinstance(r.exception, RuntimeError)


def test_a_user_error_is_still_one_line_without_a_crash_file(tmp_path, monkeypatch):
    monkeypatch.setenv("KGER_HOME", str(tmp_path / "h"))
    r = runner.invoke(app, ["trace", "list"])
    assert r.exit_code == 1 and r.stderr.startswith("Error: No trace database")
    assert not (tmp_path / "h" / "crashes").exists()

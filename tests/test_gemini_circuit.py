"""Gemini fails fast and honestly (issue 10, item 4), through the real CLI, the real client and the local REST stub.

An error no retry can fix (401, 403, 404, 400) opens the run's circuit: no further Gemini request from the
planner or the judge, the offline pair stands in, and the answer says why; `--strict` makes that exit 1. The
keys are read from GOOGLE_API_KEY or GEMINI_API_KEY and never written down.
"""
from __future__ import annotations

import json
import logging
import sqlite3
from pathlib import Path

import pytest
from typer.testing import CliRunner

from agent.cli import app
from gemini_stub import GeminiStub, Reply, error_reply, text_reply

runner = CliRunner()
GOOGLE_KEY = "AIzaFAKE-google-key-circuit-0123456789"
GEMINI_KEY = "AIzaFAKE-gemini-key-circuit-9876543210"
QUESTION = "white discharge in the left ear canal"
REASONS = {401: "API key rejected (HTTP 401)", 403: "permission denied (HTTP 403)",
           404: "model or endpoint not found (HTTP 404)", 400: "request rejected (HTTP 400)"}
TEN = ["left ear", "right ear", "left nasal cavity", "right nasal cavity", "throat", "vocal cords open",
       "vocal cords closed", "left tympanic membrane", "right ear canal", "nasal septum"]


def planner_ok(status: int):
    """A script whose planner call succeeds (a real tool call) and whose judge calls all fail with `status`:
    the judge's first call must be the only one."""
    def script(request):
        if request.body.get("tools"):
            return Reply(200, {"candidates": [{"content": {"role": "model", "parts": [
                {"functionCall": {"name": "retrieve", "args": {"query": "left ear canal discharge"}}}]},
                "finishReason": "STOP", "index": 0}], "modelVersion": "stub-model"})
        return error_reply(status, f"scripted {status}, key {GOOGLE_KEY} {GEMINI_KEY}")  # a server that echoes keys
    return script


def always(status: int):
    return [error_reply(status, f"API key not valid: {GOOGLE_KEY} {GEMINI_KEY}")]


@pytest.fixture
def home(real_store, monkeypatch):
    """The labelled real store; Gemini pointed at nothing yet, with fast settings."""
    home, _ = real_store
    monkeypatch.setenv("KGER_HOME", str(home))
    monkeypatch.setenv("GOOGLE_API_KEY", GOOGLE_KEY)
    monkeypatch.delenv("GEMINI_API_KEY", raising=False)
    monkeypatch.delenv("KGER_STRICT", raising=False)
    monkeypatch.setenv("KGER_GEMINI_MODEL", "gemini-circuit-test")
    monkeypatch.setenv("KGER_GEMINI_RPM", "100000")
    monkeypatch.setenv("KGER_GEMINI_MAX_RETRIES", "2")
    monkeypatch.setenv("KGER_GEMINI_TIMEOUT", "10")
    return home


def kger(stub: GeminiStub, monkeypatch, *args: str):
    monkeypatch.setenv("KGER_GEMINI_BASE_URL", stub.base_url)
    return runner.invoke(app, list(args))


def assert_no_key_written(home: Path, *texts: str) -> None:
    """Neither key in any file under KGER_HOME (traces.db, the judge cache, checkpoints, crash files) nor in
    the texts given (stdout, stderr, log records)."""
    for key in (GOOGLE_KEY, GEMINI_KEY):
        for text in texts:
            assert key not in text
        for path in home.rglob("*"):
            if path.is_file():
                assert key.encode() not in path.read_bytes(), path


# -------------------------------------------------------------------------------------------------- ask


@pytest.mark.parametrize("status", [401, 403, 404, 400])
def test_ask_stops_calling_gemini_after_a_fatal_error_and_says_why(home, monkeypatch, caplog, status):
    caplog.set_level(logging.DEBUG)
    with GeminiStub(always(status)) as stub:
        r = kger(stub, monkeypatch, "ask", QUESTION, "--llm", "gemini", "--json")
        sent = len(stub.requests)
        strict = kger(stub, monkeypatch, "ask", QUESTION, "--llm", "gemini", "--strict")
        sent_strict = len(stub.requests) - sent
    assert r.exit_code == 0, r.output
    # a pool of 20 candidates, and 4xx is never retried: one planner request per run, then nothing
    assert (sent, sent_strict) == (1, 1) and all(q.body.get("tools") for q in stub.requests)
    answer = json.loads(r.stdout)
    why = f"Gemini off for this run: {REASONS[status]}"
    assert len(answer["rows"]) == 5 and all(row["judge_kind"] == "offline" for row in answer["rows"])
    assert all(row["fallback"] == why for row in answer["rows"])
    assert answer["fallbacks"] == [f"planner: offline ({why})", f"judge: offline for 20 of 20 images ({why})"]
    assert f"planner: offline ({why})" in r.stderr  # said on the terminal too
    # the trace says why: the plan event and the answer record
    with sqlite3.connect(str(home / "traces.db")) as db:
        events = db.execute("SELECT payload FROM events WHERE run_id = ?", (answer["run_id"],)).fetchall()
    assert any(json.loads(p[0]).get("fallback") == why for p in events)
    # --strict: exit 1, one line saying what fell back and why
    assert strict.exit_code == 1, strict.output
    lines = strict.stderr.strip().splitlines()  # the remote notice, then the error
    line = lines[-1]
    assert sum(x.startswith("Error") for x in lines) == 1
    assert line.startswith("Error: --strict: planner: offline (") and why in line
    assert strict.stdout == ""
    assert_no_key_written(home, r.output, r.stderr, strict.output, strict.stderr,
                          *(rec.getMessage() for rec in caplog.records))


@pytest.mark.parametrize("status", [401, 400])
def test_a_judge_rejected_after_a_good_plan_sends_one_judge_request(home, monkeypatch, status):
    """The planner's call succeeds; the judge's first call fails for good: its three other workers and the
    remaining 19 candidates send nothing."""
    with GeminiStub(planner_ok(status)) as stub:
        r = kger(stub, monkeypatch, "ask", QUESTION, "--llm", "gemini", "--json")
    assert r.exit_code == 0, r.output
    assert [bool(q.body.get("tools")) for q in stub.requests] == [True, False]
    answer = json.loads(r.stdout)
    assert answer["fallbacks"] == [f"judge: offline for 20 of 20 images (Gemini off for this run: {REASONS[status]})"]


# -------------------------------------------------------------------------------------------------- batch


@pytest.mark.parametrize("script, sent", [(always(401), [True]), (planner_ok(403), [True, False])],
                         ids=["bad-key", "judge-forbidden"])
def test_a_ten_query_batch_with_a_bad_key_sends_at_most_two_requests(home, monkeypatch, tmp_path, script, sent):
    """Ten queries, one failing request for the whole batch: the planner's (bad key), or the first judge
    request after one good plan (judge forbidden); `sent` is that sequence, True for a planner request."""
    q, out = tmp_path / "q.txt", tmp_path / "out.jsonl"
    q.write_text("\n".join(TEN) + "\n")
    with GeminiStub(script) as stub:
        r = kger(stub, monkeypatch, "batch", str(q), "--out", str(out), "--llm", "gemini", "--json")
    assert r.exit_code == 0, r.output
    assert [bool(q.body.get("tools")) for q in stub.requests] == sent
    summary = json.loads(r.stdout)
    assert summary["done"] == 10 and summary["judge_fallbacks"]["queries"] == 10
    assert summary["fallbacks"] and all("Gemini off for this run" in f["what"] for f in summary["fallbacks"])


def test_strict_batch_fails_each_fallen_back_query_and_exits_1(home, monkeypatch, tmp_path):
    q, out = tmp_path / "q.txt", tmp_path / "out.jsonl"
    q.write_text("\n".join(TEN[:3]) + "\n")
    monkeypatch.setenv("KGER_STRICT", "1")  # the environment switch, for scripts
    with GeminiStub(always(401)) as stub:
        r = kger(stub, monkeypatch, "batch", str(q), "--out", str(out), "--llm", "gemini", "--json")
    assert r.exit_code == 1, r.output
    assert [bool(q.body.get("tools")) for q in stub.requests] == [True]  # the first planner request, no other
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [d["query"] for d in lines] == TEN[:3]
    assert all(d["error"].startswith("FallbackError: --strict: planner: offline (Gemini off for this run: API key "
                                     "rejected (HTTP 401))") and d["rows"] == [] for d in lines)
    assert json.loads(r.stdout)["failed"] == 3
    assert_no_key_written(home, r.output, r.stderr, out.read_text())


# -------------------------------------------------------------------------------------------------- keys


def test_gemini_api_key_alone_reaches_the_stub(home, monkeypatch):
    monkeypatch.delenv("GOOGLE_API_KEY")
    monkeypatch.setenv("GEMINI_API_KEY", GEMINI_KEY)
    good = json.dumps({"score": 0.8, "justification": "Left ear canal.", "region_seen": "ear"})
    script = planner_ok(200)

    def answer(request):
        return script(request) if request.body.get("tools") else text_reply(good)

    with GeminiStub(answer) as stub:
        r = kger(stub, monkeypatch, "ask", "left ear, dull tympanic membrane", "--llm", "gemini", "--json",
                 "--k", "3", "--strict")
    assert r.exit_code == 0, r.output
    assert stub.requests and {q.headers.get("x-goog-api-key") for q in stub.requests} == {GEMINI_KEY}
    assert json.loads(r.stdout)["fallbacks"] == []
    assert "is not set" not in r.stderr
    assert_no_key_written(home, r.output, r.stderr)


def test_google_api_key_wins_when_both_are_set(monkeypatch):
    from agent.llm import api_key_from_env, gemini_settings_from_env

    assert api_key_from_env({"GOOGLE_API_KEY": GOOGLE_KEY, "GEMINI_API_KEY": GEMINI_KEY}) == GOOGLE_KEY
    assert api_key_from_env({"GOOGLE_API_KEY": " ", "GEMINI_API_KEY": GEMINI_KEY}) == GEMINI_KEY
    assert api_key_from_env({}) is None
    monkeypatch.setenv("GEMINI_API_KEY", GEMINI_KEY)
    assert gemini_settings_from_env().api_key.get_secret_value() == GEMINI_KEY


def test_both_keys_are_scrubbed_from_what_kger_writes(monkeypatch):
    from store.redact import REDACTED, record

    monkeypatch.setenv("GOOGLE_API_KEY", GOOGLE_KEY)
    monkeypatch.setenv("GEMINI_API_KEY", GEMINI_KEY)
    doc = record({"error": f"failed with {GEMINI_KEY}", GOOGLE_KEY: [f"x{GEMINI_KEY}y"]})
    assert json.dumps(doc).count(REDACTED) == 3
    assert GOOGLE_KEY not in json.dumps(doc) and GEMINI_KEY not in json.dumps(doc)


# -------------------------------------------------------------------------------------------------- session


def test_planner_and_judge_share_one_rate_limiter_and_one_circuit():
    from agent.assistant import make_planner_and_judge
    from agent.llm import GeminiSettings

    planner, judge = make_planner_and_judge("gemini", GeminiSettings(api_key=GOOGLE_KEY, requests_per_minute=30))
    limiter = planner.chat.bound.rate_limiter
    assert limiter is not None and limiter is judge._get_chat().rate_limiter
    assert limiter.requests_per_second == pytest.approx(0.5)
    assert planner.session is judge.session and planner.session.circuit is judge.session.circuit
    other, _ = make_planner_and_judge("gemini", GeminiSettings(api_key=GOOGLE_KEY))
    assert other.session.circuit is not planner.session.circuit  # one per run or batch, not per process


def test_transient_errors_do_not_open_the_circuit(monkeypatch, tmp_path):
    """A 429 or 5xx is retried and then falls back for that call only: the next call still goes out."""
    from agent.llm import GeminiCallError, GeminiSession, GeminiSettings
    from langchain_core.messages import HumanMessage

    with GeminiStub([error_reply(503), error_reply(503), text_reply("fine")]) as stub:
        session = GeminiSession(GeminiSettings(api_key=GOOGLE_KEY, base_url=stub.base_url, max_retries=1,
                                               backoff_base=0.01, requests_per_minute=None))
        chat = session.chat()
        with pytest.raises(GeminiCallError, match="server error"):
            session.invoke(chat, [HumanMessage(content="hi")])
        assert not session.circuit.is_open
        assert session.invoke(chat, [HumanMessage(content="hi")]).text == "fine"
    assert len(stub.requests) == 3

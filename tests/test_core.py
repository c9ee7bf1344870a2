"""The core both doors stand on (agent/core): one bound for k and pool, honoured or refused by name at every
door (the typed turn, the CLI, HTTP, MCP); one filter model, soft unless strict; typed trace events that read
old traces too; the deprecated --pool spelling of `bundle init`."""
from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from typer.testing import CliRunner

from agent.assistant import Assistant
from agent.core.events import CandidatesEvent, FuseEvent, PlanEvent, VerdictsEvent, read_events, write
from agent.core.filters import Filters, filtered_search
from agent.core.limits import MAX_K, LimitError, pool_for
from agent.core.turn import TurnRequest
from agent.judges.offline import OfflineJudge
from tests.conftest import CLASSES, WordSearcher

BIG = 1200  # images in the fake store: more than any k asked below


@pytest.fixture
def big_searcher():
    """The word searcher over 1,200 images (files are never opened: the offline judge reads the metadata)."""
    items = [{"id": f"{i:064x}", "path": f"/nowhere/{i}.png", "label": CLASSES[i % len(CLASSES)]} for i in range(BIG)]
    s = WordSearcher(items)
    s.encoder = SimpleNamespace(fingerprint=s.bundle.fingerprint, folds=2, backend="fake")
    return s


@pytest.fixture
def big_assistant(big_searcher):
    return Assistant(searcher=big_searcher, judge=OfflineJudge())


# ------------------------------------------------------------------------------------------- limits, the turn


def test_the_turn_honours_k_up_to_the_limit_and_names_it_beyond(big_assistant):
    answer = big_assistant.ask("left ear", TurnRequest(k=500))
    assert answer.status == "ok" and len(answer.rows) == 500
    assert big_assistant.k == 5  # the session was not changed to ask for 500
    with pytest.raises(LimitError, match=f"from 1 to {MAX_K}"):
        TurnRequest(k=MAX_K + 1)
    with pytest.raises(LimitError, match=f"pool must be an integer from 1 to {MAX_K}"):
        TurnRequest(k=5, pool=MAX_K + 1)


def test_pool_is_at_least_k_written_once():
    assert pool_for(5) == 20 and pool_for(50) == 50 and pool_for(5, 8) == 8 and pool_for(30, 8) == 30
    assert TurnRequest(k=40, pool=10).pool == 40 and TurnRequest(k=3).with_(k=60).pool == 60


def test_cli_ask_and_search_over_the_limit_exit_1_naming_it(kger_home):
    from agent.cli import app

    for args in (["ask", "left ear", "--k", str(MAX_K + 1)], ["search", "left ear", "--k", str(MAX_K + 1)],
                 ["batch", "q.txt", "--out", "o.jsonl", "--pool", str(MAX_K + 1)]):
        r = CliRunner().invoke(app, args)
        assert r.exit_code == 1, (args, r.output)
        assert f"from 1 to {MAX_K}" in r.output and "Traceback" not in r.output


def _service(searcher):
    from agent.serve.service import Service

    return Service(Assistant(searcher=searcher, judge=OfflineJudge()))


def test_http_ask_and_search_honour_500_and_refuse_over_the_limit(big_searcher):
    from fastapi.testclient import TestClient

    from agent.serve.http import create_app

    client = TestClient(create_app(_service(big_searcher), mcp=False), base_url="http://127.0.0.1")  # a loopback Host
    r = client.post("/ask", json={"text": "left ear", "k": 500})
    assert r.status_code == 200 and len(r.json()["rows"]) == 500
    r = client.post("/search", json={"text": "left ear", "k": 500})
    assert r.status_code == 200 and len(r.json()["results"]) == 500
    r = client.post("/ask", json={"text": "left ear", "k": MAX_K + 1})
    assert r.status_code == 422 and str(MAX_K) in r.json()["error"]


def test_mcp_retrieve_and_ask_honour_500_and_refuse_over_the_limit(big_searcher):
    import anyio
    from mcp import Client

    from agent.serve.mcp_tools import build_mcp

    server = build_mcp(_service(big_searcher))

    async def session():
        async with Client(server) as c:
            return (await c.call_tool("retrieve", {"query": "left ear", "k": 500}),
                    await c.call_tool("ask", {"description": "left ear", "k": 500}),
                    await c.call_tool("retrieve", {"query": "left ear", "k": MAX_K + 1}))

    retrieved, asked, over = anyio.run(session)
    assert len(retrieved.structured_content["results"]) == 500
    assert len(asked.structured_content["rows"]) == 500
    assert over.is_error and str(MAX_K) in json.dumps([c.model_dump() for c in over.content])


# ------------------------------------------------------------------------------------------- filters


def test_filters_soft_orders_and_strict_keeps_only_matching(word_searcher):
    def search(n, classes):
        return word_searcher.text("ear", n, classes)

    soft = filtered_search(search, 6, "ear", Filters(region="ear", side="left"))
    assert len(soft) == 6 and [c.rank for c in soft] == list(range(1, 7))
    assert [c.filter_match for c in soft[:2]] == [True, True] and all(c.filter_match is False for c in soft[2:])
    assert {c.label for c in soft[:2]} == {"ear-left"}  # the 2 ear-left images first, the rest after
    strict = filtered_search(search, 6, "ear", Filters(region="ear", side="left", strict=True))
    assert [c.label for c in strict] == ["ear-left", "ear-left"] and all(c.filter_match for c in strict)
    assert Filters().classes() is None and len(filtered_search(search, 6, "ear", Filters())) == 6
    with pytest.raises(ValueError):
        Filters(side="up")


def test_mcp_retrieve_filters_are_soft_unless_strict(word_searcher):
    import anyio
    from mcp import Client

    from agent.serve.mcp_tools import build_mcp

    word_searcher.encoder = SimpleNamespace(fingerprint="w", folds=2)
    server = build_mcp(_service(word_searcher))
    args = {"query": "ear", "k": 5, "region": "ear", "side": "left"}

    async def session():
        async with Client(server) as c:
            return (await c.call_tool("retrieve", args), await c.call_tool("retrieve", {**args, "strict": True}))

    soft, strict = anyio.run(session)
    soft_rows, strict_rows = soft.structured_content["results"], strict.structured_content["results"]
    assert len(soft_rows) == 5 and [r["filter_match"] for r in soft_rows[:2]] == [True, True]
    assert [r["label"] for r in strict_rows] == ["ear-left", "ear-left"]


# ------------------------------------------------------------------------------------------- trace events


def test_trace_events_round_trip_and_old_dicts_still_read(tmp_path, word_searcher):
    from store.traces import TraceDB

    db = TraceDB(tmp_path / "traces.db")
    run_id = db.start_run(input="left ear", kind="ask", llm="offline", store="s", bundle="b", models={})
    events = [PlanEvent(planner="offline", tool_calls=[{"name": "retrieve", "args": {"query": "ear"}}], ms=1.0),
              CandidatesEvent(candidates=[c.model_dump() for c in word_searcher.text("left ear", 3)]),
              VerdictsEvent(judge="offline", question="left ear", verdicts=[{"id": "x", "score": 0.5}]),
              FuseEvent(config={"strategy": "posfuse"}, table=[{"id": "x", "final": 0.5}])]
    for e in events:
        write(db, run_id, e)
    back = read_events(db.get_run(run_id))
    assert [back.plan, back.candidates, back.verdicts, back.fuse] == events
    # a run written by an older kger: fields missing, one it no longer knows, an event kind it never knew
    old = {"events": [{"node": "plan", "kind": "tool_calls", "payload": {"tool_calls": [], "legacy": 1}},
                      {"node": "retrieve", "kind": "candidates", "payload": {"candidates": [{"id": "a"}]}},
                      {"node": "mystery", "kind": "thing", "payload": {"x": 1}}]}
    got = read_events(old)
    assert got.plan.planner is None and got.plan.model_extra == {"legacy": 1}
    assert got.candidates.errors == [] and got.candidates_by_id() == {"a": {"id": "a"}}
    assert got.verdicts is None and got.fuse is None
    db.close()


# ------------------------------------------------------------------------------------------- --pool


def test_bundle_init_pool_is_now_image_pool_the_old_spelling_warns(kger_home, tmp_path):
    from agent.cli import app

    r = CliRunner().invoke(app, ["bundle", "init", "--help"])
    assert "--image-pool" in r.output and "--pool" not in r.output.replace("--image-pool", "")
    r = CliRunner().invoke(app, ["bundle", "init", "--out", str(tmp_path / "b"), "--folds", "1", "--no-export",
                                 "--pool", "avg", "--json"])
    assert r.exit_code == 0, r.output
    assert r.output.count("deprecated: --pool here is now --image-pool") == 1
    manifest = json.loads(r.output[r.output.index("{"):])
    assert manifest["spec"]["pool"] == "avg"

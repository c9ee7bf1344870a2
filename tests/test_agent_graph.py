"""The LangGraph agent end to end on the real images: offline, with scripted planners, and through the real
Gemini client pointed at a local REST stub. Also the traces it writes and what they must never hold."""
from __future__ import annotations

import json
import sqlite3

import pytest
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage

from agent.assistant import Assistant
from agent.judges.offline import OfflineJudge
from agent.plan import OfflinePlanner, plan_description
from tests.gemini_stub import GeminiStub, Reply, error_reply, text_reply

SIDE_OF = {"ear-left": "left", "ear-right": "right", "nose-left": "left", "nose-right": "right"}


@pytest.fixture
def assistant(real_store, monkeypatch):
    home, _ = real_store
    monkeypatch.setenv("KGER_HOME", str(home))
    a = Assistant.open("default", k=5, pool=20)
    yield a


def test_offline_turn_ranks_the_named_class_first_and_explains(assistant):
    ans = assistant.ask("white discharge in the left ear canal")
    rows = ans.rows
    assert len(rows) == 5 and [r.rank for r in rows] == [1, 2, 3, 4, 5]
    assert all(r.label == "ear-left" for r in rows)  # 9 left-ear images exist; the side is a hard constraint
    for r in rows:
        assert 0 <= r.judge <= 1 and 0 <= r.fused <= 1
        assert "ear-left" in r.justification and r.judge_kind == "offline"
        assert "=" in r.formula and len(r.fold_scores) == 2
    fused = [r.fused for r in rows if not r.demoted]
    assert fused == sorted(fused, reverse=True)
    assert set(ans.timings) >= {"plan", "tools", "judge", "fuse", "answer", "total"}


@pytest.mark.parametrize("question", ["left ear", "right nasal cavity", "R TM retracted", "AS", "left-sided nasal polyp"])
def test_a_named_side_never_ranks_the_opposite_side_above_it(assistant, question):
    from retrieval.reading import parse

    side = parse(question).side
    rows = assistant.ask(question).rows
    sides = [SIDE_OF.get(r.label) for r in rows]
    assert sides[0] == side
    first_wrong = next((i for i, s in enumerate(sides) if s and s != side), len(sides))
    assert all(s != side for s in sides[first_wrong:] if s)  # nothing of the asked side below a wrong one


def test_answers_are_deterministic(assistant):
    a = assistant.ask("closed vocal cords, phonation")
    b = assistant.ask("closed vocal cords, phonation")
    assert [(r.id, r.fused) for r in a.rows] == [(r.id, r.fused) for r in b.rows]
    assert a.rows[0].label == "vc-closed"


def test_follow_ups_keep_the_conversation(assistant):
    first = assistant.ask("left ear with wax", thread_id="conv-1")
    assert first.rows[0].label == "ear-left"
    right = assistant.ask("only the right side", thread_id="conv-1")
    assert all(r.label == "ear-right" for r in right.rows)
    assert "right" in right.question and "wax" in right.question
    like = assistant.ask("more like number 2", thread_id="conv-1")
    assert right.rows[1].id not in {r.id for r in like.rows}  # other images, not #2 itself
    assert all(r.label == "ear-right" for r in like.rows)
    # another thread knows nothing of that conversation
    other = assistant.ask("only the right side", thread_id="conv-2")
    assert other.question == "only the right side"


def test_several_findings_become_several_queries():
    calls = plan_description("wax in the left ear canal and a polyp in the right nasal cavity")
    assert [c["name"] for c in calls] == ["retrieve", "retrieve"]
    assert {(c["args"].get("region"), c["args"].get("side")) for c in calls} == {("ear", "left"), ("nose", "right")}


def test_a_scripted_chat_model_drives_the_same_graph(assistant):
    """LangChain's fake chat model carrying real tool_calls stands in for any planner."""
    scripted = GenericFakeChatModel(messages=iter([AIMessage(content="", tool_calls=[
        {"name": "retrieve", "args": {"query": "vocal folds", "region": "larynx", "state": "open"}, "id": "c1",
         "type": "tool_call"}])]))
    a = Assistant(searcher=assistant.searcher, planner=scripted, judge=OfflineJudge(), k=5)
    rows = a.ask("show me the larynx").rows
    assert rows[0].label == "vc-open" and all(r.label in ("vc-open", None) for r in rows[:3])


def test_a_planner_without_tool_calls_falls_back_offline(assistant):
    talker = GenericFakeChatModel(messages=iter([AIMessage(content="I think it is an ear.")]))
    a = Assistant(searcher=assistant.searcher, planner=talker, judge=OfflineJudge(), k=3, traces=assistant.traces)
    ans = a.ask("right ear")
    assert ans.rows[0].label == "ear-right"
    plan_event = next(e for e in assistant.traces.get_run(ans.run_id)["events"] if e["node"] == "plan")
    assert plan_event["payload"]["fallback"] and plan_event["payload"]["planner"] == "offline"


def _gemini_script(request):
    """Planner requests carry tool declarations; judge requests carry an image."""
    if request.body.get("tools"):
        return Reply(200, {"candidates": [{"content": {"role": "model", "parts": [
            {"functionCall": {"name": "retrieve", "args": {"query": "left ear canal discharge", "region": "ear",
                                                           "side": "left"}}}]},
            "finishReason": "STOP", "index": 0}], "modelVersion": "stub-model"})
    if request.inline_data():
        return text_reply(json.dumps({"score": 0.9, "justification": "Left external auditory canal with "
                                      "white discharge.", "region_seen": "ear"}))
    return error_reply(400)


def test_gemini_planner_and_judge_through_the_real_client(assistant, monkeypatch):
    from agent.assistant import make_planner_and_judge
    from agent.llm import GeminiSettings

    key = "AIzaFAKEKEYfortests0123456789"
    with GeminiStub(_gemini_script) as stub:
        settings = GeminiSettings(api_key=key, base_url=stub.base_url, backoff_base=0.01, requests_per_minute=None)
        planner, judge = make_planner_and_judge("gemini", settings)
        judge._cache_arg = False
        a = Assistant(searcher=assistant.searcher, llm="gemini", planner=planner, judge=judge, k=3, pool=4,
                      traces=assistant.traces)
        ans = a.ask("white discharge in the left ear canal")
    planner_requests = [r for r in stub.requests if r.body.get("tools")]
    judge_requests = [r for r in stub.requests if r.inline_data()]
    assert len(planner_requests) == 1 and len(judge_requests) == 4
    assert any("white discharge in the left ear canal" in t for t in planner_requests[0].texts())
    assert all(r.judge_kind == "gemini" and r.judge == pytest.approx(0.9) for r in ans.rows)
    assert all(r.label == "ear-left" for r in ans.rows)
    # the key went only in a header, never into the trace database
    assert all(r.headers.get("x-goog-api-key") == key for r in stub.requests)
    db = sqlite3.connect(str(assistant.traces.path))
    dump = "\n".join(db.iterdump())
    assert key not in dump and "white discharge" in dump


def test_gemini_failures_fall_back_and_say_why(assistant):
    from agent.assistant import make_planner_and_judge
    from agent.llm import GeminiSettings

    with GeminiStub([error_reply(500)]) as stub:
        settings = GeminiSettings(api_key="fake-key-123456", base_url=stub.base_url, backoff_base=0.01,
                                  max_retries=1, requests_per_minute=None)
        planner, judge = make_planner_and_judge("gemini", settings)
        judge._cache_arg = False
        a = Assistant(searcher=assistant.searcher, llm="gemini", planner=planner, judge=judge, k=3, pool=3,
                      traces=assistant.traces)
        ans = a.ask("right nasal cavity")
    assert ans.rows[0].label == "nose-right"  # offline planner and judge took over
    assert all(r.judge_kind == "offline" and "500" in (r.fallback or "") for r in ans.rows)
    run = assistant.traces.get_run(ans.run_id)
    plan_event = next(e for e in run["events"] if e["node"] == "plan")
    assert "500" in plan_event["payload"]["fallback"]


def test_every_node_leaves_a_trace(assistant):
    ans = assistant.ask("left nasal cavity, septal deviation")
    run = assistant.traces.get_run(ans.run_id)
    assert run["status"] == "ok" and run["input"] == "left nasal cavity, septal deviation"
    nodes = [(e["node"], e["kind"]) for e in run["events"]]
    one_round = [("retrieve", "candidates"), ("judge", "verdicts"), ("reflect", "decision")]
    assert nodes == [("plan", "tool_calls")] + one_round * (ans.cost["rounds"] + 1) + [("fuse", "table")]
    cands = [e for e in run["events"] if e["kind"] == "candidates"][-1]["payload"]["candidates"]
    assert all(len(c["fold_scores"]) == 2 for c in cands)
    table = run["events"][-1]["payload"]["table"]
    assert [t["id"] for t in table][:5] == [r.id for r in ans.rows]


def test_offline_planner_is_a_chat_model():
    ai = OfflinePlanner().invoke("<description>\nright ear, AD perforation\n</description>")
    assert ai.tool_calls[0]["name"] == "retrieve"
    assert ai.tool_calls[0]["args"]["side"] == "right" and ai.tool_calls[0]["args"]["region"] == "ear"

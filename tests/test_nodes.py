"""Each graph node alone, on the in-memory fake searcher of conftest.py: no model is loaded, so each test
runs in well under a second. The whole graph on real images is in test_agent_graph.py."""
from __future__ import annotations

from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langgraph.graph import START, StateGraph
from langgraph.runtime import Runtime

from agent.answer import answer
from agent.context import Context
from agent.fuse import fuse
from agent.graph import tool_node
from agent.judge import judge
from agent.judges.base import Verdict
from agent.judges.offline import OfflineJudge
from agent.plan import OfflinePlanner, plan
from agent.state import Answer, AnswerRow, State
from retrieval.candidate import Candidate


def runtime(searcher=None, **kw) -> Runtime:
    ctx = Context(searcher=searcher, planner=kw.pop("planner", OfflinePlanner()), judge=OfflineJudge(),
                  fallback_planner=OfflinePlanner(), run_id="run-1", **kw)
    return Runtime(context=ctx)


def cand(id: str, score: float, label=None, **kw) -> Candidate:
    return Candidate(rank=kw.pop("rank", 1), id=id, path=f"/x/{id}.png", score=score, label=label, **kw)


def run_tools(searcher, calls: list[dict], previous: Answer | None = None, pool: int = 4,
              **ctx) -> list[ToolMessage]:
    """The tools node alone, in a one-node graph (the tools read the run's context as in the real graph)."""
    builder = StateGraph(State, context_schema=Context)
    builder.add_node("tools", tool_node())
    builder.add_edge(START, "tools")
    out = builder.compile().invoke({"messages": [AIMessage(content="", tool_calls=calls)], "answer": previous},
                                   context=runtime(searcher, pool=pool, **ctx).context)
    return [m for m in out["messages"] if isinstance(m, ToolMessage)]


def test_plan_node_emits_tool_calls_with_our_pool_and_the_named_constraints():
    state = State(messages=[HumanMessage(content="wax in the left ear canal")])
    out = plan(state, runtime(pool=7))
    calls = out["messages"][0].tool_calls
    assert [c["name"] for c in calls] == ["retrieve"] and calls[0]["args"]["k"] == 7
    assert out["constraints"] == {"region": "ear", "side": "left"}
    assert out["question"] == "wax in the left ear canal"
    assert (out["planner"], out["plan_fallback"]) == ("offline", None)


def test_plan_node_puts_the_fallback_reason_into_the_state():
    talker = GenericFakeChatModel(messages=iter([AIMessage(content="It is an ear.")]))
    out = plan(State(messages=[HumanMessage(content="right ear")]), runtime(planner=talker))
    assert out["planner"] == "offline" and "without a tool call" in out["plan_fallback"]
    assert out["messages"][0].tool_calls[0]["args"]["side"] == "right"


def test_plan_node_reads_the_previous_answer_for_a_follow_up():
    prev = Answer(question="left ear with wax", constraints={"region": "ear", "side": "left"},
                  rows=[AnswerRow(rank=1, id="a", path="/a.png", retrieval=0.5, fused=0.3, formula="f")])
    out = plan(State(messages=[HumanMessage(content="more like number 1")], answer=prev), runtime())
    assert out["messages"][0].tool_calls[0]["name"] == "similar"
    assert out["question"] == "left ear with wax" and out["constraints"] == {"region": "ear", "side": "left"}


def test_retrieve_tool_returns_candidates_filter_matches_first(word_searcher):
    [msg] = run_tools(word_searcher, [{"name": "retrieve", "id": "c1", "type": "tool_call",
                                       "args": {"query": "left ear", "region": "ear", "side": "left", "k": 4}}])
    cands = msg.artifact
    assert all(isinstance(c, Candidate) for c in cands) and [c.rank for c in cands] == [1, 2, 3, 4]
    assert [c.filter_match for c in cands] == [True, True, False, False]  # 2 left-ear images, then the rest
    assert {c.label for c in cands[:2]} == {"ear-left"} and all(c.query == "left ear" for c in cands)
    assert cands[0].id[:12] in msg.content  # the chat model reads a short summary


def test_similar_tool_leaves_out_the_reference_image(word_searcher):
    ref = word_searcher.items[2]  # ear-right-0
    prev = Answer(rows=[AnswerRow(rank=1, id=ref["id"], path=ref["path"], retrieval=0.5, fused=0.3, formula="f")])
    [msg] = run_tools(word_searcher, [{"name": "similar", "id": "c1", "type": "tool_call",
                                       "args": {"image": "#1", "k": 3}}], previous=prev)
    assert ref["id"] not in {c.id for c in msg.artifact} and len(msg.artifact) == 3
    assert msg.artifact[0].label == "ear-right" and msg.artifact[0].query == "like #1"
    [err] = run_tools(word_searcher, [{"name": "similar", "id": "c2", "type": "tool_call",
                                       "args": {"image": "#4"}}], previous=prev)
    assert err.status == "error" and "no image #4" in err.content


def test_a_served_turns_similar_never_opens_a_path_the_planner_names(word_searcher, monkeypatch):
    """Issue 22 row 2 inside /ask: a planner fed a remote caller's text may name a server file; with
    local_files off (serve's turns) `similar` takes ids and #N only, and the file system is never asked."""
    import pathlib

    path = word_searcher.items[2]["path"]
    call = [{"name": "similar", "id": "c1", "type": "tool_call", "args": {"image": path, "k": 3}}]
    [local] = run_tools(word_searcher, call)  # the CLI's own turn may read its files
    assert local.status != "error" and len(local.artifact) == 3
    looked = []
    real_is_file = pathlib.Path.is_file
    monkeypatch.setattr(pathlib.Path, "is_file", lambda self: looked.append(str(self)) or real_is_file(self))
    [served] = run_tools(word_searcher, call, local_files=False)
    assert served.status == "error" and "not in the store" in served.content
    assert path not in looked


def test_judge_node_merges_tool_results_and_scores_each_candidate():
    call = AIMessage(content="", tool_calls=[{"name": "retrieve", "args": {"query": "q"}, "id": "c1"}])
    first = [cand("a", 0.5, "ear-left", filter_match=True), cand("b", 0.9, "ear-right", filter_match=False)]
    second = [cand("a", 0.7, "ear-left", filter_match=True), cand("c", 0.6, "ear-left", filter_match=True)]
    state = State(question="left ear", messages=[
        HumanMessage(content="left ear"), call,
        ToolMessage(content="[]", tool_call_id="c1", artifact=first),
        ToolMessage(content="[]", tool_call_id="c2", artifact=second),
        ToolMessage(content="Error: boom", tool_call_id="c3", status="error")])
    out = judge(state, runtime(pool=10))
    assert [(c.id, c.rank, c.score) for c in out["candidates"]] == [("a", 1, 0.7), ("c", 2, 0.6), ("b", 3, 0.9)]
    assert out["tool_errors"] == ["Error: boom"]
    assert [v.id for v in out["verdicts"]] == ["a", "c", "b"] and all(v.judge == "offline" for v in out["verdicts"])
    assert out["verdicts"][2].score < out["verdicts"][0].score  # the wrong side scores lower


def test_fuse_node_ranks_contradicting_images_last_and_types_the_answer():
    cands = [cand("wrong", 0.9, "ear-right", rank=1), cand("ok", 0.8, "ear-left", rank=2),
             cand("unknown", 0.7, rank=3)]
    verdicts = [Verdict(id=c.id, score=s, justification=f"j-{c.id}", judge="offline", model="m")
                for c, s in zip(cands, (0.9, 0.8, 0.5))]
    state = State(question="left ear", constraints={"region": "ear", "side": "left"}, candidates=cands,
                  verdicts=verdicts)
    out = fuse(state, runtime(k=2))
    assert [r.id for r in out["ranking"]] == ["ok", "unknown", "wrong"]
    assert out["ranking"][2].demoted == "labelled ear-right, the description asks for left ear"
    ans = out["answer"]
    assert isinstance(ans, Answer) and (ans.question, ans.run_id, ans.constraints["side"]) == ("left ear", "run-1", "left")
    assert [(r.rank, r.id, r.retrieval_rank) for r in ans.rows] == [(1, "ok", 2), (2, "unknown", 3)]
    top = ans.rows[0]
    assert (top.name, top.retrieval, top.judge, top.justification) == ("ok.png", 0.8, 0.8, "j-ok")
    assert top.fused == out["ranking"][0].final and "=" in top.formula


def test_answer_node_says_the_top_image_or_that_there_is_none():
    row = AnswerRow(rank=1, id="a", path="/x/a.png", name="a.png", label="throat", retrieval=0.5, fused=0.3,
                    formula="f", justification="Looks like a throat.")
    text = answer(State(answer=Answer(rows=[row])), runtime())["messages"][0].content
    assert text == "1 images. #1 a.png (throat): Looks like a throat."
    assert "No image found" in answer(State(), runtime())["messages"][0].content

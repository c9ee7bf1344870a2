"""A side, region or state named in the description is a hard constraint whatever the planner does (issue 10).

Planners that leave the filters out, or pass the opposite side, drive the graph on the labelled real store: a
LangChain fake chat model carrying real tool calls, and the real Gemini client against the local REST stub.
Every same-side image must rank above every opposite-side image, and the trace must show the conflict."""
from __future__ import annotations

import html
import re

import pytest
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage

from agent.assistant import Assistant
from agent.constraints import enforce, filters_of, resolve
from agent.judges.offline import OfflineJudge
from agent.state import Answer
from store.traces import TraceDB
from tests.gemini_stub import GeminiStub, Reply, error_reply

SIDE_OF = {"ear-left": "left", "ear-right": "right", "nose-left": "left", "nose-right": "right"}
OTHER = {"left": "right", "right": "left"}
DESCRIPTIONS = [
    "white discharge in the left external auditory canal",
    "right tympanic membrane, central perforation",
    "left nasal cavity, septal deviation",
    "polyp in the right nasal cavity",
    "wax in the right ear canal",
    "left middle turbinate hypertrophy",
]


@pytest.fixture(scope="module")
def searcher(real_store):
    from retrieval.search import Searcher
    from store.gallery import Gallery

    home, _ = real_store
    mp = pytest.MonkeyPatch()
    mp.setenv("KGER_HOME", str(home))
    yield Searcher.for_gallery(Gallery.open("default"))
    mp.undo()


def _filters(description: str, mode: str) -> dict:
    """What a careless planner puts in its call: no filters ('omit'), or the opposite side ('opposite')."""
    if mode == "omit":
        return {}
    f = filters_of(description)
    return {"region": f["region"], "side": OTHER[f["side"]]}


def _check(ans: Answer, run: dict, description: str, mode: str) -> None:
    side = filters_of(description)["side"]
    sides = [SIDE_OF.get(r.label) for r in ans.rows]
    assert ans.constraints["side"] == side and sides[0] == side, (description, mode, sides)
    same = [i for i, s in enumerate(sides) if s == side]
    other = [i for i, s in enumerate(sides) if s == OTHER[side]]
    assert same and (not other or max(same) < min(other)), (description, mode, sides)
    plan = next(e for e in run["events"] if e["node"] == "plan")["payload"]
    assert all(c["args"].get("side") == side for c in plan["tool_calls"])  # the description's side was sent
    conflict = next(c for c in plan["conflicts"] if c["filter"] == "side")
    assert conflict["description"] == side
    assert conflict["planner"] == (None if mode == "omit" else OTHER[side])
    assert conflict["kind"] == ("dropped" if mode == "omit" else "contradicted")


@pytest.mark.parametrize("mode", ["omit", "opposite"])
def test_a_scripted_chat_model_cannot_drop_or_flip_the_side(searcher, tmp_path, mode):
    script = [AIMessage(content="", tool_calls=[{"name": "retrieve", "id": f"c{i}", "type": "tool_call",
                                                 "args": {"query": d, **_filters(d, mode)}}])
              for i, d in enumerate(DESCRIPTIONS)]
    traces = TraceDB(tmp_path / "traces.db")
    a = Assistant(searcher=searcher, planner=GenericFakeChatModel(messages=iter(script)), judge=OfflineJudge(),
                  k=10, pool=20, traces=traces)
    for d in DESCRIPTIONS:
        ans = a.ask(d)
        _check(ans, traces.get_run(ans.run_id), d, mode)


_DESC = re.compile(r"<description>\s*(.*?)\s*</description>", re.S)


def _gemini_planner(mode: str):
    def script(request):
        if not request.body.get("tools"):
            return error_reply(400)  # only the planner is Gemini here
        description = html.unescape(_DESC.findall("\n".join(request.texts()))[-1])
        return Reply(200, {"candidates": [{"content": {"role": "model", "parts": [
            {"functionCall": {"name": "retrieve", "args": {"query": description, **_filters(description, mode)}}}]},
            "finishReason": "STOP", "index": 0}], "modelVersion": "stub-model"})
    return script


@pytest.mark.parametrize("mode", ["omit", "opposite"])
def test_the_real_gemini_client_cannot_drop_or_flip_the_side(searcher, tmp_path, mode):
    from agent.assistant import make_planner_and_judge
    from agent.llm import GeminiSettings

    traces = TraceDB(tmp_path / "traces.db")
    with GeminiStub(_gemini_planner(mode)) as stub:
        settings = GeminiSettings(api_key="AIzaFAKEKEYfortests0123456789", base_url=stub.base_url,
                                  backoff_base=0.01, requests_per_minute=None)
        planner, _ = make_planner_and_judge("gemini", settings)
        a = Assistant(searcher=searcher, llm="gemini", planner=planner, judge=OfflineJudge(), k=10, pool=20,
                      traces=traces)
        for d in DESCRIPTIONS:
            ans = a.ask(d)
            run = traces.get_run(ans.run_id)
            assert next(e for e in run["events"] if e["node"] == "plan")["payload"]["planner"] == "gemini"
            _check(ans, run, d, mode)
    assert len([r for r in stub.requests if r.body.get("tools")]) == len(DESCRIPTIONS)


def test_a_planner_may_add_a_filter_but_not_replace_one():
    calls = [{"name": "retrieve", "id": "c1", "args": {"query": "q", "region": "ear", "side": "right", "k": 5}},
             {"name": "retrieve", "id": "c2", "args": {"query": "q", "state": "open"}}]
    fixed, conflicts = enforce(calls, {"side": "left"})
    assert [c["args"] for c in fixed] == [{"query": "q", "region": "ear", "side": "left", "k": 5},
                                          {"query": "q", "state": "open", "side": "left"}]
    assert [(c["call"], c["planner"], c["kind"]) for c in conflicts] == [("c1", "right", "contradicted"),
                                                                         ("c2", None, "dropped")]
    assert enforce(calls[:1], {"region": "ear", "side": "right"})[1] == []  # agreement is no conflict


def test_follow_ups_are_resolved_from_the_conversation_not_the_planner():
    prev = Answer(question="left ear with wax", constraints={"region": "ear", "side": "left"})
    assert resolve("only the right side", prev)[:2] == ("right ear with wax", {"region": "ear", "side": "right"})
    assert resolve("more like #2", prev) == ("left ear with wax", {"region": "ear", "side": "left"}, True)
    assert resolve("left ear with wax", None)[1] == {"region": "ear", "side": "left"}
    assert filters_of("left ear wax and throat redness") == {}  # the throat has no side: no global side
    assert filters_of("closed vocal cords, phonation") == {"region": "larynx", "state": "closed"}

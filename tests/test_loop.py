"""The corrective loop (agent/reflect.py, agent/replan.py) on the in-memory fake searcher of conftest.py: the
bounded rounds, enforce in every round, the trace of each round, asking back in a thread, the weak-evidence
line. A judge is scripted only where the test is about what the loop does with its scores."""
from __future__ import annotations

from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage

from agent.assistant import Assistant
from agent.core.audit import run_view
from agent.core.events import read_events
from agent.judges.base import Verdict
from agent.judges.offline import OfflineJudge
from agent.plan import OfflinePlanner


class LowJudge:
    """Scores every image 0.1, and remembers each id it was asked about."""

    name = "low"

    def __init__(self):
        self.seen: list[str] = []

    def judge(self, query, candidates, on_progress=None):
        self.seen += [c.id for c in candidates]
        return [Verdict(id=c.id, score=0.1, justification="low", judge="offline", model="low") for c in candidates]


def _assistant(searcher, judge=None, planner=None, **kw):
    kw = {"k": 3, "pool": 4, **kw}
    return Assistant(searcher=searcher, planner=planner or OfflinePlanner(), judge=judge or OfflineJudge(), **kw)


def test_a_judge_scoring_everything_low_makes_exactly_the_bounded_rounds_then_answers(word_searcher):
    judge = LowJudge()
    a = _assistant(word_searcher, judge, k=2, pool=2)
    for rounds in (0, 1, 2):
        judge.seen.clear()
        ans = a.ask("wax in the ear", a.turn(rounds=rounds))
        decisions = [r["decision"] for r in ans.rounds]
        assert decisions == ["search_again"] * rounds + ["answer"]
        assert ans.rounds[-1]["reason"] == ("no rounds left" if rounds else "the loop is off (--rounds 0)")
        assert any(t.startswith("best judged score 0.10") for t in ans.rounds[-1]["triggers"])
        assert ans.cost["rounds"] == rounds and len(ans.rows) == 2
        assert len(judge.seen) == len(set(judge.seen))  # each image judged once per turn
        assert ans.cost["judge_calls"] == len(judge.seen)
        assert ans.cost["tool_calls"] <= 12
    # the later rounds found and judged more ear images, none above the best so far: none entered the fusion
    assert len(judge.seen) == 4 and {r.label for r in ans.rows} <= {"ear-left", "ear-right"}
    assert [r.id for r in ans.rows] == [r.id for r in a.ask("wax in the ear", a.turn(rounds=0)).rows]
    assert sum(len(r["dropped"]) for r in ans.rounds) == 2 and not any(r["kept"] for r in ans.rounds)


class LaterBetterJudge:
    """Scores the images of its first call 0.3, then, in later calls, one image 0.9 and the rest 0.2."""

    name = "later"

    def __init__(self):
        self.calls = 0

    def judge(self, query, candidates, on_progress=None):
        self.calls += 1
        scores = [0.3] * len(candidates) if self.calls == 1 else [0.9] + [0.2] * (len(candidates) - 1)
        return [Verdict(id=c.id, score=s, justification="", judge="offline", model="later")
                for c, s in zip(candidates, scores)]


def test_a_round_keeps_only_what_the_judge_scored_above_the_turns_best(word_searcher):
    """A later round's images enter the fusion only above the best so far: the better one is first, the weaker
    ones stay out (judged, in the round record), so round 1's images keep their one-pass order among them."""
    a = _assistant(word_searcher, LaterBetterJudge(), k=2, pool=2)
    one = a.ask("wax in the ear", a.turn(rounds=0))
    a.judge.calls = 0
    ans = a.ask("wax in the ear", a.turn(rounds=1))
    [first, last] = ans.rounds
    assert first["decision"] == "search_again" and len(last["kept"]) == 1 and last["dropped"]
    assert ans.rows[0].id == last["kept"][0] and ans.rows[0].judge == 0.9
    assert ans.rows[0].retrieval_rank == 3  # the union's order: round 1's two, then the kept one
    assert ans.rows[1].id == one.rows[0].id
    assert not set(last["dropped"]) & {r.id for r in ans.rows}


def test_strong_evidence_answers_at_once(word_searcher):
    a = _assistant(word_searcher)
    ans = a.ask("left ear", a.turn(k=2))  # the fake store holds 2 left ears
    assert [r["decision"] for r in ans.rounds] == ["answer"] and ans.cost["rounds"] == 0
    assert ans.rows[0].label == "ear-left" and ans.notice is None


def test_a_model_planner_asking_for_the_wrong_side_in_round_2_is_corrected_by_enforce(word_searcher):
    planner = GenericFakeChatModel(messages=iter([
        AIMessage(content="", tool_calls=[{"name": "retrieve", "args": {"query": "left ear wax", "side": "left"},
                                           "id": "c1", "type": "tool_call"}]),
        AIMessage(content="", tool_calls=[{"name": "retrieve", "args": {"query": "ear wax", "region": "ear",
                                                                        "side": "right"},
                                           "id": "c2", "type": "tool_call"}]),
    ]))
    a = _assistant(word_searcher, LowJudge(), planner)
    ans = a.ask("wax in the left ear", a.turn(rounds=1))
    first = ans.rounds[0]
    assert first["decision"] == "search_again"
    [call] = first["calls"]
    assert call["args"]["query"] == "ear wax" and call["args"]["side"] == "left"  # the description's side
    assert [(c["filter"], c["kind"], c["planner"], c["description"]) for c in first["conflicts"]] == [
        ("side", "contradicted", "right", "left")]
    assert all(r.label == "ear-left" for r in ans.rows[:2])


def test_the_trace_of_a_two_round_turn_shows_both_rounds(word_searcher, tmp_path):
    from rich.console import Console

    from store.traces import TraceDB

    traces = TraceDB(tmp_path / "traces.db")
    a = _assistant(word_searcher, LowJudge(), traces=traces, k=2, pool=2)
    ans = a.ask("wax in the ear", a.turn(rounds=1))
    run = traces.get_run(ans.run_id)
    ev = read_events(run)
    assert [(r.round, r.decision) for r in ev.rounds] == [(0, "search_again"), (1, "answer")]
    assert ev.rounds[0].calls and ev.rounds[0].signals["best_judge"] == 0.1
    assert len(ev.candidates.candidates) == len(ev.verdicts.verdicts) > 2  # the union, judged
    console = Console(width=200, record=True)
    console.print(run_view(run))
    text = console.export_text()
    assert "Reflect, round 1: search_again" in text and "Reflect, round 2: answer" in text
    from agent.core.report import render_run

    html = render_run(run)
    assert "Reflect, round 1" in html and "Reflect, round 2" in html


def test_ask_back_in_a_thread_and_the_next_message_resolves_it(word_searcher):
    a = _assistant(word_searcher)
    one_shot = a.ask("redness and swelling")
    assert one_shot.clarify and "which do you mean" in one_shot.clarify and not one_shot.asked_back
    asked = a.ask("redness and swelling", a.turn(thread="t1"))
    assert asked.asked_back and asked.rows and asked.rounds[-1]["decision"] == "ask_back"
    assert "or" in asked.clarify
    resolved = a.ask("the nose", a.turn(thread="t1"))
    assert resolved.constraints.get("region") == "nose" and "redness and swelling" in resolved.question
    assert not resolved.asked_back and resolved.rows[0].label.startswith("nose")


def test_both_sides_for_one_finding_asks_which_and_the_answer_resolves_it(word_searcher):
    a = _assistant(word_searcher, k=2)
    one_shot = a.ask("wax in the left or right ear")  # one-shot: never blocks, says what is open
    assert one_shot.clarify and "both sides" in one_shot.clarify and not one_shot.asked_back and one_shot.rows
    asked = a.ask("wax in the left or right ear", a.turn(thread="t2"))
    assert asked.asked_back and asked.rounds[-1]["decision"] == "ask_back"
    assert asked.rounds[-1]["reason"] == "both sides named for one finding" and asked.rows  # best guesses below
    resolved = a.ask("the right", a.turn(thread="t2"))
    assert resolved.constraints.get("side") == "right" and resolved.question == "wax in the right ear"
    assert not resolved.asked_back and [r.label for r in resolved.rows] == ["ear-right", "ear-right"]
    for meant in ("bilateral ear wax", "wax in both ears, left and right"):  # both meant: nothing to ask
        assert not a.ask(meant, a.turn(thread=f"t-{meant}")).asked_back


def test_weak_evidence_is_said_in_one_line(word_searcher):
    from agent.evidence import Usual, usual_best

    measured = usual_best(word_searcher)  # the store's own calibration: its class captions' best cosines
    assert measured.n == 57 and measured.low <= measured.median
    # the word-overlap fake scores captions near 0 too, so give it the spread of a trained store
    word_searcher._kger_usual_best = Usual(n=57, low=0.5, median=0.6, iqr=0.1)
    a = _assistant(word_searcher)
    ans = a.ask("zzz qqq", a.turn(rounds=0))
    assert ans.notice and ans.notice.startswith("Weak evidence") and "\n" not in ans.notice
    assert any("usual low" in t for t in ans.rounds[-1]["triggers"])


def test_the_listwise_judge_sends_one_request_and_one_malformed_item_falls_back_alone(word_searcher):
    import json

    from agent.judges.listwise import make_listwise
    from agent.llm import GeminiSession, GeminiSettings
    from retrieval.candidate import Candidate
    from tests.gemini_stub import GeminiStub, text_reply

    items = word_searcher.items[:3]
    cands = [Candidate(rank=i, id=it["id"], path=it["path"], score=0.5, label=it["label"])
             for i, it in enumerate(items, start=1)]
    answer = {"verdicts": [{"image": 1, "score": 0.9, "justification": "Left ear canal.", "region_seen": "ear"},
                           {"image": 2, "score": "high", "justification": "", "region_seen": "ear"},
                           {"image": 3, "score": 0.2, "justification": "Right ear.", "region_seen": "ear"}]}
    with GeminiStub([text_reply(json.dumps(answer))]) as stub:
        session = GeminiSession(GeminiSettings(api_key="fake-key-123456", base_url=stub.base_url,
                                               backoff_base=0.01, requests_per_minute=None))
        judge = make_listwise(session, cache=False)
        verdicts = judge.judge("left ear", cands)
    assert len(stub.requests) == 1 and len(stub.requests[0].inline_data()) == 3
    assert [t for t in stub.requests[0].texts() if t.startswith("Image ")] == ["Image 1", "Image 2", "Image 3"]
    assert [v.id for v in verdicts] == [c.id for c in cands]
    assert (verdicts[0].judge, verdicts[0].score, verdicts[2].judge, verdicts[2].score) == ("gemini", 0.9,
                                                                                           "gemini", 0.2)
    assert verdicts[1].judge == "offline" and "image 2" in verdicts[1].fallback
    requests, tokens = session.usage.snapshot()
    assert requests == 1 and tokens >= 3 * 258

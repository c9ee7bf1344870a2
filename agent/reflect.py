"""The reflect node: after each judge round, answer, search again, or ask back, on measured signals.

The graph is plan -> tools -> judge -> reflect, then reflect -> tools (search again) or reflect -> fuse.
Reflect reads the turn's evidence (`signals`): the best judged score, the top-1/top-2 margin when the two
disagree on class, how many candidates are known to satisfy the description's constraints against k, how
many of the top 3 Gemini saw in another region than the one described, how many of the top 3 are unfamiliar
to the bundle, and the best retrieval cosine against this store's usual (agent/evidence.py). A trigger is a
signal past its threshold; with triggers, rounds left (Context.rounds) and tool calls left
(Context.max_tool_calls), it searches again with the calls agent/replan.py makes; otherwise it answers.

Thresholds (chosen on data: split 0 of bench/agent_loop.py at pool 5, rounds 0, offline judge, 76 questions;
splits 1 and 2 are the test): a wrong top-1 came with a best judged score below 0.70 in 26 of 30 cases, a right
one at or above 0.70 in 37 of 46: LOW_BEST = 0.70 separates them best. "May satisfy" counts images whose
known class meets the constraints, or, unknown, whose predicted class does; the trigger is fewer than
min(k, SATISFY_MIN) of them: compared with k itself it fired on 74 of 76 turns, since that blind store holds
4 images per class and no round can find a fifth. A margin under MARGIN = 0.05 between
a top-1 and top-2 of different classes is a coin toss. The region and familiarity triggers need 2 of the top 3,
so one odd image does not start a round.

What a corrective round keeps (`keep_improving`): of the images it found, those the judge scored above the
turn's best so far, or, while too few candidates may satisfy the description, those that may. The rest were
judged (the trace shows their verdicts) but do not enter the union, so a round that found nothing better leaves
the one-pass answer exactly as it was. Why: Pos-Fuse is not blind to what else is in its lists (position
probabilities and min-max scores are relative), so fusing weaker newcomers could swap two round-1 images; on
split 1 of bench/agent_loop.py that moved a right nose image from 2nd to 3rd for "normal" (MRR 0.986 -> 0.982).

Asking back (`ask_back`): in a thread (chat, ask --thread, serve threads), when the description names no region
and another region's best judged image is within MARGIN of the best one (a tie the judge cannot break: the
retrieval order alone would pick the region), the answer is a question with
the options and the best guesses; the same when one finding is given both sides ("wax in the left or right
ear": an image shows one side). The next message resolves it (agent/constraints.resolve). A one-shot turn
never blocks: it answers and carries the same `clarify` note.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal, Optional

from langchain_core.messages import AIMessage
from langgraph.runtime import Runtime

from agent.constraints import names_both_sides
from agent.context import Context
from agent.evidence import usual_best, weak_notice
from agent.replan import next_calls, ranked
from agent.state import State
from retrieval.lexicon import class_site, classes_for
from retrieval.reading import parse

LOW_BEST = 0.70  # best judged score below this: the round found nothing convincing
SATISFY_MIN = 3  # fewer candidates than min(k, this) that may satisfy the constraints: search again
MARGIN = 0.05  # top-1 and top-2 of different classes closer than this: undecided
TOP = 3  # how many of the best-judged candidates the region and familiarity signals look at
REGION_WORDS = {"ear": "ear", "nose": "nose", "throat": "throat", "larynx": "larynx"}


@dataclass
class Signals:
    best_judge: Optional[float]
    margin: Optional[float]
    top_classes: list[Optional[str]]
    satisfying: int
    k: int
    constrained: bool
    region_disagree: int
    unfamiliar_top: int
    best_retrieval: Optional[float]
    weak_below: Optional[float]
    regions_top: dict[str, float] = field(default_factory=dict)  # region -> its best judged score

    def record(self) -> dict:
        r = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in self.__dict__.items()}
        return r


@dataclass
class Decision:
    decision: Literal["answer", "search_again", "ask_back"]
    triggers: list[str]
    signals: Signals
    reason: str
    calls: list[dict] = field(default_factory=list)
    clarify: Optional[str] = None
    notice: Optional[str] = None

    def record(self, round_no: int, conflicts: list[dict]) -> dict:
        return {"round": round_no, "decision": self.decision, "triggers": self.triggers, "reason": self.reason,
                "signals": self.signals.record(), "clarify": self.clarify, "notice": self.notice,
                "calls": [{"name": c["name"], "args": c["args"]} for c in self.calls], "conflicts": conflicts}


def _class(c) -> Optional[str]:
    return c.known_class() or c.predicted


def may_satisfy(c, allowed: tuple) -> bool:
    """Known to meet the constraints, or of unknown class with a predicted class that does."""
    return bool(c.filter_match) or (c.filter_match is None and c.known_class() is None and c.predicted in allowed)


def allowed_classes(cons: dict) -> tuple:
    """The classes the description's constraints allow; () when it pins nothing."""
    return classes_for(cons.get("region"), cons.get("side"), cons.get("state")) if cons else ()


def signals(state: State, ctx: Context) -> Signals:
    allowed = allowed_classes(state.constraints)
    pairs = ranked(state)
    top = pairs[:TOP]
    described = state.constraints.get("region")
    disagree = sum(1 for _, v in top if v.judge == "gemini" and described and v.region_seen
                   and v.region_seen != "unclear" and v.region_seen != described)
    regions: dict[str, float] = {}  # region -> its best judged score over the turn's candidates
    for c, v in pairs:
        site = class_site(_class(c)) if _class(c) else None
        if site and site not in regions:
            regions[site] = v.score
    usual = usual_best(ctx.searcher)
    best_retrieval = max((c.score for c in state.candidates), default=None)
    margin = None
    if len(pairs) >= 2 and _class(pairs[0][0]) != _class(pairs[1][0]):
        margin = pairs[0][1].score - pairs[1][1].score
    return Signals(
        best_judge=pairs[0][1].score if pairs else None, margin=margin,
        top_classes=[_class(c) for c, _ in top],
        satisfying=sum(1 for c in state.candidates if may_satisfy(c, allowed)), k=ctx.k,
        constrained=bool(state.constraints),
        region_disagree=disagree, unfamiliar_top=sum(1 for c, _ in top if c.familiar is False),
        best_retrieval=best_retrieval, weak_below=usual.weak_below if usual else None,
        regions_top={r: round(x, 4) for r, x in regions.items()})


def triggers(s: Signals) -> list[str]:
    """The signals past their thresholds (the module docstring says how each was chosen)."""
    out = []
    if s.best_judge is None:
        out.append("no candidates")
    elif s.best_judge < LOW_BEST:
        out.append(f"best judged score {s.best_judge:.2f} < {LOW_BEST}")
    if s.margin is not None and s.margin < MARGIN:
        out.append(f"top-1/top-2 of different classes within {MARGIN} ({s.margin:.2f})")
    if s.constrained and s.satisfying < min(s.k, SATISFY_MIN):
        out.append(f"{s.satisfying} candidates may satisfy the description, k = {s.k}")
    if s.region_disagree >= 2:
        out.append(f"the judge saw another region on {s.region_disagree} of the top {TOP}")
    if s.unfamiliar_top >= 2:
        out.append(f"{s.unfamiliar_top} of the top {TOP} are unfamiliar images")
    if s.best_retrieval is not None and s.weak_below is not None and s.best_retrieval < s.weak_below:
        out.append(f"best retrieval {s.best_retrieval:.2f} < this store's usual low {s.weak_below:.2f}")
    return out


def region_split(state: State, s: Signals) -> Optional[tuple[str, str]]:
    """(clarify note, reason) when the description names no region and the top images split across regions."""
    if state.constraints.get("region") or parse(state.question).site:
        return None
    ordered = sorted(s.regions_top.items(), key=lambda rx: -rx[1])
    close = [r for r, x in ordered if x >= ordered[0][1] - MARGIN] if ordered else []
    if len(close) < 2:
        return None
    options = " or ".join(close)
    return (f"The description names no region and the best images split across {options}: which do you mean?",
            "no region named and the evidence splits across regions")


def side_split(state: State) -> Optional[tuple[str, str]]:
    """(clarify note, reason) when one finding is given both sides ("wax in the left or right ear")."""
    if not names_both_sides(state.question):
        return None
    return ("The description names both sides for one finding: the left, the right, or both? "
            "The best images of either side are below.", "both sides named for one finding")


def decide(state: State, ctx: Context) -> Decision:
    s = signals(state, ctx)
    found = triggers(s)
    split = (region_split(state, s) or side_split(state)) if state.round == 0 else None
    clarify = split[0] if split else None
    notice = weak_notice(s.best_retrieval, usual_best(ctx.searcher))
    if state.tool_errors and not state.candidates:  # the planner's searches were refused: say why, not guess
        return Decision("answer", found, s, "every search was refused", notice=None)
    if split and ctx.threaded:
        return Decision("ask_back", found, s, split[1], clarify=clarify, notice=notice)
    if not found:
        return Decision("answer", found, s, "the evidence is strong enough", clarify=clarify, notice=notice)
    if state.round >= ctx.rounds:
        why = "no rounds left" if ctx.rounds else "the loop is off (--rounds 0)"
        return Decision("answer", found, s, why, clarify=clarify, notice=notice)
    budget = ctx.max_tool_calls - state.tool_calls
    calls = next_calls(state, ctx, s, budget) if budget > 0 else []
    if not calls:
        why = "the tool-call cap is reached" if budget <= 0 else "no new search to make"
        return Decision("answer", found, s, why, clarify=clarify, notice=notice)
    return Decision("search_again", found, s, f"round {state.round + 1} of {ctx.rounds}", calls=calls,
                    clarify=clarify, notice=notice)


def keep_improving(state: State, ctx: Context) -> tuple[list, list[str], list[str]]:
    """(the turn's candidates, ids kept, ids not kept) after a corrective round: its new images enter only
    when the judge scored them above the turn's best so far, or when they may satisfy the description while
    too few candidates do (the module docstring says why). Ranks are renumbered in the union's order."""
    before = int(state.rounds[-1].get("candidates", len(state.candidates))) if state.round else len(state.candidates)
    old, new = state.candidates[:before], state.candidates[before:]
    if not new:
        return list(state.candidates), [], []
    score = {v.id: v.score for v in state.verdicts}
    best = max((score[c.id] for c in old if c.id in score), default=float("-inf"))
    allowed = allowed_classes(state.constraints)
    short = bool(state.constraints) and sum(may_satisfy(c, allowed) for c in old) < min(ctx.k, SATISFY_MIN)
    kept = [c for c in new if score.get(c.id, float("-inf")) > best or (short and may_satisfy(c, allowed))]
    ids = {c.id for c in kept}
    merged = [c.model_copy(update={"rank": i}) for i, c in enumerate(old + kept, start=1)]
    return merged, [c.id for c in kept], [c.id for c in new if c.id not in ids]


def reflect(state: State, runtime: Runtime[Context]) -> dict:
    from agent.constraints import enforce

    ctx = runtime.context
    candidates, kept, dropped = keep_improving(state, ctx)
    if dropped:
        state = replace(state, candidates=candidates)
    d = decide(state, ctx)
    calls, conflicts = enforce(d.calls, state.constraints)  # the description stays authoritative every round
    d.calls = calls
    record = {**d.record(state.round, conflicts), "candidates": len(candidates), "kept": kept, "dropped": dropped}
    out: dict = {"rounds": list(state.rounds) + [record]}
    if dropped:
        out["candidates"] = candidates
    if conflicts:
        out["constraint_conflicts"] = list(state.constraint_conflicts) + conflicts
    if d.decision == "search_again":
        out.update(messages=[AIMessage(content="", tool_calls=calls)], round=state.round + 1,
                   tool_calls=state.tool_calls + len(calls))
    return out


def route(state: State) -> Literal["tools", "fuse"]:
    """reflect -> tools when its last decision was to search again, else -> fuse."""
    last = state.rounds[-1] if state.rounds else None
    return "tools" if last and last["decision"] == "search_again" else "fuse"

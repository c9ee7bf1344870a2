"""The judge node: merge a round's tool results into the turn's candidates and score each new candidate once.

The turn's candidates are the union over its rounds (agent/reflect.py makes the later rounds): round 1's
merged list, then each later round's images not already found (or judged), in that round's merged order. Only
those new images are judged, so a round costs judge calls for what it adds, never for what the turn has already
seen; agent/reflect.py then keeps those that improve the evidence."""
from __future__ import annotations

import inspect

from langchain_core.messages import AIMessage, AnyMessage, ToolMessage
from langgraph.runtime import Runtime

from agent.context import Context
from agent.state import State
from agent.core.filters import filter_tier
from retrieval.candidate import Candidate


def turn_results(messages: list[AnyMessage]) -> tuple[list[list[Candidate]], list[str]]:
    """Candidate lists and tool errors from the tool messages after this turn's planner message."""
    lists, errors = [], []
    for m in reversed(messages):
        if isinstance(m, AIMessage) and m.tool_calls:
            break
        if isinstance(m, ToolMessage):
            if m.status == "error" or not isinstance(m.artifact, list):
                errors.append(str(m.content))
            else:
                lists.append(m.artifact)
    return lists[::-1], errors[::-1]


def merge(lists: list[list[Candidate]], limit: int) -> list[Candidate]:
    """Union over the planner's queries: best score per image; filter matches first, then images of
    uncertain class, then those whose known class contradicts a filter (agent.core.filters.filter_order)."""
    best: dict[str, Candidate] = {}
    for cands in lists:
        for c in cands:
            if c.id not in best or c.score > best[c.id].score:
                best[c.id] = c
    ordered = sorted(best.values(), key=lambda c: (filter_tier(c), -c.score, c.id))[:limit]
    return [c.model_copy(update={"rank": i}) for i, c in enumerate(ordered, start=1)]


def _judge_with_progress(judge, question: str, candidates: list, write, context: list = ()) -> list:
    """Score the candidates; "judged i/n" goes to `Context.progress` (a CLI shows it, serve streams it) as
    the judge reports each verdict (the `Judge` contract's `on_progress`)."""
    n = len(candidates)

    def progress(done: int) -> None:
        if write is not None:
            write({"stage": "judge", "judged": done, "total": n})

    progress(0)
    if context and "context" in inspect.signature(judge.judge).parameters:  # the offline judge's fold agreement
        verdicts = judge.judge(question, candidates, on_progress=progress, context=context)
    else:
        verdicts = judge.judge(question, candidates, on_progress=progress)
    progress(n)  # also when nothing needed judging afresh (every verdict cached)
    return verdicts


def round_limit(messages: list[AnyMessage], pool: int) -> int:
    """How many merged candidates a round keeps: the pool, or more when the round asked for a larger one."""
    for m in reversed(messages):
        if isinstance(m, AIMessage) and m.tool_calls:
            return max([pool] + [int(c["args"].get("k") or 0) for c in m.tool_calls])
    return pool


def union(old: list[Candidate], new: list[Candidate]) -> list[Candidate]:
    """The turn's candidates after a round: `old` in its order, then the images of `new` that `old` lacks,
    in `new`'s order; ranks renumbered 1.. (the union's retrieval order, agent/posfuse.py)."""
    seen = {c.id for c in old}
    merged = list(old) + [c for c in new if c.id not in seen]
    return [c.model_copy(update={"rank": i}) for i, c in enumerate(merged, start=1)]


def references(state: State) -> set[str]:
    """Ids of the images this turn's `similar` calls started from ('#N' of the previous answer, or an id). A
    "more like #2" answer never shows #2 itself: the tool leaves its reference out, and a corrective round's
    text searches must not bring it back."""
    rows = state.answer.rows if state.answer else []
    refs: set[str] = set()
    for m in state.messages:
        for c in (m.tool_calls if isinstance(m, AIMessage) else []) or []:
            ref = str(c.get("args", {}).get("image") or "").strip() if c.get("name") == "similar" else ""
            if ref.startswith("#") and ref[1:].isdigit() and 1 <= int(ref[1:]) <= len(rows):
                refs.add(rows[int(ref[1:]) - 1].id)
            elif ref:
                refs.add(ref)
    return refs


def judge(state: State, runtime: Runtime[Context]) -> dict:
    ctx = runtime.context
    lists, errors = turn_results(state.messages)
    limit = round_limit(state.messages, ctx.pool)
    if state.round:  # a corrective round adds up to `limit` new images that meet, or may meet, its filters
        known = {c.id for c in state.candidates} | {v.id for v in state.verdicts} | references(state)
        found = [c for c in merge(lists, 10**6) if c.id not in known and c.filter_match is not False][:limit]
    else:
        found = merge(lists, limit)
    candidates = union(state.candidates, found)
    judged = {v.id for v in state.verdicts}
    new = [c for c in candidates if c.id not in judged]
    fresh = _judge_with_progress(ctx.judge, state.question, new, ctx.progress, candidates) if new else []
    return {"candidates": candidates, "verdicts": list(state.verdicts) + fresh,
            "tool_errors": list(state.tool_errors) + errors if state.round else errors}

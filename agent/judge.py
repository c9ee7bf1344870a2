"""The judge node: merge this turn's tool results into one candidate list and score every candidate."""
from __future__ import annotations

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


def _judge_with_progress(judge, question: str, candidates: list, write) -> list:
    """Score the candidates; "judged i/n" goes to `Context.progress` (a CLI shows it, serve streams it) as
    the judge reports each verdict (the `Judge` contract's `on_progress`)."""
    n = len(candidates)

    def progress(done: int) -> None:
        if write is not None:
            write({"stage": "judge", "judged": done, "total": n})

    progress(0)
    verdicts = judge.judge(question, candidates, on_progress=progress)
    progress(n)  # also when nothing needed judging afresh (every verdict cached)
    return verdicts


def judge(state: State, runtime: Runtime[Context]) -> dict:
    ctx = runtime.context
    lists, errors = turn_results(state.messages)
    candidates = merge(lists, ctx.pool)
    verdicts = _judge_with_progress(ctx.judge, state.question, candidates, ctx.progress) if candidates else []
    return {"candidates": candidates, "verdicts": verdicts, "tool_errors": errors}

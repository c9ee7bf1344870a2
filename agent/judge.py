"""The judge node: merge this turn's tool results into one candidate list and score every candidate."""
from __future__ import annotations

import inspect
import time

from langchain_core.messages import AIMessage, ToolMessage
from langgraph.config import get_stream_writer
from langgraph.runtime import Runtime

from agent.context import Context
from agent.judges.base import Candidate
from agent.state import State

CONFIDENT = 0.5  # a predicted class counts as known from this probability on


def turn_results(messages) -> tuple[list[list[dict]], list[str]]:
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


def merge(lists: list[list[dict]], limit: int) -> list[dict]:
    """Union over the planner's queries: best score per image; filter matches stay ahead of the rest."""
    best: dict[str, dict] = {}
    for cands in lists:
        for c in cands:
            if c["id"] not in best or c["score"] > best[c["id"]]["score"]:
                best[c["id"]] = dict(c)
    ordered = sorted(best.values(), key=lambda c: (c.get("filter_match") is False, -c["score"], c["id"]))[:limit]
    for i, c in enumerate(ordered, start=1):
        c["rank"] = i
    return ordered


def _judge_with_progress(judge, question: str, candidates: list) -> list:
    """Score the candidates; "judged i/n" goes out on the graph's custom stream (a CLI shows it, serve streams
    it). Judges that report each verdict take `on_progress`; the others report at the start and the end."""
    write = get_stream_writer()
    n = len(candidates)

    def progress(done: int) -> None:
        write({"stage": "judge", "judged": done, "total": n})

    progress(0)
    if "on_progress" in inspect.signature(judge.judge).parameters:
        verdicts = judge.judge(question, candidates, on_progress=progress)
    else:
        verdicts = judge.judge(question, candidates)
    progress(n)
    return verdicts


def judge(state: State, runtime: Runtime[Context]) -> dict:
    ctx = runtime.context
    lists, errors = turn_results(state.messages)
    cands = merge(lists, ctx.pool)
    t0 = time.perf_counter()
    candidates = [Candidate(**{k: c.get(k) for k in Candidate.model_fields if k in c}) for c in cands]
    verdicts = _judge_with_progress(ctx.judge, state.question, candidates) if candidates else []
    if ctx.traces and ctx.run_id:
        ctx.traces.add_event(ctx.run_id, "retrieve", "candidates", {"candidates": cands, "errors": errors})
        ctx.traces.add_event(ctx.run_id, "judge", "verdicts", {
            "judge": getattr(ctx.judge, "name", type(ctx.judge).__name__), "question": state.question,
            "verdicts": [v.model_dump() for v in verdicts], "ms": round((time.perf_counter() - t0) * 1000, 2)})
    return {"candidates": cands, "verdicts": [v.model_dump() for v in verdicts]}

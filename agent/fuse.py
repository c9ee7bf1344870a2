"""The fuse node: the answer's order by `posfuse.rank`, with what the description pins down as a hard rule."""
from __future__ import annotations

from typing import Optional

from langgraph.runtime import Runtime

from agent.context import Context
from agent.posfuse import rank
from agent.state import Answer, AnswerRow, State
from retrieval.candidate import Candidate
from retrieval.lexicon import classes_for


def contradiction(c: Candidate, constraints: dict[str, str]) -> Optional[str]:
    """Why an image's known class contradicts what the description pins down, if it does."""
    if not constraints:
        return None
    cls = c.known_class()  # the label, or a trusted prediction: an uncertain image is never demoted
    allowed = classes_for(constraints.get("region"), constraints.get("side"), constraints.get("state"))
    if cls is None or cls in allowed:
        return None
    wanted = " ".join(str(v) for v in (constraints.get("side"), constraints.get("region"), constraints.get("state")) if v)
    return f"{'labelled' if c.label else 'trusted prediction'} {cls}, the description asks for {wanted}"


def fuse(state: State, runtime: Runtime[Context]) -> dict:
    ctx = runtime.context
    by_id = {c.id: c for c in state.candidates}
    verdicts = {v.id: v for v in state.verdicts}
    # verdicts of images a corrective round judged but did not keep (agent/reflect.py) stay out of the fusion
    ranking = rank([(c.id, c.score) for c in state.candidates], [(v.id, v.score) for v in state.verdicts
                                                                 if v.id in by_id],
                   {c.id: contradiction(c, state.constraints) for c in state.candidates}, ctx.fuse)
    rows = [AnswerRow.of(n, by_id[r.id], verdicts.get(r.id), r) for n, r in enumerate(ranking[: ctx.k], start=1)]
    last = state.rounds[-1] if state.rounds else {}
    return {"ranking": ranking, "answer": Answer(
        question=state.question, rows=rows, constraints=state.constraints, run_id=ctx.run_id, llm=ctx.llm,
        corrections=state.corrections, rounds=list(state.rounds),
        clarify=next((r["clarify"] for r in state.rounds if r.get("clarify")), None),
        asked_back=last.get("decision") == "ask_back", notice=last.get("notice"))}

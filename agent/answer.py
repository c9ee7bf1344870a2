"""The fuse node (Pos-Fuse over retrieval and judge rankings) and the answer node (the ranked reply)."""
from __future__ import annotations

import time
from dataclasses import asdict

from langchain_core.messages import AIMessage
from langgraph.runtime import Runtime

from agent.context import Context
from agent.fuse import fuse as pos_fuse
from agent.judge import CONFIDENT
from agent.state import State
from retrieval.lexicon import classes_for


def known_class(c: dict) -> str | None:
    if c.get("label"):
        return c["label"]
    if c.get("predicted") and (c.get("predicted_prob") or 0) >= CONFIDENT:
        return c["predicted"]
    return None


def contradiction(c: dict, constraints: dict) -> str | None:
    """Why an image's known class contradicts what the description pins down, if it does."""
    if not constraints:
        return None
    cls = known_class(c)
    allowed = classes_for(constraints.get("region"), constraints.get("side"), constraints.get("state"))
    if cls is None or cls in allowed:
        return None
    wanted = " ".join(str(v) for v in (constraints.get("side"), constraints.get("region"), constraints.get("state")) if v)
    return f"{'labelled' if c.get('label') else 'predicted'} {cls}, the description asks for {wanted}"


def fuse(state: State, runtime: Runtime[Context]) -> dict:
    ctx = runtime.context
    t0 = time.perf_counter()
    by_id = {c["id"]: c for c in state.candidates}
    verdicts = {v["id"]: v for v in state.verdicts}
    fused = pos_fuse([(c["id"], c["score"]) for c in state.candidates],
                     [(v["id"], v["score"]) for v in state.verdicts], ctx.fuse)
    # A side / region / state the description names is a hard constraint: contradicting images go last.
    table = []
    for row in fused:
        c = by_id[row.id]
        table.append(asdict(row) | {"demoted": contradiction(c, state.constraints)})
    table.sort(key=lambda r: r["demoted"] is not None)  # stable: Pos-Fuse order within each group
    rows = []
    for rank, r in enumerate(table[: ctx.k], start=1):
        c, v = by_id[r["id"]], verdicts.get(r["id"], {})
        rows.append({
            "rank": rank, "id": r["id"], "path": c["path"], "name": c.get("name"), "label": c.get("label"),
            "predicted": c.get("predicted"), "predicted_prob": c.get("predicted_prob"),
            "retrieval_rank": r["retrieval_rank"], "retrieval": c["score"], "fold_scores": c.get("fold_scores", []),
            "judge": v.get("score"), "judge_kind": v.get("judge"), "fallback": v.get("fallback"),
            "cached": v.get("cached", False), "justification": v.get("justification", ""),
            "fused": r["final"], "formula": r["formula"], "demoted": r["demoted"],
        })
    if ctx.traces and ctx.run_id:
        ctx.traces.add_event(ctx.run_id, "fuse", "table", {
            "config": asdict(ctx.fuse), "constraints": state.constraints, "table": table,
            "ms": round((time.perf_counter() - t0) * 1000, 2)})
    return {"answer": {"question": state.question, "rows": rows, "constraints": state.constraints,
                       "run_id": ctx.run_id, "llm": ctx.llm}}


def answer(state: State, runtime: Runtime[Context]) -> dict:
    rows = (state.answer or {}).get("rows", [])
    if rows:
        top = rows[0]
        text = f"{len(rows)} images. #1 {top['name']} ({top.get('label') or top.get('predicted') or 'unlabelled'}): " \
               f"{top['justification']}"
    else:
        text = "No image found. Index a gallery first (kger index IMAGES --bundle DIR)."
    return {"messages": [AIMessage(content=text)]}

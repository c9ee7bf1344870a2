"""The audit views of stored runs: one run as a readable record, and why an image sits at its rank.

Everything shown comes from the trace record (store/traces.py) through the typed events of
agent/core/events.py: the planner's tool calls, every candidate with its per-fold scores, each judge answer as
the model returned it, the Pos-Fuse arithmetic. Nothing is recomputed by a model, so an audit is reproducible
and works offline. Core, not a door: `kger trace show` and the chat's /trace and "why is 1 first?" use it.
"""
from __future__ import annotations

import json
from datetime import datetime
from typing import Any, Optional

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from agent.core.render import BLOCK_CHARS, clean, literal
from agent.core.events import read_events
from agent.core.report import call_text, class_text, fmt_num, kept_text


# ------------------------------------------------------------------------------------------- reading


def open_traces(reader: bool = True):
    """The trace database; a missing one is a user error (never created by a read-only command). A `reader`
    never writes to it (issue 22: `trace list` changed traces.db)."""
    from store.paths import traces_db_path
    from store.traces import TraceDB

    path = traces_db_path()
    if not path.is_file():
        raise FileNotFoundError(f"No trace database at {path}: run `kger ask TEXT` or `kger chat` first")
    return TraceDB(path, reader=reader)


def load_run(run_id: str) -> dict:
    """By id or unique prefix; an unknown one raises UnknownRunError, a KeyError: one line, exit 1."""
    with open_traces() as db:
        return db.get_run(run_id)


def fold_ranks(cands: list[dict], image_id: str) -> list[tuple[int, int]]:
    """(rank of the image by that fold's score among the candidates, number scored) per fold."""
    target = next((c for c in cands if c["id"] == image_id), None)
    if not target:
        return []
    out = []
    for f, score in enumerate(target.get("fold_scores") or []):
        scored = [c["fold_scores"][f] for c in cands if len(c.get("fold_scores") or []) > f]
        out.append((1 + sum(s > score for s in scored), len(scored)))
    return out


def _short(image_id: Optional[str], by_id: dict[str, dict]) -> str:
    c = by_id.get(image_id or "", {})
    return c.get("name") or (image_id or "?")[:12]


def local_time(ts: Optional[str]) -> str:
    if not ts:
        return "-"
    try:
        return datetime.fromisoformat(ts).astimezone().strftime("%Y-%m-%d %H:%M:%S")
    except ValueError:
        return ts


# ------------------------------------------------------------------------------------------- views


def _h(text: str, level: int = 2) -> Text:
    return literal(f"\n{'#' * level} {text}", style="bold cyan" if level == 2 else "bold")


def _kv(**items: Any) -> Text:
    t = Text()
    for i, (k, v) in enumerate(items.items()):
        if v in (None, ""):
            continue
        t.append(f"{k}: ", style="dim")
        t.append(f"{clean(v)}  ")
    return t


def _candidates_table(cands: list[dict], limit: Optional[int] = None) -> Table:
    t = Table(show_lines=False, title_justify="left")
    for col, just in (("#", "right"), ("image", "left"), ("class", "left"), ("cosine", "right"),
                      ("per fold", "left"), ("filter", "left"), ("query", "left")):
        t.add_column(col, justify=just, overflow="fold")
    for c in cands[:limit]:
        folds = " ".join(f"{s:.3f}" for s in c.get("fold_scores") or []) or "-"
        match = {True: "match", False: "outside", None: ""}[c.get("filter_match")]
        t.add_row(str(c.get("rank")), literal(c.get("name") or c["id"][:12]), literal(class_text(c)),
                  fmt_num(c.get("score")), folds, match, literal(c.get("query") or ""))
    return t


def _verdict_status(v: dict) -> str:
    if v.get("fallback"):
        return f"fallback: {v['fallback']}"
    return "cached" if v.get("cached") else "fresh"


def _verdict_blocks(verdicts: list[dict], by_id: dict[str, dict]) -> list[RenderableType]:
    """One short block per judge answer: who judged, the parsed score, why, and the raw text as returned."""
    out: list[RenderableType] = []
    for i, v in enumerate(verdicts, start=1):
        judge = v.get("judge") or "?"
        if v.get("model") and v["model"] != judge:
            judge += f" ({v['model']})"
        head = literal(f"### {i}. {_short(v.get('id'), by_id)}", style="bold")
        head.append(clean(f"  score {fmt_num(v.get('score'), '.2f')}  {judge}  {_verdict_status(v)}"), style="")
        out.append(head)
        out.append(Text("justification: ", style="dim") + literal(v.get("justification") or "", limit=BLOCK_CHARS))
        raw = v.get("raw")
        out.append(Text("raw answer: ", style="dim") + literal(raw if raw is not None else "(none)", limit=BLOCK_CHARS))
    return out


def _fuse_table(table: list[dict], by_id: dict[str, dict]) -> Table:
    t = Table(show_lines=False)
    for col, just in (("#", "right"), ("image", "left"), ("ret", "right"), ("judge", "right"),
                      ("score", "right"), ("final", "right"), ("formula", "left")):
        t.add_column(col, justify=just, overflow="fold")
    for i, r in enumerate(table, start=1):
        formula = r.get("formula") or ""
        if r.get("demoted"):
            formula += f"  [ranked last: {r['demoted']}]"
        t.add_row(str(i), literal(_short(r.get("id"), by_id)), fmt_num(r.get("retrieval_rank"), "d"),
                  fmt_num(r.get("judge_rank"), "d"), fmt_num(r.get("judge_score"), ".2f"),
                  fmt_num(r.get("final"), ".4f"), literal(formula))
    return t


def _timings(timings: Optional[dict]) -> Text:
    if not timings:
        return Text("-")
    return Text("  ".join(f"{k} {v:.0f} ms" if isinstance(v, (int, float)) else f"{k} {v}"
                          for k, v in timings.items()))


def run_view(run: dict, short: bool = False) -> RenderableType:
    """The Markdown-ish audit view of one run; `short` keeps the top rows of each step (the chat's /trace)."""
    ev = read_events(run)
    by_id = ev.candidates_by_id()
    parts: list[RenderableType] = [
        literal(f"# Run {run['id']}", style="bold"),
        _kv(kind=run.get("kind"), status=run.get("status"), created=local_time(run.get("created")), llm=run.get("llm"),
            store=run.get("store"), bundle=run.get("bundle"), thread=run.get("thread_id")),
        _h("Input"), literal(run.get("input") or "", limit=BLOCK_CHARS),
    ]
    if run.get("error"):
        parts += [_h("Error"), literal(run["error"], style="red", limit=BLOCK_CHARS)]
    plan = ev.plan
    if plan is not None:
        parts += [_h("Plan"), _kv(planner=plan.planner, fallback=plan.fallback or "none",
                                   ms=plan.ms)]
        parts += [literal(f"- {call_text(c)}") for c in plan.tool_calls]
        parts += [literal(f"! {c['tool']} {c['kind']} {c['filter']}: the planner gave {c['planner']!r}, the description "
                          f"says {c['description']!r} (used)", style="yellow") for c in plan.conflicts]
    ret = ev.candidates
    if ret is not None:
        cands = ret.candidates
        parts += [_h(f"Retrieve: {len(cands)} candidates"), _candidates_table(cands, 5 if short else None)]
        parts += [literal(f"tool error: {e}", style="red") for e in ret.errors]
    jud = ev.verdicts
    if jud is not None:
        verdicts = jud.verdicts
        n_fb = sum(1 for v in verdicts if v.get("fallback"))
        n_cached = sum(1 for v in verdicts if v.get("cached"))
        parts += [_h(f"Judge: {jud.judge}"),
                  _kv(question=jud.question, verdicts=len(verdicts), cached=n_cached, fallbacks=n_fb,
                      ms=jud.ms)]
        if not short:
            parts += _verdict_blocks(verdicts, by_id)
    for rf in ev.rounds:  # the corrective loop (agent/reflect.py): one decision per round
        parts += [_h(f"Reflect, round {rf.round + 1}: {rf.decision}"),
                  _kv(reason=rf.reason, triggers="; ".join(rf.triggers) or "none", ms=rf.ms)]
        if rf.kept or rf.dropped:
            parts.append(literal(kept_text(rf)))
        parts += [literal(f"- {call_text(c)}") for c in rf.calls]
        parts += [literal(f"! {c['tool']} {c['kind']} {c['filter']}: the planner gave {c['planner']!r}, the "
                          f"description says {c['description']!r} (used)", style="yellow") for c in rf.conflicts]
        parts += [literal(x, style="yellow") for x in (rf.clarify, rf.notice) if x]
    fuse = ev.fuse
    if fuse is not None:
        cfg = fuse.config
        parts += [_h(f"Pos-Fuse ({cfg.get('strategy', '?')})"),
                  _kv(decay=cfg.get("decay"), w_retrieval=cfg.get("w_retrieval"), w_judge=cfg.get("w_judge"),
                      judge_pos_weight=cfg.get("judge_pos_weight"),
                      constraints=json.dumps(fuse.constraints)),
                  _fuse_table(fuse.table[: 5 if short else None], by_id)]
    answer = run.get("answer") or {}
    if answer.get("rows") and not short:
        parts.append(_h("Answer"))
        parts += [literal(f"#{r['rank']} {r.get('name') or r['id'][:12]}  {class_text(r)}  "
                       f"fused {fmt_num(r.get('fused'), '.4f')}") for r in answer["rows"]]
    parts += [_h("Timings"), _timings(run.get("timings"))]
    return Group(*parts)


def explain_rank(run: dict, rank: int) -> RenderableType:
    """Why image #rank sits where it does, from the trace alone: the fusion arithmetic, the judge's
    justification and raw answer, the per-fold scores and how many folds agree."""
    rows = (run.get("answer") or {}).get("rows") or []
    if not 1 <= rank <= len(rows):
        return Text(f"There is no #{rank} in the last answer ({len(rows)} images).")
    row = rows[rank - 1]
    ev = read_events(run)
    cands = ev.candidates.candidates if ev.candidates else []
    table = ev.fuse.table if ev.fuse else []
    cfg = ev.fuse.config if ev.fuse else {}
    fused = next((t for t in table if t["id"] == row["id"]), {})
    verdict = next((v for v in (ev.verdicts.verdicts if ev.verdicts else []) if v["id"] == row["id"]), {})
    name = row.get("name") or row["id"][:12]
    place = "first" if rank == 1 else f"#{rank}"
    lines: list[RenderableType] = [literal(f"Why #{rank} {name} ({class_text(row)}) is {place}", style="bold")]
    formula = fused.get("formula") or row.get("formula") or "?"
    lines.append(literal(f"Pos-Fuse ({cfg.get('strategy', 'posfuse')}): fused = {formula}"))
    if cfg.get("strategy", "posfuse") == "posfuse":
        lines.append(Text(
            f"  = ({cfg.get('w_retrieval', 0.4):g} x retrieval position prob + {cfg.get('w_judge', 0.6):g} x "
            f"({cfg.get('judge_pos_weight', 0.6):g} x judge position prob + "
            f"{1 - cfg.get('judge_pos_weight', 0.6):g} x min-max judge score)) / weights", style="dim"))
    lines.append(Text(f"Retrieval: rank {fmt_num(fused.get('retrieval_rank') or row.get('retrieval_rank'), 'd')} of "
                      f"{len(cands)}, ensemble cosine {fmt_num(row.get('retrieval'))}"))
    judge = verdict.get("judge") or row.get("judge_kind") or "?"
    model = f" ({verdict['model']})" if verdict.get("model") and verdict.get("model") != judge else ""
    lines.append(literal(f"Judge {judge}{model}: rank {fmt_num(fused.get('judge_rank'), 'd')}, score "
                      f"{fmt_num(row.get('judge'), '.2f')} ({_verdict_status(verdict or row)}): "
                      f"{verdict.get('justification') or row.get('justification') or ''}", limit=BLOCK_CHARS))
    raw = verdict.get("raw")
    if raw:
        lines.append(literal(f"Judge's raw answer: {raw}", limit=BLOCK_CHARS))
    elif judge == "offline":
        lines.append(Text("Judge's raw answer: none (the offline judge computes its score; it writes no text)",
                          style="dim"))
    else:
        lines.append(Text("Judge's raw answer: none recorded", style="dim"))
    folds = row.get("fold_scores") or []
    ranks = fold_ranks(cands, row["id"])
    if folds:
        per = ", ".join(f"fold {f + 1} {s:.3f} (rank {r}/{n})" for f, (s, (r, n)) in enumerate(zip(folds, ranks)))
        top3 = sum(1 for r, _ in ranks if r <= 3)
        lines.append(Text(f"Per-fold cosine: {per}"))
        lines.append(Text(f"Fold agreement: {top3}/{len(ranks)} folds rank it in their top 3 of the candidates."))
    if row.get("demoted"):
        lines.append(literal(f"Ranked after the rest: {row['demoted']}"))
    if rank == 1 and len(rows) > 1:
        nxt = rows[1]
        lines.append(literal(f"Runner-up #2 {nxt.get('name') or nxt['id'][:12]}: fused {nxt.get('formula')}", style="dim"))
    lines.append(Text(f"(from the trace of run {run['id'][:12]}; no model was called)", style="dim"))
    return Group(*lines)

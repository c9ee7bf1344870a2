"""`kger trace list | show | export | prune`: audit stored runs without calling any model; drop old ones.

Everything shown here comes from the trace record (store/traces.py): the planner's tool calls, every
candidate with its per-fold scores, each judge answer as the model returned it, the Pos-Fuse arithmetic.
Nothing is recomputed by a model, so an audit is reproducible and works offline. The chat reuses
`run_view` (for /trace) and `explain_rank` (for "why is 1 first?").
"""
from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal, Optional

import typer
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from agent.cli.common import HomeOpt, JsonOpt, err_console, out_console, print_json, set_home
from agent.cli.render import BLOCK_CHARS, clean, literal
from agent.cli.report import call_text, class_text, event_payloads, fmt_num
from retrieval.errors import InputError

app = typer.Typer(help="Inspect stored runs: what each step saw, scored and decided (no model is called).",
                  no_args_is_help=True)


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


def _candidates_by_id(run: dict) -> dict[str, dict]:
    cands = event_payloads(run).get("retrieve/candidates", {}).get("candidates", [])
    return {c["id"]: c for c in cands}


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


def _local(ts: Optional[str]) -> str:
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
    ev = event_payloads(run)
    by_id = _candidates_by_id(run)
    parts: list[RenderableType] = [
        literal(f"# Run {run['id']}", style="bold"),
        _kv(kind=run.get("kind"), status=run.get("status"), created=_local(run.get("created")), llm=run.get("llm"),
            store=run.get("store"), bundle=run.get("bundle"), thread=run.get("thread_id")),
        _h("Input"), literal(run.get("input") or "", limit=BLOCK_CHARS),
    ]
    if run.get("error"):
        parts += [_h("Error"), literal(run["error"], style="red", limit=BLOCK_CHARS)]
    plan = ev.get("plan/tool_calls")
    if plan is not None:
        parts += [_h("Plan"), _kv(planner=plan.get("planner"), fallback=plan.get("fallback") or "none",
                                   ms=plan.get("ms"))]
        parts += [literal(f"- {call_text(c)}") for c in plan.get("tool_calls", [])]
        parts += [literal(f"! {c['tool']} {c['kind']} {c['filter']}: the planner gave {c['planner']!r}, the description "
                          f"says {c['description']!r} (used)", style="yellow") for c in plan.get("conflicts") or []]
    ret = ev.get("retrieve/candidates")
    if ret is not None:
        cands = ret.get("candidates", [])
        parts += [_h(f"Retrieve: {len(cands)} candidates"), _candidates_table(cands, 5 if short else None)]
        parts += [literal(f"tool error: {e}", style="red") for e in ret.get("errors") or []]
    jud = ev.get("judge/verdicts")
    if jud is not None:
        verdicts = jud.get("verdicts", [])
        n_fb = sum(1 for v in verdicts if v.get("fallback"))
        n_cached = sum(1 for v in verdicts if v.get("cached"))
        parts += [_h(f"Judge: {jud.get('judge')}"),
                  _kv(question=jud.get("question"), verdicts=len(verdicts), cached=n_cached, fallbacks=n_fb,
                      ms=jud.get("ms"))]
        if not short:
            parts += _verdict_blocks(verdicts, by_id)
    fuse = ev.get("fuse/table")
    if fuse is not None:
        cfg = fuse.get("config") or {}
        parts += [_h(f"Pos-Fuse ({cfg.get('strategy', '?')})"),
                  _kv(decay=cfg.get("decay"), w_retrieval=cfg.get("w_retrieval"), w_judge=cfg.get("w_judge"),
                      judge_pos_weight=cfg.get("judge_pos_weight"),
                      constraints=json.dumps(fuse.get("constraints") or {})),
                  _fuse_table((fuse.get("table") or [])[: 5 if short else None], by_id)]
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
    ev = event_payloads(run)
    cands = ev.get("retrieve/candidates", {}).get("candidates", [])
    table = ev.get("fuse/table", {}).get("table", [])
    cfg = ev.get("fuse/table", {}).get("config", {})
    fused = next((t for t in table if t["id"] == row["id"]), {})
    verdict = next((v for v in ev.get("judge/verdicts", {}).get("verdicts", []) if v["id"] == row["id"]), {})
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


# ------------------------------------------------------------------------------------------- commands


def parse_when(value: Optional[str], end_of_day: bool = False) -> Optional[datetime]:
    """ISO date or date-time (local time unless it names a zone), or a span back from now: 30m, 2h, 7d."""
    from store.when import parse_when as parse

    try:
        return parse(value, end_of_day) if value else None
    except InputError as e:
        raise typer.BadParameter(str(e)) from None


@app.command("list")
def list_cmd(
    count: Annotated[int, typer.Option("-n", "--count", min=0, help="How many runs, newest first (0 = all).")] = 3,
    since: Annotated[Optional[str], typer.Option(
        "--since", help="Runs started at or after DATE (or 30m, 2h, 7d ago).")] = None,
    until: Annotated[Optional[str], typer.Option("--until", help="Runs started at or before DATE.")] = None,
    query: Annotated[Optional[str], typer.Option("--query", "-q", help="Only runs whose input contains TEXT.")] = None,
    home: HomeOpt = None,
    json_out: JsonOpt = False,
):
    """The last runs: id, time, kind, status, input and the top image."""
    set_home(home)
    lo, hi = parse_when(since), parse_when(until, end_of_day=True)
    with open_traces() as db:
        runs = db.list_runs(limit=count, since=lo, until=hi, text=query)
    if json_out:
        print_json(runs)
        return
    if not runs:
        err_console.print("No runs match.")
        return
    t = Table(title=f"{len(runs)} run(s), newest first", title_justify="left")
    for col in ("run", "when", "kind", "llm", "status", "input", "top image"):
        t.add_column(col, overflow="fold")
    for r in runs:
        rows = (r.get("answer") or {}).get("rows") or []
        top = f"{rows[0].get('name') or rows[0]['id'][:12]} ({class_text(rows[0])})" if rows else "-"
        t.add_row(*(literal(v) for v in (r["id"][:12], _local(r.get("created")), r.get("kind") or "", r.get("llm") or "",
                                      r.get("status") or "", r.get("input") or "", top)))
    out_console.print(t)
    err_console.print("Details: kger trace show RUN_ID")


@app.command("show")
def show(
    run_id: Annotated[str, typer.Argument(help="A run id, or a unique prefix of one (see kger trace list).")],
    pager: Annotated[bool, typer.Option("--pager/--no-pager", help="Page output taller than the terminal ($PAGER, else less).")] = True,
    home: HomeOpt = None,
    json_out: JsonOpt = False,
):
    """One run step by step: input, tool calls, candidates with per-fold scores, judge answers, Pos-Fuse arithmetic."""
    set_home(home)
    run = load_run(run_id)
    if json_out:
        print_json(run)
        return
    print_paged(run_view(run), pager)


def print_paged(view: RenderableType, pager: bool = True) -> None:
    """Through a pager when stdout is a terminal and the output is taller than it; else straight out."""
    if pager and out_console.is_terminal and len(out_console.render_lines(view, pad=False)) > out_console.size.height:
        import os

        os.environ.setdefault("LESS", "-RFX")  # colours through, quit at once if it fits, keep the screen
        with out_console.pager(styles=True):
            out_console.print(view)
        return
    out_console.print(view)


@app.command("export")
def export(
    run_id: Annotated[str, typer.Argument(help="A run id, or a unique prefix of one.")],
    fmt: Annotated[Literal["json", "html"], typer.Option("--format", "-f",
                                     help="json, or html (one self-contained page)")] = "json",
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="File to write (default: stdout for json, "
                                                "kger-run-ID.html in this folder for html).")] = None,
    home: HomeOpt = None,
):
    """Export one run's full record, as JSON or as an HTML page with the images inlined."""
    set_home(home)
    if fmt not in ("json", "html"):
        raise typer.BadParameter(f"--format must be json or html, not {fmt!r}")
    if out is not None:
        from agent.cli.checks import out_file

        out_file(out, "--out")
    run = load_run(run_id)
    if fmt == "json":
        text = json.dumps(run, indent=2, ensure_ascii=False, default=str) + "\n"
        if out is None:
            print_json(run)
            return
    else:
        from agent.cli.report import render_run

        text = render_run(run)
        out = out or Path(f"kger-run-{run['id'][:12]}.html")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    err_console.print(literal(f"Wrote {out}"))


def _size(path: Path) -> int:
    """A SQLite database's bytes on disk, with its WAL and shared-memory files."""
    return sum(p.stat().st_size for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm")) if p.is_file())


def prune_checkpoints(path: Path, threads: list[str]) -> int:
    """Drop these conversation threads from the checkpoint database (LangGraph's own delete), then VACUUM."""
    import sqlite3

    from langgraph.checkpoint.sqlite import SqliteSaver

    if not path.is_file():
        return 0
    conn = sqlite3.connect(str(path), check_same_thread=False)
    try:
        saver = SqliteSaver(conn)
        for thread in threads:
            saver.delete_thread(thread)
        conn.commit()
        conn.isolation_level = None
        conn.execute("vacuum")
        conn.execute("pragma wal_checkpoint(truncate)")
    finally:
        conn.close()
    return len(threads)


@app.command("prune")
def prune(
    before: Annotated[str, typer.Option("--before", help="Remove runs started before DATE (YYYY-MM-DD[THH:MM]) or "
                                                       "older than an age: 30m, 2h, 7d, 4w.")],
    yes: Annotated[bool, typer.Option("--yes", help="Allow a cutoff in the future (it removes every run).")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Say what would be removed; remove nothing.")] = False,
    home: HomeOpt = None,
    json_out: JsonOpt = False,
):
    """Remove old runs and their events from traces.db, and their conversation threads from checkpoints.db."""
    set_home(home)
    from store.paths import checkpoints_db_path
    from store.when import FutureCutoffError, prune_cutoff

    try:
        when = prune_cutoff(before, yes)
    except FutureCutoffError:
        raise
    except InputError as e:  # a malformed value is a usage error, as for `trace list --since`
        raise typer.BadParameter(str(e), param_hint="--before") from None
    ck = checkpoints_db_path()
    with open_traces(reader=False) as db:
        paths = [Path(db.path), ck]
        sizes = [_size(p) for p in paths]
        removed = db.prune(when, dry_run=dry_run)
    if dry_run:
        doc = {"before": when.isoformat(), "dry_run": True, "runs": removed["runs"], "events": removed["events"],
               "threads": len(removed["threads"]), "traces_db": str(paths[0]), "checkpoints_db": str(ck)}
        if json_out:
            print_json(doc)
        else:
            out_console.print(f"Would remove {removed['runs']} runs, {removed['events']} events and "
                              f"{len(removed['threads'])} conversation threads started before "
                              f"{_local(doc['before'])} (--dry-run: nothing removed).")
        return
    threads = prune_checkpoints(ck, removed["threads"])
    freed = sum(sizes) - sum(_size(p) for p in paths)
    doc = {"before": when.isoformat(), "runs": removed["runs"], "events": removed["events"], "threads": threads,
           "bytes_freed": freed, "traces_db": str(paths[0]), "checkpoints_db": str(ck)}
    if json_out:
        print_json(doc)
        return
    out_console.print(f"Removed {removed['runs']} runs, {removed['events']} events and {threads} conversation "
                      f"threads started before {_local(doc['before'])}; freed {freed:,} bytes.")

"""`kger trace list | show | export | prune`: audit stored runs without calling any model; drop old ones.

Everything shown here comes from the trace record (store/traces.py): the planner's tool calls, every
candidate with its per-fold scores, each judge answer as the model returned it, the Pos-Fuse arithmetic.
Nothing is recomputed by a model, so an audit is reproducible and works offline. The views themselves are core
(agent/core/audit.py: the chat's /trace and "why is 1 first?" use them too); checkpoint pruning is store's
(store/checkpoints.py). This module is the door: options, paging, files.
"""
from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal, Optional

import typer
from rich.console import RenderableType
from rich.table import Table

from agent.cli.common import HomeOpt, JsonOpt, err_console, out_console, print_json, set_home
from agent.core.audit import load_run, local_time, open_traces, run_view
from agent.core.render import literal
from agent.core.report import class_text
from retrieval.errors import InputError

app = typer.Typer(help="Inspect stored runs: what each step saw, scored and decided (no model is called).",
                  no_args_is_help=True)


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
        total = db.count_runs(since=lo, until=hi, text=query) if runs and not json_out else len(runs)
        short = db.short_ids([r["id"] for r in runs]) if runs and not json_out else {}
    if json_out:
        print_json(runs)
        return
    if not runs:
        err_console.print("No runs match.")
        return
    matching = "stored" if not (lo or hi or query) else "matching"
    t = Table(title=f"{len(runs)} of {total:,} {matching} run{'s' if total != 1 else ''}, newest first",
              title_justify="left")
    width = max(len(v) for v in short.values())
    for col in ("run", "when", "kind", "llm", "status", "input", "top image"):  # a run id never wraps
        t.add_column(col, overflow="fold", no_wrap=col == "run", min_width=width if col == "run" else None)
    for r in runs:
        rows = (r.get("answer") or {}).get("rows") or []
        top = f"{rows[0].get('name') or rows[0]['id'][:12]} ({class_text(rows[0])})" if rows else "-"
        t.add_row(*(literal(v) for v in (short[r["id"]], local_time(r.get("created")), r.get("kind") or "",
                                         r.get("llm") or "", r.get("status") or "", r.get("input") or "", top)))
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
        from agent.core.report import render_run

        text = render_run(run)
        out = out or Path(f"kger-run-{run['id'][:12]}.html")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    err_console.print(literal(f"Wrote {out}"))


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
    from store.checkpoints import db_size, prune_checkpoints
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
        sizes = [db_size(p) for p in paths]
        removed = db.prune(when, dry_run=dry_run)
    if dry_run:
        doc = {"before": when.isoformat(), "dry_run": True, "runs": removed["runs"], "events": removed["events"],
               "threads": len(removed["threads"]), "traces_db": str(paths[0]), "checkpoints_db": str(ck)}
        if json_out:
            print_json(doc)
        else:
            out_console.print(f"Would remove {removed['runs']} runs, {removed['events']} events and "
                              f"{len(removed['threads'])} conversation threads started before "
                              f"{local_time(doc['before'])} (--dry-run: nothing removed).")
        return
    threads = prune_checkpoints(ck, removed["threads"])
    freed = max(0, sum(sizes) - sum(db_size(p) for p in paths)) if removed["runs"] or threads else 0
    doc = {"before": when.isoformat(), "runs": removed["runs"], "events": removed["events"], "threads": threads,
           "bytes_freed": freed, "traces_db": str(paths[0]), "checkpoints_db": str(ck)}
    if json_out:
        print_json(doc)
        return
    if not (removed["runs"] or threads):  # nothing went: no "freed" figure (a file's WAL may shrink by itself)
        out_console.print(f"Nothing to remove: no run started before {local_time(doc['before'])}.")
        return
    out_console.print(f"Removed {removed['runs']} runs, {removed['events']} events and {threads} conversation "
                      f"threads started before {local_time(doc['before'])}; freed {freed:,} bytes.")

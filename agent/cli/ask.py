"""`kger ask`: one question through the whole agent (plan, retrieve, judge, fuse)."""
from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Optional

import typer
from rich.table import Table

from agent.cli.common import (
    ChromaUrlOpt, HomeOpt, JsonOpt, KOpt, LlmOpt, StoreOpt, check_llm, open_assistant, out_console, print_json,
    set_home,
)
from agent.cli.render import line, literal

if TYPE_CHECKING:
    from agent.state import Answer


def answer_table(answer: Answer) -> Table:
    """The answer as a table; every user and model text goes through `literal` (shown as written, never markup)."""
    t = Table(title=literal(answer.question), title_justify="left", show_lines=False)
    for col, just in (("#", "right"), ("image", "left"), ("class", "left"), ("retrieval", "right"),
                      ("judge", "right"), ("fused", "right"), ("why", "left")):
        t.add_column(col, justify=just, overflow="fold")
    for r in answer.rows:
        cls = r.label or (f"{r.predicted}? {r.predicted_prob:.2f}" if r.predicted else "-")
        why = line(literal(r.justification))
        if r.fallback:
            why = line(why, " ", literal(f"(offline judge: {r.fallback})", style="dim"))
        if r.demoted:
            why = line(why, " ", literal(f"(ranked last: {r.demoted})", style="dim"))
        judge = "-" if r.judge is None else f"{r.judge:.2f}"
        t.add_row(str(r.rank), literal(r.name or r.id[:12]), literal(cls), f"{r.retrieval:.3f}", judge,
                  f"{r.fused:.3f}", why)
    return t


def ask(
    text: Annotated[str, typer.Argument(help="A clinical description, e.g. 'right tympanic membrane, central perforation'.")],
    llm: LlmOpt = "offline",
    k: KOpt = 5,
    store: StoreOpt = "default",
    thread: Annotated[Optional[str], typer.Option("--thread", help="Continue a conversation thread (follow-ups).")] = None,
    chroma_url: ChromaUrlOpt = None,
    home: HomeOpt = None,
    json_out: JsonOpt = False,
):
    """Find images for a description, judged and fused, with reasons and a run id for [bold]kger trace show[/bold]."""
    set_home(home)
    check_llm(llm)
    assistant = open_assistant(store, chroma_url, llm, k)
    answer = assistant.ask(text, thread_id=thread, kind="ask")
    if json_out:
        print_json(answer.model_dump())
        return
    out_console.print(answer_table(answer))
    traced = f"  (kger trace show {answer.run_id[:12]})" if assistant.traces is not None else "  (not recorded)"
    out_console.print(f"run {answer.run_id}{traced}")

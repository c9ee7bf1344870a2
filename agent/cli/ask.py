"""`kger ask`: one question through the whole agent (plan, retrieve, judge, fuse)."""
from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Optional

import typer
from rich.markup import escape
from rich.table import Table

from agent.cli.common import (
    ChromaUrlOpt, HomeOpt, JsonOpt, KOpt, LlmOpt, StoreOpt, check_llm, err_console, open_assistant, out_console,
    print_json, set_home,
)

if TYPE_CHECKING:
    from agent.state import Answer


def answer_table(answer: Answer) -> Table:
    t = Table(title=escape(answer.question), title_justify="left", show_lines=False)
    for col, just in (("#", "right"), ("image", "left"), ("class", "left"), ("retrieval", "right"),
                      ("judge", "right"), ("fused", "right"), ("why", "left")):
        t.add_column(col, justify=just, overflow="fold")
    for r in answer.rows:
        cls = r.label or (f"{r.predicted}? {r.predicted_prob:.2f}" if r.predicted else "-")
        why = escape(r.justification)  # model and user text is never markup
        if r.fallback:
            why += f" [dim](offline judge: {escape(r.fallback)})[/dim]"
        if r.demoted:
            why += f" [dim](ranked last: {escape(r.demoted)})[/dim]"
        judge = "-" if r.judge is None else f"{r.judge:.2f}"
        t.add_row(str(r.rank), escape(r.name or r.id[:12]), escape(cls), f"{r.retrieval:.3f}", judge,
                  f"{r.fused:.3f}", why)
    return t


def ask(
    text: Annotated[str, typer.Argument(help="A clinical description, e.g. 'right tympanic membrane, central perforation'.")],
    llm: LlmOpt = "offline",
    k: KOpt = 5,
    store: StoreOpt = "default",
    thread: Annotated[Optional[str], typer.Option("--thread", help="Start or continue a named conversation thread "
                                                  "(follow-ups); without it the question is one-shot and keeps no "
                                                  "conversation state.")] = None,
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
    if answer.status == "error":  # a store or model failure: never an empty answer with exit 0
        err_console.print(f"Error: no answer ({answer.error}); details: kger trace show {answer.run_id[:12]}",
                          markup=False, soft_wrap=True)
        raise typer.Exit(1)
    if json_out:
        return
    out_console.print(answer_table(answer))
    out_console.print(f"run {answer.run_id}  (kger trace show {answer.run_id[:12]})")

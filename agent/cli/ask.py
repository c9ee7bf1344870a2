"""`kger ask`: one question through the whole agent (plan, retrieve, judge, fuse)."""
from __future__ import annotations

from typing import Annotated, Optional

import typer
from rich.markup import escape
from rich.table import Table

from agent.cli.common import (
    ChromaUrlOpt, HomeOpt, JsonOpt, KOpt, StoreOpt, err_console, out_console, print_json, set_home,
)

LlmOpt = Annotated[str, typer.Option("--llm", help="offline (default: nothing leaves this machine) | gemini")]

REMOTE_NOTICE = ("[bold yellow]Gemini selected:[/bold yellow] the description and the candidate images (cropped, "
                 "downscaled, metadata stripped) are sent to Google's API. Use --llm offline to keep everything local.")


def check_llm(llm: str) -> str:
    if llm not in ("offline", "gemini"):
        raise typer.BadParameter(f"--llm must be offline or gemini, not {llm!r}")
    if llm == "gemini":
        import os

        err_console.print(REMOTE_NOTICE)
        if not os.environ.get("GOOGLE_API_KEY"):
            err_console.print("[yellow]GOOGLE_API_KEY is not set: the planner and judge fall back to offline.[/yellow]")
    return llm


def answer_table(answer: dict) -> Table:
    t = Table(title=escape(answer.get("question", "")), title_justify="left", show_lines=False)
    for col, just in (("#", "right"), ("image", "left"), ("class", "left"), ("retrieval", "right"),
                      ("judge", "right"), ("fused", "right"), ("why", "left")):
        t.add_column(col, justify=just, overflow="fold")
    for r in answer.get("rows", []):
        cls = r.get("label") or (f"{r['predicted']}? {r['predicted_prob']:.2f}" if r.get("predicted") else "-")
        why = escape(r.get("justification", ""))  # model and user text is never markup
        if r.get("fallback"):
            why += f" [dim](offline judge: {escape(r['fallback'])})[/dim]"
        if r.get("demoted"):
            why += f" [dim](ranked last: {escape(r['demoted'])})[/dim]"
        judge = "-" if r.get("judge") is None else f"{r['judge']:.2f}"
        t.add_row(str(r["rank"]), escape(r.get("name") or r["id"][:12]), escape(cls), f"{r['retrieval']:.3f}", judge,
                  f"{r['fused']:.3f}", why)
    return t


def open_assistant(store: str, chroma_url: Optional[str], llm: str, k: int, **kw):
    from agent.assistant import Assistant

    with err_console.status("Loading bundle and store..."):
        return Assistant.open(store, url=chroma_url, llm=llm, k=k, **kw)


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
        print_json(answer)
        return
    out_console.print(answer_table(answer))
    out_console.print(f"run {answer['run_id']}  (kger trace show {answer['run_id'][:12]})")

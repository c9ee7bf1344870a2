"""`kger ask`: one question through the whole agent (plan, retrieve, judge, fuse)."""
from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Annotated, Optional

import typer
from rich.console import Group
from rich.table import Table
from rich.text import Text

from agent.cli.common import (
    ChromaUrlOpt, HomeOpt, JsonOpt, JudgeOpt, KOpt, LlmOpt, RoundsOpt, StoreOpt, StrictOpt, err_console, open_assistant, out_console,
    print_json, start,
)
from agent.core.limits import DEFAULT_ROUNDS
from agent.core.render import line, literal

if TYPE_CHECKING:
    from agent.state import Answer

# The first score is the judge's, as a 0-100 match (readable on its own); the fused score only orders one answer
# (the top row's is near 0.39 on every query), so its Pos-Fuse arithmetic goes under "why" and in the trace.
FIXED = (("#", "right", 3), ("class", "left", 16), ("match", "right", 5), ("retrieval", "right", 9))
FIXED_WIDTH = sum(w for _, _, w in FIXED) + 3 * (len(FIXED) + 1) + 1  # cells + padding + rules


class AnswerTable:
    """One line per image at any width: every column but the image name is fixed, and the name gets what the
    terminal has left (cut with an ellipsis; 30 characters at 80 columns). The reasons follow below, one
    numbered paragraph per image (`reasons=False` leaves them out). Built at render time, for the width."""

    def __init__(self, answer: "Answer", reasons: bool = True):
        self.answer, self.reasons = answer, reasons

    def __rich_console__(self, console, options):
        yield self.render(options.max_width)

    def render(self, width: int) -> Group:
        t = Table(title=literal(self.answer.question), title_justify="left", show_lines=False)
        image_width = max(8, width - FIXED_WIDTH)
        for col, just, w in FIXED[:1] + (("image", "left", image_width),) + FIXED[1:]:
            t.add_column(col, justify=just, no_wrap=True, overflow="ellipsis", max_width=w,
                         min_width=None if col == "image" else w)
        whys = []
        for r in self.answer.rows:
            cls = r.label or (f"{r.predicted}? {r.predicted_prob:.2f}" if r.predicted else "-")
            why = literal(r.justification)  # model and user text is never markup (agent/core/render.py)
            if r.fallback:
                why = line(why, " ", literal(f"(offline judge: {r.fallback})", style="dim"))
            if r.demoted:
                why = line(why, " ", literal(f"(ranked last: {r.demoted})", style="dim"))
            why = line(why, " " if why.plain else "", literal(f"(order: Pos-Fuse {r.formula})", style="dim"))
            match = "-" if r.match is None else str(r.match)
            t.add_row(str(r.rank), literal(r.name or r.id[:12]), literal(cls), match, f"{r.retrieval:.3f}")
            whys.append((str(r.rank), why))
        head = [literal("; ".join(self.answer.corrections), style="yellow")] if self.answer.corrections else []
        if not self.reasons or not whys:
            return Group(*head, t)
        grid = Table.grid(padding=(0, 2))
        grid.add_column(justify="right", min_width=3)
        grid.add_column()  # wraps with a hanging indent under the reason, not under the rank
        for rank, why in whys:
            grid.add_row(rank, why)
        return Group(*head, t, Text("why", style="bold"), grid)


def answer_table(answer: "Answer", reasons: bool = True) -> AnswerTable:
    return AnswerTable(answer, reasons)


def read_text_arg(text: Optional[str], what: str = "description") -> str:
    """TEXT, or stdin when TEXT is '-' or missing and stdin is a pipe (`echo ... | kger ask`)."""
    if text is not None and text != "-":
        return text
    if sys.stdin is None or sys.stdin.isatty():
        raise typer.BadParameter(f"give the {what} as TEXT, or pipe it in (`echo TEXT | kger ask -`)",
                                 param_hint="TEXT")
    data = sys.stdin.read().strip()
    if not data:
        raise typer.BadParameter(f"the {what} on stdin is empty", param_hint="TEXT")
    return data


class TurnProgress:
    """The spinner's line while a turn runs: which node finished, then "judged 7/20" from the judge."""

    def __init__(self, status):
        self.status = status

    def __call__(self, kind: str, payload: dict) -> None:
        if kind == "progress" and "judged" in payload:
            self.status.update(f"judged {payload['judged']}/{payload['total']}")
        elif kind == "node":
            self.status.update(f"{payload['node']} done ({payload['ms']:.0f} ms)")


def report_fallbacks(answer: "Answer", strict: bool) -> None:
    """--strict: FallbackError (one line, exit 1) if anything stood in for the LLM; else a note per fallback."""
    from agent.assistant import require_no_fallback

    if strict:
        require_no_fallback(answer)
    for note in answer.fallbacks:
        err_console.print(line("[yellow]fallback[/yellow] ", literal(note)), soft_wrap=True)


def ask(
    text: Annotated[Optional[str], typer.Argument(
        help="A clinical description, e.g. 'right tympanic membrane, central perforation'; '-' or nothing: "
             "read it from stdin.")] = None,
    llm: LlmOpt = "offline",
    k: KOpt = 5,
    store: StoreOpt = "default",
    thread: Annotated[Optional[str], typer.Option("--thread", help="Start or continue a named conversation thread "
                                                  "(follow-ups); without it the question is one-shot and keeps no "
                                                  "conversation state.")] = None,
    chroma_url: ChromaUrlOpt = None,
    home: HomeOpt = None,
    json_out: JsonOpt = False,
    strict: StrictOpt = False,
    rounds: RoundsOpt = DEFAULT_ROUNDS,
    judge: JudgeOpt = "image",
):
    """Find images for a description, judged and fused, with reasons and a run id for [bold]kger trace show[/bold]."""
    turn = start(home, llm, k).with_(thread=thread, kind="ask", rounds=rounds)
    text = read_text_arg(text)
    assistant = open_assistant(store, chroma_url, llm, k, judge=judge)
    with err_console.status("planning...") as status:
        answer = assistant.ask(text, turn, on_event=TurnProgress(status))
    report_fallbacks(answer, strict)
    if json_out:
        print_json(answer.model_dump())
    if answer.status == "error":  # a store or model failure: never an empty answer with exit 0
        err_console.print(f"Error: no answer ({answer.error}); details: kger trace show {answer.run_id[:12]}",
                          markup=False, soft_wrap=True)
        raise typer.Exit(1)
    if json_out:
        return
    for note in (answer.clarify, answer.notice):  # one-shot: never blocks, says what is open or weak
        if note:
            out_console.print(literal(note, style="yellow"), soft_wrap=True)
    out_console.print(answer_table(answer))
    traced = f"  (kger trace show {answer.run_id[:12]})" if assistant.traces is not None else "  (not recorded)"
    out_console.print(f"run {answer.run_id}{traced}")

"""`kger chat`: a conversation in the terminal, one LangGraph thread per session.

Descriptions and follow-ups ("only the left side", "more like number 2") go through `Assistant.ask` with the
session's thread id, so the planner sees the previous answer. A few turns are answered here without the
graph: "show 10" re-asks the last description with k=10, and "why is 1 first?" is read from the last run's
trace (never from a model), as are the slash commands.
"""
from __future__ import annotations

import os
import re
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Optional

import typer
from rich.console import Console

from agent.cli.ask import answer_table
from agent.cli.common import (
    ChromaUrlOpt, HomeOpt, JudgeOpt, KOpt, LlmOpt, RoundsOpt, StoreOpt, StrictOpt, announce_llm, err_console,
    open_assistant, out_console, start,
)
from agent.core.events import read_events
from agent.core.limits import DEFAULT_ROUNDS, MAX_K
from agent.core.render import line, literal
from agent.prompts import is_blank

if TYPE_CHECKING:
    from agent.state import Answer

PROMPT = "kger> "
HISTORY_FILE = "chat_history"
HISTORY_LENGTH = 1000

HELP = """\
Type a clinical description, e.g. [bold]left ear, tympanic membrane with a central perforation[/bold].
Follow-ups keep the conversation:
  [bold]only the left side[/bold] / [bold]only the right side[/bold]   the last description, one side only
  [bold]more like number 2[/bold]        images that look like #2 of the last answer
  [bold]show 10[/bold]                   the last description again, with 10 images (and k = 10 from then on)
  [bold]why is 1 first?[/bold]           the arithmetic and the reasons behind #1, from the trace
Commands:
  [bold]/k N[/bold]  images per answer     [bold]/llm offline|gemini[/bold]  switch planner and judge
  [bold]/trace[/bold]  the last run's trace   [bold]/open N[/bold]  path of image N
  [bold]/help[/bold]  this text               [bold]/quit[/bold]  leave (or Ctrl-D)
Ctrl-C cancels the current turn; the conversation goes on."""

_SHOW = re.compile(r"^\s*show\s+(?:me\s+)?(\d+)(?:\s+(?:more\s+)?(?:images?|results?|pictures?))?\s*[.!]?\s*$", re.I)
_WHY = re.compile(r"^\s*why\s+(?:is\s+|was\s+|are\s+)?(?:(?:image|number|no\.?)\s*|#\s*)?(\d+)\b[^\n]*$", re.I)


def _history_path() -> Path:
    from store.paths import kger_home

    return kger_home() / HISTORY_FILE


def setup_readline() -> Optional[Callable[[], None]]:
    """Line editing and a history file under KGER_HOME; returns the function that saves the history."""
    try:
        import readline
    except ImportError:  # not on every platform; the chat works without it
        return None
    path = _history_path()
    try:
        readline.read_history_file(str(path))
    except (FileNotFoundError, OSError):
        pass
    readline.set_history_length(HISTORY_LENGTH)

    def save() -> None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            readline.write_history_file(str(path))
        except OSError as e:
            err_console.print(literal(f"could not save the chat history to {path}: {e}", style="dim"))

    return save


class ChatSession:
    """The state of one conversation: the assistant, the thread, the last answer; `handle` is one input line."""

    def __init__(self, assistant, console: Console = out_console, err: Console = err_console,
                 announced_remote: bool = False, strict: bool = False, rounds: Optional[int] = None):
        self.assistant = assistant
        self.strict = strict
        self.strict_failures = 0  # turns --strict refused: the session then exits 1
        self.console, self.err = console, err
        self.thread_id = uuid.uuid4().hex
        # this conversation's turn: k and llm change with /k, "show N" and /llm, the shared Assistant never does
        self.turn = assistant.turn(thread=self.thread_id, kind="chat",
                                   **({} if rounds is None else {"rounds": rounds}))
        self.last: Optional[Answer] = None
        self.announced_remote = announced_remote
        self.thumbs_note_shown = False

    # -- one line ------------------------------------------------------------------------------
    def handle(self, line: str) -> bool:
        """Answer one input line; False means the session ends."""
        text = line.strip()
        if is_blank(text):  # nothing to search (control characters only too): Assistant.ask would refuse it
            self.hint("Type a clinical description (e.g. 'left ear, tympanic membrane'), or /help.")
            return True
        if text.startswith("/"):
            return self.command(text)
        m = _SHOW.match(text)
        if m:
            self.show(int(m.group(1)))
            return True
        m = _WHY.match(text)
        if m:
            self.why(int(m.group(1)))
            return True
        self.ask(text)
        return True

    def hint(self, message: str) -> None:
        self.err.print(literal(message, style="yellow", newlines=False))  # it may quote the user's input

    # -- turns through the graph ---------------------------------------------------------------
    def ask(self, text: str) -> None:
        from agent.cancel import Token, TurnCancelled, run_cancellable, shielded

        token, finished = Token(), False
        try:
            with self.err.status("Searching and judging...", spinner="dots"):  # Ctrl-C: agent/cancel.py
                answer = run_cancellable(lambda: self.assistant.ask(text, self.turn), self.assistant.cancel_turn,
                                         token=token)
                finished = True
            if answer.status == "error":  # no answer: say why (a bad follow-up, a failed store), never an empty table
                self.console.print(line("No image found for ", literal(repr(answer.question)), "."))
                self.hint(answer.error or "the turn failed")
                return
            if self.strict and answer.fallbacks:
                from agent.assistant import require_no_fallback

                self.strict_failures += 1
                require_no_fallback(answer)  # the loop prints its one line; the session goes on
            if answer.asked_back:  # the question first; the next message resolves it (agent/constraints.resolve)
                self.console.print(literal(answer.clarify or "", style="bold yellow"), soft_wrap=True)
            self.print_answer(answer)  # ends with the run id: from then on the answer has been shown
        except KeyboardInterrupt:
            if not finished:
                raise
            # The turn finished but its run id was not shown yet (the spinner stopping, the table printing):
            # cancelled too, the thread as before the turn, so what is stored matches what the user saw.
            shielded(lambda: self.assistant.cancel_turn(token))
            raise TurnCancelled() from None
        self.last = answer
        if answer.notice:
            self.hint(answer.notice + " Try rephrasing: name the region, the side and the finding in plain words.")
        for note in answer.fallbacks:
            self.hint(f"fallback: {note}")

    def print_answer(self, answer: Answer) -> None:
        if answer.rows:
            self.console.print(answer_table(answer))
            self.print_thumbnails(answer)
        else:
            self.console.print(line("No image found for ", literal(repr(answer.question)), "."))
            for error in self._tool_errors(answer.run_id):
                self.hint(error.splitlines()[0] if error.strip() else error)
        self.console.print(f"run {answer.run_id}  [dim](why is 1 first? /trace, /open N)[/dim]")

    def print_thumbnails(self, answer: Answer) -> None:
        from agent.cli.thumbs import can_draw, thumbnail_strip

        if not can_draw(self.console):
            if not self.thumbs_note_shown:
                self.err.print("[dim](no colour on this terminal: thumbnails are off; /open N prints a path)[/dim]")
                self.thumbs_note_shown = True
            return
        strip = thumbnail_strip(answer.rows, self.console.width)
        if strip is not None:
            self.console.print(strip)

    def show(self, k: int) -> None:
        if not self.last:
            self.hint("Nothing to show yet: type a description first.")
            return
        if not 1 <= k <= MAX_K:
            self.hint(f"show N takes 1 to {MAX_K}.")
            return
        if k != self.turn.k:
            self.err.print(f"[dim]k = {k} from now on (/k N to change)[/dim]")
        self.set_k(k)
        self.ask(self.last.question or self.last.input or "")

    def set_k(self, k: int) -> None:
        self.turn = self.turn.with_(k=k, pool=self.turn.pool)  # the pool grows to k, never shrinks

    # -- answered from the trace ---------------------------------------------------------------
    def last_run(self) -> Optional[dict]:
        if not self.last or self.assistant.traces is None:
            return None
        return self.assistant.traces.get_run(self.last.run_id)

    def _tool_errors(self, run_id: Optional[str]) -> list[str]:
        if not run_id or self.assistant.traces is None:
            return []
        try:
            run = self.assistant.traces.get_run(run_id)
        except KeyError:
            return []
        found = read_events(run).candidates
        return [str(e) for e in (found.errors if found else [])]

    def why(self, rank: int) -> None:
        from agent.core.audit import explain_rank

        run = self.last_run()
        if run is None:
            self.hint("Ask something first: 'why' explains the last answer.")
            return
        self.console.print(explain_rank(run, rank))

    # -- slash commands ------------------------------------------------------------------------
    def command(self, text: str) -> bool:
        name, _, arg = text[1:].partition(" ")
        name, arg = name.lower(), arg.strip()
        if name in ("quit", "exit", "q"):
            return False
        if name in ("help", "h", "?"):
            self.console.print(HELP)
        elif name == "k":
            if not arg.isdigit() or not 1 <= int(arg) <= MAX_K:
                self.hint(f"Usage: /k N (1 to {MAX_K}); now {self.turn.k}.")
            else:
                self.set_k(int(arg))
                self.console.print(f"k = {self.turn.k}")
        elif name == "llm":
            self.switch_llm(arg)
        elif name == "trace":
            from agent.core.audit import run_view

            run = self.last_run()
            if run is None:
                self.hint("No run yet in this session.")
            else:
                self.console.print(run_view(run, short=True))
                self.console.print(f"[dim]full record: kger trace show {run['id'][:12]}[/dim]")
        elif name == "open":
            rows = self.last.rows if self.last else []
            if not arg.isdigit() or not 1 <= int(arg) <= len(rows):
                self.hint(f"Usage: /open N, with N from 1 to {len(rows)}." if rows else "The last answer has no image.")
            else:
                self.console.print(literal(rows[int(arg) - 1].path, limit=None), soft_wrap=True)
        else:
            self.hint(f"Unknown command /{name}; type /help for the list.")
        return True

    def switch_llm(self, llm: str) -> None:
        from agent.core.turn import LLMS, check_llm

        try:
            check_llm(llm)
        except ValueError:
            self.hint(f"Usage: /llm {'|'.join(LLMS)}; now {self.turn.llm or self.assistant.llm}.")
            return
        announce_llm(llm, self.err, notice=not self.announced_remote)
        self.announced_remote = self.announced_remote or llm == "gemini"
        self.turn = self.turn.with_(llm=llm)  # its planner and judge are made once (Assistant.models_for)
        self.console.print(f"llm = {llm}")

    # -- the loop ------------------------------------------------------------------------------
    def loop(self, read: Callable[[str], str] = input) -> None:
        """Read lines until /quit or Ctrl-D; Ctrl-C drops the line being typed or cancels the running turn."""
        while True:
            try:
                line = read(PROMPT)
            except EOFError:
                self.console.print()
                return
            except KeyboardInterrupt:
                self.console.print()
                continue
            try:
                if not self.handle(line):
                    return
            except KeyboardInterrupt:  # the turn's records are whole and it is stored as cancelled (agent/cancel.py)
                self.err.print("[yellow]Cancelled.[/yellow]")
            except Exception as e:  # one failed turn must not end the conversation
                if os.environ.get("KGER_DEBUG"):
                    raise
                msg = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
                self.err.print(literal(f"error: {(msg.splitlines() or [type(e).__name__])[0]}", style="red"))


def chat(
    llm: LlmOpt = "offline",
    k: KOpt = 5,
    store: StoreOpt = "default",
    chroma_url: ChromaUrlOpt = None,
    home: HomeOpt = None,
    strict: StrictOpt = False,
    rounds: RoundsOpt = DEFAULT_ROUNDS,
    judge: JudgeOpt = "image",
):
    """Talk to the assistant: describe what you look for, refine it, ask why. /help lists the commands."""
    start(home, llm, k)  # announces a remote LLM once, before anything is sent; k within the limit
    assistant = open_assistant(store, chroma_url, llm, k, judge=judge)
    session = ChatSession(assistant, announced_remote=llm == "gemini", strict=strict, rounds=rounds)
    save_history = setup_readline()
    err_console.print(literal(f"kger chat: store '{store}', llm {llm}, k {k}. Describe what you look for; /help for "
                           "more, Ctrl-D to quit."))
    try:
        session.loop()
    finally:
        if save_history:
            save_history()
    if session.strict_failures:
        err_console.print(f"Error: --strict: {session.strict_failures} turns fell back to offline (said above)")
        raise typer.Exit(1)

"""What every command shares: options, consoles, the exception-to-message table, the store and assistant openers."""
from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Annotated, Any, Literal, Optional

import typer
from rich.console import Console
from typer.core import TyperGroup
from typer.exceptions import TyperException

from agent.core.limits import MAX_K
from agent.core.render import line, literal, plural
from retrieval.errors import InputError

out_console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)

HomeOpt = Annotated[
    Optional[Path],
    typer.Option("--home", envvar="KGER_HOME", help="Folder for stores, bundles, traces and caches \\[default: ~/.kger]."),
]
StoreOpt = Annotated[str, typer.Option("--store", envvar="KGER_STORE", help="Name of the image store (gallery) to use.")]
ChromaUrlOpt = Annotated[
    Optional[str],
    typer.Option("--chroma-url", envvar="KGER_CHROMA_URL", help="Use a Chroma server (http://HOST:PORT) instead of the embedded store."),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout, nothing else there.")]
KOpt = Annotated[int, typer.Option("--k", "-k", min=1, help=f"How many images to return (at most {MAX_K}).")]
LlmOpt = Annotated[Literal["offline", "gemini"], typer.Option(
    "--llm", envvar="KGER_LLM",
    help="offline: nothing leaves this machine; gemini: the judge and planner call Google's API.")]
PoolOpt = Annotated[int, typer.Option("--pool", min=1, help=f"Candidates retrieved and judged per query (at most {MAX_K}).")]
ImagePoolOpt = Annotated[str, typer.Option(
    "--image-pool", help="How the image tower pools its feature map: lr_split (side-aware, default) | avg (baseline).")]
OldPoolOpt = Annotated[Optional[str], typer.Option("--pool", hidden=True, help="Deprecated spelling of --image-pool.")]
ConcurrencyOpt = Annotated[int, typer.Option(
    "--concurrency", min=1, max=64, help="Judge calls in flight at once (Gemini; the offline judge ignores it).")]
JudgeOpt = Annotated[Literal["image", "list"], typer.Option(
    "--judge", help="Gemini judge: 'image' (one request per image, KGER's way, default) or 'list' (one request "
                    "per round with every new image).")]
RoundsOpt = Annotated[int, typer.Option(
    "--rounds", min=0, help="Extra search rounds the corrective loop may make when the evidence is weak "
                            "(0: one pass, plan -> search -> judge -> fuse).")]
StrictOpt = Annotated[bool, typer.Option(
    "--strict", envvar="KGER_STRICT", help="For scripts: exit 1 (batch, eval: fail that query) when the offline "
    "planner or judge stands in for --llm gemini, with one line saying what fell back and why.")]

REMOTE_NOTICE = ("[bold yellow]Gemini selected:[/bold yellow] the description and the candidate images (cropped, "
                 "downscaled, metadata stripped) are sent to Google's API. Use --llm offline to keep everything local.")
NO_KEY_NOTICE = "GOOGLE_API_KEY is not set (nor GEMINI_API_KEY): the planner and judge fall back to offline."
SHOWN = 20  # entries listed on stderr before "... and N more"; --json lists all
ERROR_CHARS = 1000  # an error line that quotes a pasted document is cut on screen


class BatchError(InputError):
    """A user-facing failure of batch or eval (the CLI prints its one line and exits 1)."""


def _user_errors() -> tuple[type[BaseException], ...]:
    """'Bad input or state': every kger error, and an OS error about a path the user named. A KeyError or
    ValueError from our own code is a bug and keeps its traceback. Imported lazily so --help stays fast."""
    from retrieval.errors import KgerError

    return (KgerError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError)


class _NoticeHandler(logging.Handler):
    """kger's own notices about its state (a damaged file moved aside, a read-only home): one yellow line on
    stderr, as data (a path may hold brackets)."""

    def emit(self, record: logging.LogRecord) -> None:
        err_console.print(literal(record.getMessage(), style="yellow", limit=ERROR_CHARS), soft_wrap=True)


def show_notices() -> None:
    notices = logging.getLogger("kger.store")
    if not any(isinstance(h, _NoticeHandler) for h in notices.handlers):
        notices.addHandler(_NoticeHandler(logging.WARNING))
        notices.propagate = False


class KgerGroup(TyperGroup):
    """Applies the exception-to-message table once, for every command (and for CliRunner in tests)."""

    def invoke(self, ctx: typer.Context) -> Any:
        """A user error is one line on stderr and exit code 1, never a traceback (KGER_DEBUG=1 shows it); any
        other exception is a bug: one line saying so, the traceback in a crash file under the home folder."""
        from agent import privacy

        show_notices()
        notice = privacy.enforce()
        if notice:
            err_console.print(notice, markup=False)
        try:
            return super().invoke(ctx)
        except (TyperException, typer.Exit, typer.Abort):  # usage errors (exit 2) and deliberate exits
            raise
        except KeyboardInterrupt:
            err_console.print("Interrupted.")
            raise typer.Exit(130) from None
        except Exception as e:
            if os.environ.get("KGER_DEBUG"):
                raise
            e = _no_space(e) or e  # a full disk, whichever layer noticed it: one line naming the place
            if not isinstance(e, _user_errors()):  # a bug: say so, keep the traceback in a crash file
                err_console.print(f"Internal error (a bug in kger, not your input): {type(e).__name__}. "
                                  f"{crash_report(e, ctx.invoked_subcommand)}", markup=False, soft_wrap=True)
                raise typer.Exit(1) from None
            msg = str(e)
            msg = msg.splitlines()[0] if msg else type(e).__name__
            if getattr(e, "path", None) and str(e.path) not in msg:  # ImageLoadError keeps the path apart
                msg = f"{e.path}: {msg}"
            err_console.print(literal(f"Error: {msg}", limit=ERROR_CHARS), soft_wrap=True)
            raise typer.Exit(1) from None


def _no_space(e: BaseException):
    """store.diskfull's NoSpaceError for a full disk (ENOSPC, SQLITE_FULL, Chroma's wording), else None."""
    from store.diskfull import no_space_error
    from store.paths import kger_home

    try:
        where = kger_home()
    except InputError:
        where = Path.cwd()
    return no_space_error(e, where)


def crash_report(e: BaseException, command: Optional[str] = None) -> str:
    """Write the traceback, secrets scrubbed, to HOME/crashes/crash-<time>.txt; the sentence naming the file."""
    import traceback
    from datetime import datetime

    from store.paths import kger_home
    from store.redact import scrub_text  # both Gemini keys (GOOGLE_API_KEY, GEMINI_API_KEY) and ?key= in URLs

    text = scrub_text("".join(traceback.format_exception(type(e), e, e.__traceback__)))
    try:
        folder = kger_home() / "crashes"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"crash-{datetime.now().strftime('%Y%m%d-%H%M%S-%f')}.txt"
        path.write_text(f"kger {command or ''} crashed\n\n{text}", encoding="utf-8")
    except (OSError, InputError) as write_error:  # InputError: an empty KGER_HOME
        return f"The traceback could not be saved ({write_error}); rerun with KGER_DEBUG=1 to see it."
    return f"Traceback saved to {path} (please include it in a bug report; KGER_DEBUG=1 prints it)."


def set_home(home: Optional[Path]) -> Path:
    """Make --home the one place every module reads (store.paths.kger_home reads KGER_HOME)."""
    from agent.cli.checks import home_dir

    if home is not None and not str(home).strip():  # KGER_HOME=" " reaches here as --home
        raise InputError("--home (or KGER_HOME) is blank: give it a folder, or unset KGER_HOME to use ~/.kger")
    if home is not None:
        os.environ["KGER_HOME"] = str(home_dir(Path(home).expanduser()).resolve())
    from store.paths import kger_home

    return home_dir(kger_home(), "--home" if home is not None else "KGER_HOME (or ~/.kger)")


def open_gallery(store: str, url: Optional[str], create: bool = False):
    from store.gallery import Gallery

    return Gallery.open(store, url=url, create=create)


def print_json(doc: Any) -> None:
    sys.stdout.write(json.dumps(doc, indent=2, ensure_ascii=False, default=str) + "\n")
    sys.stdout.flush()


def progress(disable: bool = False):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        TimeRemainingColumn(), console=err_console, transient=True, disable=disable,
    )


def check_llm(llm: str) -> str:
    """--llm: a usage error (exit 2) unless agent.core.turn.check_llm accepts it; Gemini is announced once."""
    from agent.core.turn import check_llm as valid_llm

    try:
        valid_llm(llm)
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None
    announce_llm(llm)
    return llm


def announce_llm(llm: str, console: Console = err_console, notice: bool = True) -> None:
    """Before anything is sent to Gemini: the one notice saying what leaves the machine (unless `notice` is
    False: already shown in this session), and a note when there is no key (both then fall back)."""
    if llm != "gemini":
        return
    if notice:
        console.print(REMOTE_NOTICE)
    from agent.llm import api_key_from_env

    if not api_key_from_env():
        console.print(f"[yellow]{NO_KEY_NOTICE}[/yellow]")


def start(home: Optional[Path], llm: Optional[str] = None, k: Optional[int] = None,
          pool: Optional[int] = None):
    """The opening every command that answers questions shares, before anything loads: --home, then --llm
    (checked, Gemini announced), then k and pool against agent/core/limits.py: the TurnRequest those make
    (a LimitError names the bound: one line, exit 1)."""
    set_home(home)
    if llm is not None:
        check_llm(llm)
    if k is None:
        return None
    from agent.core.turn import TurnRequest

    return TurnRequest(k=k, pool=pool, llm=llm)


def image_pool(image_pool: str, old_pool: Optional[str]) -> str:
    """--image-pool, or the deprecated --pool of `bundle init` / `train` (one line says so): elsewhere --pool
    is the number of candidates per query, so the pooling option was renamed."""
    if old_pool is None:
        return image_pool
    err_console.print("[yellow]deprecated:[/yellow] --pool here is now --image-pool (--pool is the candidate "
                      "count of ask, batch and eval)")
    return old_pool


def open_assistant(store: str, chroma_url: Optional[str], llm: str, k: int, *, pool: Optional[int] = None,
                   concurrency: Optional[int] = None, judge: str = "image"):
    """The store's Assistant; `concurrency` sets the Gemini judge's calls in flight (batch and eval); `judge`
    'list' makes the Gemini judge listwise (one request per round, agent/judges/listwise.py)."""
    from agent.opening import prefetch_bundle

    prefetch_bundle(store, chroma_url)  # first: the bundle loads while LangGraph imports
    from agent.assistant import Assistant

    kw: dict[str, Any] = {} if pool is None else {"pool": pool}  # the session's default pool (pool_for: >= k)
    if llm == "gemini" and (concurrency is not None or judge != "image"):
        from agent.assistant import make_planner_and_judge

        kw["planner"], kw["judge"] = make_planner_and_judge("gemini", judge_concurrency=concurrency or 4,
                                                            judge_mode=judge)
    with err_console.status("Loading bundle and store..."):
        return Assistant.open(store, url=chroma_url, llm=llm, k=k, **kw)


def report_skipped(what: str, skipped, unit: str) -> None:
    """Bad entries of an input file on stderr, the first SHOWN of them."""
    for s in skipped[:SHOWN]:
        err_console.print(line(f"[yellow]{what} {unit} {s.line}[/yellow]: ", literal(s.reason), ", skipped"))
    if len(skipped) > SHOWN:
        err_console.print(f"... and {plural(len(skipped) - SHOWN, f'more {what} {unit}')} skipped (all listed in --json)")

"""The `kger` command line: one module per command group, joined here."""
from __future__ import annotations

import gc

import typer

from typing import Annotated, Optional

from agent.cli import ask, batch, bundle, chat, demo, gallery, serve, trace, train
from agent.cli import eval as eval_cmd
from agent.cli.common import KgerGroup
from agent.core.version import kger_version

app = typer.Typer(
    name="kger",
    cls=KgerGroup,
    help="Find ENT endoscopy images from a clinical description, and explain the choice.",
    rich_markup_mode="rich",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,  # an API key in a local variable must never reach the screen
    add_completion=True,  # --install-completion / --show-completion (bash, zsh, fish, PowerShell)
)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"kger {kger_version()}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[Optional[bool], typer.Option(
        "--version", callback=_print_version, is_eager=True, help="Print the version and exit.")] = None,
) -> None:
    """Find ENT endoscopy images from a clinical description, and explain the choice.

    Defaults from the environment: KGER_HOME (folder), KGER_STORE (store name), KGER_LLM (offline | gemini).
    """
app.add_typer(bundle.app, name="bundle")
app.command("index")(gallery.index)
app.command("search")(gallery.search)
app.command("ask")(ask.ask)
app.command("chat")(chat.chat)
app.add_typer(trace.app, name="trace")
app.command("batch")(batch.batch)
app.command("eval")(eval_cmd.evaluate)
app.command("train")(train.train)
app.command("serve")(serve.serve)
app.command("demo")(demo.demo)


def main() -> None:
    try:
        app(prog_name="kger")  # the same name in usage lines and completion scripts however kger was started
    finally:
        # The interpreter's last collections would walk every object Chroma, pydantic and LangGraph built at
        # import (~0.1 s of a one-shot command); kger closes what it holds itself, so exit skips that walk.
        gc.freeze()

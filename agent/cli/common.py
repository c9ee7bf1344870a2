"""What every command shares: options, consoles, the exception-to-message table, the store opener."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from typer.core import TyperGroup
from typer.exceptions import TyperException

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
KOpt = Annotated[int, typer.Option("--k", "-k", min=1, max=1000, help="How many images to return.")]


def _user_errors() -> tuple[type[BaseException], ...]:
    """Exception types that mean 'bad input or state', imported lazily so --help stays fast."""
    from retrieval.bundle import BundleError
    from retrieval.labels import LabelsError
    from retrieval.preprocess import ImageLoadError
    from retrieval.weights import WeightsUnavailable
    from store.gallery import StoreError

    errors: tuple[type[BaseException], ...] = ()
    if "training.train" in sys.modules:  # only `kger train` imports the training module
        errors = (sys.modules["training.train"].TrainError,)
    return errors + (BundleError, LabelsError, ImageLoadError, WeightsUnavailable, StoreError, FileNotFoundError,
            NotADirectoryError, PermissionError, KeyError, ValueError)


class KgerGroup(TyperGroup):
    """Applies the exception-to-message table once, for every command (and for CliRunner in tests)."""

    def invoke(self, ctx: typer.Context) -> Any:
        """A user error is one line on stderr and exit code 1, never a traceback (KGER_DEBUG=1 shows it)."""
        try:
            return super().invoke(ctx)
        except (TyperException, typer.Exit, typer.Abort):  # usage errors (exit 2) and deliberate exits
            raise
        except KeyboardInterrupt:
            err_console.print("Interrupted.")
            raise typer.Exit(130) from None
        except Exception as e:
            if os.environ.get("KGER_DEBUG") or not isinstance(e, _user_errors()):
                raise
            msg = str(e.args[0] if isinstance(e, KeyError) and e.args else e)
            msg = msg.splitlines()[0] if msg else type(e).__name__
            if getattr(e, "path", None) and str(e.path) not in msg:  # ImageLoadError keeps the path apart
                msg = f"{e.path}: {msg}"
            err_console.print(f"Error: {msg}", markup=False, soft_wrap=True)
            raise typer.Exit(1) from None


def kger_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("kger")
    except PackageNotFoundError:  # running from a checkout that was never installed
        return "0+unknown"


def set_home(home: Optional[Path]) -> Path:
    """Make --home the one place every module reads (store.paths.kger_home reads KGER_HOME)."""
    if home is not None:
        os.environ["KGER_HOME"] = str(Path(home).expanduser().resolve())
    from store.paths import kger_home

    return kger_home()


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

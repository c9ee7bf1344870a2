"""Where kger keeps its state: one home folder (env KGER_HOME, default ~/.kger).

Nothing here creates folders: only callers that write do, so a read-only command never leaves
an empty home behind.
"""
from __future__ import annotations

import os
from pathlib import Path

DEFAULT_HOME = Path("~/.kger")  # where every clone and every install meets unless KGER_HOME says otherwise


def kger_home() -> Path:
    """The home folder: KGER_HOME when set (tests point it at a tmp dir), else ~/.kger.

    Set but empty (a script's unset variable: `KGER_HOME=$HOEM kger ...`) is an error, not ~/.kger: the
    script would otherwise read and write the real home without a word."""
    value = os.environ.get("KGER_HOME")
    if value is not None and not value.strip():
        from retrieval.errors import InputError

        raise InputError("KGER_HOME is set but empty: give it a folder, or unset it to use ~/.kger")
    return Path(value).expanduser() if value else DEFAULT_HOME.expanduser()


def _home(home: Path | None) -> Path:
    return Path(home).expanduser() if home is not None else kger_home()


def stores_dir(home: Path | None = None) -> Path:
    """One sub-folder per named store (each its own Chroma path)."""
    return _home(home) / "stores"


def traces_db_path(home: Path | None = None) -> Path:
    return _home(home) / "traces.db"


def cache_db_path(home: Path | None = None) -> Path:
    return _home(home) / "cache.db"


def checkpoints_db_path(home: Path | None = None) -> Path:
    """LangGraph's SQLite checkpointer; kept apart from traces so either can be deleted alone."""
    return _home(home) / "checkpoints.db"


def bundles_dir(home: Path | None = None) -> Path:
    return _home(home) / "bundles"

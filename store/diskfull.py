"""A full disk, told as what it is: "no space left on <path>", one line, exit 1.

Without this a full disk surfaced as whatever layer noticed first: SQLite's "database or disk is full", an
OSError (ENOSPC) from a frame JPEG or a results line, or Chroma's InternalError, which the store turned into
"its vector index may be damaged: remove it" (wrong, and dangerous advice: the databases were intact). Every
kger write is a transaction or an atomic replace, so after freeing space a rerun completes.
"""
from __future__ import annotations

import errno
import sqlite3
from pathlib import Path
from typing import Iterator, Optional

from retrieval.errors import KgerError

_MESSAGES = ("no space left on device", "database or disk is full", "disk quota exceeded")


class NoSpaceError(KgerError):
    """The disk (or quota) is full: nothing is damaged; free space and rerun."""

    def __init__(self, where: str | Path):
        self.where = str(where)
        super().__init__(f"no space left on {self.where}: free some space there and rerun the same command "
                         "(what was finished is kept)")


def _chain(e: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        yield e
        e = e.__cause__ or e.__context__


def is_no_space(e: BaseException) -> bool:
    """ENOSPC/EDQUOT, SQLite's SQLITE_FULL, or an error (Chroma's) whose text says so, anywhere in the chain."""
    for x in _chain(e):
        if isinstance(x, NoSpaceError):
            return True
        if isinstance(x, OSError) and x.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if isinstance(x, sqlite3.Error) and getattr(x, "sqlite_errorname", "") == "SQLITE_FULL":
            return True
        if any(m in str(x).lower() for m in _MESSAGES):
            return True
    return False


def no_space_error(e: BaseException, default: str | Path) -> Optional[NoSpaceError]:
    """The one-line error for a full disk (naming the file an OSError names, else `default`), or None."""
    if not is_no_space(e):
        return None
    for x in _chain(e):
        if isinstance(x, NoSpaceError):
            return x
        if isinstance(x, OSError) and x.filename:
            return NoSpaceError(x.filename)
    return NoSpaceError(default)

"""Which files a command reads and writes must all differ: `kger batch q.txt --out q.txt` would append answers
to the queries, `--submission` = `--out` would wipe the results. Checked before anything is written.

Two names are the same file when they resolve to one path (symbolic links followed, `..` removed) or, for
files that exist, when `os.path.samefile` says so (a hard link, a bind mount, a case-insensitive filesystem).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

from retrieval.errors import InputError


def _same(a: Path, b: Path) -> bool:
    if a.resolve() == b.resolve():
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist yet: only the resolved names could collide
        return False


def first_collision(named: dict[str, Optional[Path]]) -> Optional[tuple[str, str]]:
    """The first pair of flags (in the given order) naming one file; None when all differ. None paths and
    '-' (stdin) are ignored."""
    given = [(flag, Path(p)) for flag, p in named.items() if p is not None and str(p) != "-"]
    for i, (flag_a, a) in enumerate(given):
        for flag_b, b in given[i + 1:]:
            if _same(a, b):
                return flag_a, flag_b
    return None


def require_distinct(named: dict[str, Optional[Path]]) -> None:
    """InputError (one line, exit 1) when two of the files are one: nothing may be written then."""
    pair = first_collision(named)
    if pair is not None:
        a, b = pair
        raise InputError(f"{a} and {b} name the same file ({named[b]}): give each its own file, "
                         "or one would overwrite the other")

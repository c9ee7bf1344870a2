"""Is the process that started a run still alive? A run left 'running' by a killed process (SIGKILL of `serve`
during /ask, a power cut) would otherwise say 'running' forever.

Each run records its writer: host name, pid and the process's start time (Linux: /proc/PID/stat field 22,
in clock ticks since boot), so a pid reused by a later process is not mistaken for the writer. A run written
on another host, or by an unknown writer (a database from before this was recorded), is never judged: a
concurrent kger on another machine sharing the folder must not have its runs marked.
"""
from __future__ import annotations

import os
import socket
from functools import lru_cache
from typing import Optional


def _proc_stat(pid: int) -> Optional[list[str]]:
    """The fields of /proc/PID/stat after the command name (which may hold spaces), or None."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            text = f.read()
    except OSError:
        return None
    return text[text.rfind(")") + 2:].split()


def start_ticks(pid: int) -> Optional[str]:
    """The process's start time as /proc states it (None where there is no /proc)."""
    fields = _proc_stat(pid)
    return fields[19] if fields and len(fields) > 19 else None  # field 22 of the whole line


@lru_cache(maxsize=1)
def host() -> str:
    return socket.gethostname()


def me() -> tuple[int, str, Optional[str]]:
    """(pid, host, start) of this process, as recorded with each run it starts."""
    pid = os.getpid()
    return pid, host(), start_ticks(pid)


def is_dead(pid: Optional[int], on_host: Optional[str], start: Optional[str]) -> bool:
    """True only when the writer is known to be gone: same host, and no such pid, a zombie, or another
    process under that pid (its start time differs). Unknown or elsewhere: False (leave the run alone)."""
    if pid is None or on_host != host():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        pass
    except (OverflowError, ValueError):
        return False
    fields = _proc_stat(int(pid))
    if fields is None:
        return False  # no /proc: kill(0) said it exists
    if fields[0] in ("Z", "X"):  # killed, not reaped yet
        return True
    return start is not None and len(fields) > 19 and fields[19] != start

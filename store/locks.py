"""A cross-process shared/exclusive lock on one embedded store, held for as long as it is open.

Why: each process that opens a Chroma path keeps its own in-memory HNSW index and writes it back to the
same files. With chromadb 1.5.9 here, four processes upserting into one path at once left a store that
segfaulted on the next open, and serialising only the upsert calls still left ids the index could not
find. Concurrent readers were fine. So: many readers, or one writer, per store, for the whole time a
process has it open. (A Chroma server is one process and needs none of this.)

flock is not pinned to a thread (unlike filelock's ReadWriteLock), so a gallery opened on one thread may
be closed on another, as LangGraph's thread pools do. Inside one process Chroma shares one client per
path, so galleries of one process share the lock (counted) instead of competing for it.
"""
from __future__ import annotations

import errno
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows (not a kger target): no cross-process locking there
    fcntl = None  # type: ignore[assignment]


class LockTimeout(TimeoutError):
    """Another process holds the store in a conflicting mode."""


@dataclass
class _Held:
    fd: int
    exclusive: bool
    count: int


_held: dict[str, _Held] = {}
_mutex = threading.Lock()
_POLL_S = 0.05


def _try_flock(fd: int, exclusive: bool) -> bool:
    if fcntl is None:
        return True
    try:
        fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


def _open_lock_file(path: str, exclusive: bool) -> int | None:
    """The lock file's descriptor. A reader whose home is read-only opens it read-only (flock needs no write
    access), and where it cannot exist at all gets None: on a read-only filesystem no writer can interfere.
    A writer there gets the OSError (the caller says "read-only" in one line)."""
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        if exclusive or e.errno not in (errno.EROFS, errno.EACCES, errno.EPERM):
            raise
    try:
        return os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None


class StoreLock:
    """``acquire()`` waits up to ``timeout`` seconds, then raises LockTimeout; ``release()`` may run on any thread."""

    def __init__(self, path: Path, *, exclusive: bool, timeout: float):
        self.path = Path(path)
        self.key = str(self.path.resolve())
        self.exclusive = exclusive
        self.timeout = timeout
        self._acquired = False

    def acquire(self) -> None:
        deadline = time.monotonic() + max(0.0, self.timeout)
        fd = -1
        while True:
            with _mutex:
                held = _held.get(self.key)
                if held is not None:
                    if self.exclusive and not held.exclusive:
                        raise RuntimeError(
                            f"this process already has {self.path.parent} open read-only; close it before writing"
                        )
                    held.count += 1
                    self._acquired = True
                    if fd >= 0:
                        os.close(fd)
                    return
                if fd < 0:
                    fd = _open_lock_file(self.key, self.exclusive)
                if fd is None:  # a reader on a read-only filesystem: nobody can write there, no lock needed
                    _held[self.key] = _Held(fd=-1, exclusive=False, count=1)
                    self._acquired = True
                    return
                if _try_flock(fd, self.exclusive):
                    _held[self.key] = _Held(fd=fd, exclusive=self.exclusive, count=1)
                    self._acquired = True
                    return
            if time.monotonic() >= deadline:
                os.close(fd)
                raise LockTimeout(str(self.path))
            time.sleep(_POLL_S)

    def release(self) -> None:
        if not self._acquired:
            return
        self._acquired = False
        with _mutex:
            held = _held[self.key]
            held.count -= 1
            if held.count == 0:
                del _held[self.key]
                if held.fd >= 0:
                    os.close(held.fd)  # closing the descriptor drops the flock

    def __enter__(self) -> "StoreLock":
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

"""Opening an embedded store: its lock, a read-only filesystem (a shared mount, a locked-down home), damage.

Chroma's embedded client writes when it opens a path (its SQLite migrations and WAL), so it cannot open a
read-only one at all. A reader there gets a private temporary copy of the store's files instead, removed when
the store is closed; the user's files are never touched. Writers get a one-line "read-only" error instead.
"""
from __future__ import annotations

import errno
import logging
import os
import shutil
import tempfile
from pathlib import Path

from retrieval.errors import KgerError
from store.errors import INDEX_HINT, StoreError
from store.locks import LockTimeout, StoreLock

log = logging.getLogger("kger.store")

READ_ONLY_ERRNOS = (errno.EROFS, errno.EACCES, errno.EPERM)


def is_read_only(path: Path) -> bool:
    """True where this process cannot write into the folder `path` (a read-only mount, or no permission)."""
    try:
        if os.statvfs(path).f_flag & os.ST_RDONLY:
            return True
    except OSError:
        pass
    return not os.access(path, os.W_OK)


def readable_copy(path: Path, what: str) -> tuple[Path, tempfile.TemporaryDirectory | None]:
    """`path` itself where it is writable; else a temporary copy of the folder (and the object that removes
    it: keep it alive while the copy is in use, call `cleanup()` when done)."""
    if not is_read_only(path):
        return path, None
    scratch = tempfile.TemporaryDirectory(prefix="kger-readonly-")
    copy = Path(scratch.name) / path.name
    shutil.copytree(path, copy)
    log.info("%s is on a read-only filesystem: reading a temporary copy", what)
    return copy, scratch


def lock_store(name: str, root: Path, writable: bool, timeout: float) -> StoreLock:
    lock = StoreLock(root / "store.lock", exclusive=writable, timeout=timeout)
    try:
        lock.acquire()
    except LockTimeout:
        doing = "in use by another process" if writable else "being indexed by another process"
        raise StoreError(
            f"Store '{name}' is {doing}: wait for it to finish, or share it through a Chroma server "
            f"(`chroma run --path {root / 'chroma'}`, then set KGER_CHROMA_URL)"
        ) from None
    except OSError as e:  # a writer on a read-only filesystem
        if e.errno not in READ_ONLY_ERRNOS:
            raise
        raise unopenable(name, root, e) from None
    return lock


def unopenable(name: str, root: Path, e: BaseException) -> BaseException:
    """A store that Chroma cannot open: read-only (to write) or damaged files, in one line; else `e` itself."""
    if not isinstance(e, Exception) or isinstance(e, KgerError):
        return e
    from store.diskfull import NoSpaceError, is_no_space

    if is_no_space(e):  # a full disk is not damage: moving the store aside would be the wrong advice
        return NoSpaceError(root)
    first = (str(e).splitlines() or [type(e).__name__])[0]
    if "readonly" in first or isinstance(e, OSError) and e.errno in READ_ONLY_ERRNOS:
        return StoreError(f"Store '{name}' at {root} is read-only ({first}): index into a writable --home")
    return StoreError(f"Store '{name}' at {root} cannot be opened ({type(e).__name__}: {first}); its files may be "
                      f"damaged: move {root} aside and run `{INDEX_HINT.format(name=name)}`")

"""Ctrl-C during a turn: the turn stops, its records stay whole, the conversation goes on (issue 23 item 5).

Why a worker thread: a KeyboardInterrupt is raised in the main thread at whatever bytecode it runs, so one that
lands inside a SQLite write of the checkpointer or of traces.db tears it ("cannot rollback - no transaction is
active", msgpack's "ext_hook failed"), and the run was then stored as an error. `run_cancellable` runs the
turn in a worker thread, which a signal never interrupts; the main thread only waits. Ctrl-C sets the turn's
token; the worker stops at its next step (`check`, called between the graph's steps, and before any checkpoint
write by `guard_writes`) and records the run as 'cancelled'. A worker stuck in a remote call is waited for a
moment, then left behind, the token keeping it from writing anything when the call returns. Either way the
run ends 'cancelled' and the thread is put back as it was before the turn, so a follow-up never refers to an
answer that was not shown.
"""
from __future__ import annotations

import signal
import threading
from contextvars import ContextVar, copy_context
from typing import Any, Callable, Optional, TypeVar

T = TypeVar("T")

GRACE_S = 2.0  # how long Ctrl-C waits for the turn to stop at a step before leaving it behind


class TurnCancelled(KeyboardInterrupt):
    """The turn was cancelled (Ctrl-C): a KeyboardInterrupt, so whatever catches that catches this too."""


class Token:
    """One turn's cancel flag, with what `Assistant.ask` noted to undo it: the run it records, the thread and
    the thread's checkpoint before the turn."""

    def __init__(self):
        self.event = threading.Event()
        self.run_id: Optional[str] = None
        self.thread_id: Optional[str] = None
        self.before: Any = None
        self.llm: Optional[str] = None
        self.abandoned = False  # the worker had not stopped when Ctrl-C's wait ended (a remote call hangs)

    @property
    def cancelled(self) -> bool:
        return self.event.is_set()


_current: ContextVar[Optional[Token]] = ContextVar("kger_turn_token", default=None)


def current() -> Optional[Token]:
    """The token of the turn this code runs for (LangGraph's worker threads copy the context), if any."""
    return _current.get()


def check() -> None:
    """Raise TurnCancelled if this turn was cancelled."""
    token = _current.get()
    if token is not None and token.cancelled:
        raise TurnCancelled()


def guard_writes(saver: Any) -> Any:
    """The checkpointer, refusing writes for a cancelled turn: a turn left behind in a remote call must not
    write its step into the thread after the next turn has begun."""
    for name in ("put", "put_writes"):
        method = getattr(saver, name)
        if getattr(method, "_kger_guarded", False):
            continue

        def guarded(*args, _method=method, **kw):
            check()
            return _method(*args, **kw)

        guarded._kger_guarded = True  # type: ignore[attr-defined]
        setattr(saver, name, guarded)
    return saver


def shielded(fn: Callable[[], T]) -> T:
    """`fn()` with Ctrl-C ignored (main thread only): one Ctrl-C is enough, more must not tear what undoes it."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        return fn()
    finally:
        signal.signal(signal.SIGINT, previous)


def run_cancellable(fn: Callable[[], T], on_cancel: Callable[[Token], None], grace: float = GRACE_S,
                    token: Optional[Token] = None) -> T:
    """`fn()` in a worker thread; Ctrl-C in the main thread cancels it and raises TurnCancelled here.

    The main thread waits on an event (which a signal interrupts); on Ctrl-C it sets the token, waits up to
    `grace` for the worker to stop at a step (further Ctrl-Cs are ignored meanwhile), then calls
    `on_cancel(token)` (the run marked cancelled, the thread put back as it was before the turn, whether the
    worker stopped, finished just then, or is left behind in a remote call)."""
    token, done, box = token or Token(), threading.Event(), {}

    def work() -> None:
        _current.set(token)
        try:
            box["value"] = fn()
        except BaseException as e:  # handed to the main thread, which raises it
            box["error"] = e
        finally:
            done.set()

    ctx = copy_context()
    threading.Thread(target=ctx.run, args=(work,), name="kger-turn", daemon=True).start()
    try:
        while not done.wait(0.1):
            pass
        if "error" in box:
            raise box["error"]
        return box["value"]  # inside the try: a Ctrl-C up to here cancels a turn that just finished, too
    except KeyboardInterrupt:
        token.event.set()

        def stop() -> None:
            token.abandoned = not done.wait(grace)
            on_cancel(token)

        shielded(stop)
        raise TurnCancelled() from None

"""One turn's request: what a caller asks of `Assistant.ask`, typed and checked once.

The session (`Assistant`) holds what lives across turns (the store, the models, the checkpointer); a turn's
k, pool, LLM and thread come with the turn, so concurrent callers (the server's requests, a chat that changed
k) never change a shared object to ask differently.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional

from agent.core.limits import DEFAULT_ROUNDS, check_k, check_rounds, pool_for
from retrieval.errors import InputError

KINDS = ("ask", "chat", "batch", "eval")
LLMS = ("offline", "gemini")


def check_llm(llm: str) -> str:
    """The one check of an --llm / /llm value; the InputError names the choices."""
    if llm not in LLMS:
        raise InputError(f"--llm must be {' or '.join(LLMS)}, not {llm!r}")
    return llm


@dataclass(frozen=True)
class TurnRequest:
    """k: images in the answer; pool: candidates retrieved and judged per query (raised to k when smaller);
    llm: 'offline' or 'gemini' for this turn (None: the session's); thread: continue (and keep) this
    conversation thread, None for a one-shot turn; kind: how the trace files the run; rounds: extra search
    rounds the corrective loop may make (agent/reflect.py; 0 = one pass, plan -> tools -> judge -> fuse);
    local_files: whether `similar` may read an image file the planner names (the CLI's own files), never for a
    server's remote callers, whose planner (a model fed their text) must not open the server's files.

    Checked when built: k or pool over agent.core.limits.MAX_K is a LimitError naming the bound."""

    k: int = 5
    pool: Optional[int] = None
    llm: Optional[str] = None
    thread: Optional[str] = None
    kind: str = "ask"
    rounds: int = DEFAULT_ROUNDS
    local_files: bool = True  # the tools may open an image file named by path (False for a server's callers)

    def __post_init__(self):
        check_rounds(self.rounds)
        object.__setattr__(self, "pool", pool_for(check_k(self.k), self.pool))
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, not {self.kind!r}")
        if self.llm is not None:
            check_llm(self.llm)

    def with_(self, **changes) -> "TurnRequest":
        """A copy with some fields changed (pool re-derived from k unless given)."""
        if "k" in changes and "pool" not in changes:
            changes["pool"] = None
        return replace(self, **changes)

"""Run settings and services for one graph invocation (LangGraph `context_schema`)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from agent.fuse import FuseConfig


@dataclass
class Context:
    """What a turn runs with. The CLI builds it from flags and KGER_* variables; tests build it directly."""

    searcher: Any = field(default=None, metadata={"description": "retrieval.search.Searcher over the store"})
    planner: Any = field(default=None, metadata={"description": "a chat model with the tools bound"})
    fallback_planner: Any = field(default=None, metadata={"description": "offline planner used if `planner` fails"})
    judge: Any = field(default=None, metadata={"description": "an object with judge(query, candidates)"})
    traces: Any = field(default=None, metadata={"description": "store.traces.TraceDB, or None for no trace"})
    run_id: Optional[str] = field(default=None, metadata={"description": "the trace record of this turn"})
    k: int = field(default=5, metadata={"description": "images in the answer"})
    pool: int = field(default=20, metadata={"description": "candidates retrieved per query and judged"})
    fuse: FuseConfig = field(default_factory=FuseConfig, metadata={"description": "Pos-Fuse parameters"})
    llm: str = field(default="offline", metadata={"description": "'offline' or 'gemini' (for traces and notices)"})

"""Run settings and services for one graph invocation (LangGraph `context_schema`).

The services are typed by what the nodes call on them, so a test can hand in a small fake (tests/conftest.py
has an in-memory searcher) and a reader sees what each node needs.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional, Protocol, Sequence

import numpy as np
from langchain_core.messages import BaseMessage

from agent.judges.base import Judge
from agent.posfuse import FuseConfig
from retrieval.candidate import Candidate


class Searcher(Protocol):
    """What the tools need of retrieval.search.Searcher: a text encoder and two ways to query the store."""

    def encode_text(self, query: str) -> np.ndarray: ...

    def by_vector(self, query_vec: np.ndarray, k: int, classes: Optional[Sequence[str]] = None) -> list[Candidate]: ...

    def similar(self, ref: str, k: int = 10, classes: Optional[Sequence[str]] = None) -> list[Candidate]: ...


class Planner(Protocol):
    """A chat model with the tools bound (or anything that answers messages with an AIMessage with tool calls)."""

    def invoke(self, messages: list[BaseMessage]) -> BaseMessage: ...


@dataclass
class Context:
    """What a turn runs with. The Assistant builds it from its settings; tests build it directly."""

    searcher: Searcher = field(metadata={"description": "retrieval.search.Searcher over the store"})
    planner: Planner = field(metadata={"description": "a chat model with the tools bound"})
    judge: Judge = field(metadata={"description": "an object with judge(query, candidates)"})
    fallback_planner: Optional[Planner] = field(default=None, metadata={"description": "used if `planner` fails"})
    run_id: Optional[str] = field(default=None, metadata={"description": "the trace record of this turn"})
    k: int = field(default=5, metadata={"description": "images in the answer"})
    pool: int = field(default=20, metadata={"description": "candidates retrieved per query and judged"})
    fuse: FuseConfig = field(default_factory=FuseConfig, metadata={"description": "Pos-Fuse parameters"})
    llm: str = field(default="offline", metadata={"description": "'offline' or 'gemini' (for traces and notices)"})
    rounds: int = field(default=0, metadata={"description": "extra search rounds the reflect node may make"})
    max_tool_calls: int = field(default=12, metadata={"description": "tool calls per turn, all rounds together"})
    local_files: bool = field(default=True, metadata={"description": "similar may open an image file by path"})
    threaded: bool = field(default=False, metadata={"description": "a conversation thread: reflect may ask back"})
    progress: Optional[Callable[[dict], None]] = field(
        default=None, metadata={"description": "sees {'stage': 'judge', 'judged': i, 'total': n} as a turn runs"})

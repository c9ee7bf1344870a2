"""One object per session: the loaded bundle, the store, the planner and judge, the compiled graph.

The CLI commands (ask, chat, batch, eval) and the benchmarks all go through `Assistant.ask`, so there is one
way a question is answered, traced and checkpointed.
"""
from __future__ import annotations

import sqlite3
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from langchain_core.messages import HumanMessage

from agent.context import Context
from agent.fuse import FuseConfig
from agent.graph import build_graph
from agent.plan import OfflinePlanner

LLMS = ("offline", "gemini")


class GeminiPlanner:
    """The Gemini chat model with kger's tools bound, called with kger's retry policy."""

    def __init__(self, settings):
        from agent.llm import make_gemini_chat
        from agent.tools import TOOLS

        self.settings = settings
        self.chat = make_gemini_chat(settings).bind_tools(TOOLS)

    def invoke(self, messages):
        from agent.llm import invoke_with_retries

        return invoke_with_retries(self.chat, messages, self.settings)


def make_planner_and_judge(llm: str, settings=None, judge_concurrency: int = 4):
    """(planner, judge) for 'offline' or 'gemini'. Gemini without a key still works: both fall back."""
    from agent.judges.offline import OfflineJudge

    if llm == "offline":
        return OfflinePlanner(), OfflineJudge()
    if llm != "gemini":
        raise ValueError(f"unknown --llm {llm!r}; use one of {', '.join(LLMS)}")
    from agent.judges.gemini import GeminiJudge
    from agent.llm import GeminiUnavailable, gemini_settings_from_env

    settings = settings or gemini_settings_from_env()
    try:
        planner = GeminiPlanner(settings)
    except GeminiUnavailable:
        planner = _UnavailablePlanner()
    return planner, GeminiJudge(settings, max_concurrency=judge_concurrency)


class _UnavailablePlanner:
    def invoke(self, messages):
        from agent.llm import GeminiUnavailable

        raise GeminiUnavailable("no GOOGLE_API_KEY")


@dataclass
class Assistant:
    searcher: Any
    llm: str = "offline"
    k: int = 5
    pool: int = 20
    fuse: FuseConfig = field(default_factory=FuseConfig)
    traces: Any = None
    checkpointer: Any = None
    planner: Any = None
    judge: Any = None
    store_name: str = "default"

    def __post_init__(self):
        if self.planner is None or self.judge is None:
            planner, judge = make_planner_and_judge(self.llm)
            self.planner = self.planner or planner
            self.judge = self.judge or judge
        if self.checkpointer is None:
            from langgraph.checkpoint.memory import InMemorySaver

            self.checkpointer = InMemorySaver()
        self.graph = build_graph().compile(checkpointer=self.checkpointer)
        self.fallback_planner = OfflinePlanner()

    @classmethod
    def open(cls, store: str = "default", *, url: Optional[str] = None, llm: str = "offline", k: int = 5,
             pool: int = 20, persist: bool = True, **kw) -> "Assistant":
        """Open a store, load the bundle that indexed it, and keep traces + checkpoints under KGER_HOME."""
        from retrieval.search import Searcher
        from store.gallery import Gallery

        searcher = Searcher.for_gallery(Gallery.open(store, url=url))
        traces = checkpointer = None
        if persist:
            from langgraph.checkpoint.sqlite import SqliteSaver

            from store.paths import checkpoints_db_path, traces_db_path
            from store.traces import TraceDB

            traces = TraceDB(traces_db_path())
            path = checkpoints_db_path()
            path.parent.mkdir(parents=True, exist_ok=True)
            checkpointer = SqliteSaver(sqlite3.connect(str(path), check_same_thread=False))
        return cls(searcher=searcher, llm=llm, k=k, pool=max(pool, k), traces=traces, checkpointer=checkpointer,
                   store_name=store, **kw)

    def models(self) -> dict:
        ens = self.searcher.ens
        judge_model = getattr(self.judge, "model", "offline-lexicon")
        return {"bundle": ens.fingerprint, "bundle_path": getattr(ens, "path", None), "folds": ens.folds,
                "planner": type(self.planner).__name__, "judge": getattr(self.judge, "name", "?"),
                "judge_model": judge_model, "fusion": self.fuse.strategy}

    def ask(self, question: str, thread_id: Optional[str] = None, kind: str = "ask",
            on_event: Optional[Callable[[str, dict], None]] = None) -> dict:
        """Run one turn; returns the answer (rows with retrieval / judge / fused scores) with its run id.

        `on_event(kind, payload)` sees the turn as it runs: ("node", {node, ms}) as each node finishes and
        ("progress", {...}) from the nodes' custom stream (the judge's "judged 7/20")."""
        thread_id = thread_id or uuid.uuid4().hex
        run_id = None
        if self.traces is not None:
            run_id = self.traces.start_run(input=question, kind=kind, llm=self.llm, store=self.store_name,
                                           bundle=self.searcher.ens.fingerprint, models=self.models(),
                                           thread_id=thread_id)
        run_id = run_id or uuid.uuid4().hex
        ctx = Context(searcher=self.searcher, planner=self.planner, fallback_planner=self.fallback_planner,
                      judge=self.judge, traces=self.traces, run_id=run_id, k=self.k, pool=self.pool,
                      fuse=self.fuse, llm=self.llm)
        timings: dict[str, float] = {}
        t0 = last = time.perf_counter()
        state = None
        try:
            for mode, update in self.graph.stream({"messages": [HumanMessage(content=question)]},
                                                  config={"configurable": {"thread_id": thread_id}},
                                                  context=ctx, stream_mode=["updates", "custom"]):
                if mode == "custom":
                    if on_event is not None:
                        on_event("progress", update)
                    continue
                now = time.perf_counter()
                for node in update:
                    timings[node] = round((now - last) * 1000, 2)
                    if on_event is not None:
                        on_event("node", {"node": node, "ms": timings[node]})
                last = now
            state = self.graph.get_state({"configurable": {"thread_id": thread_id}}).values
        except BaseException as e:
            if self.traces is not None:
                self.traces.finish_run(run_id, answer=None, timings=timings, status="error",
                                       error=f"{type(e).__name__}: {e}")
            raise
        timings["total"] = round((time.perf_counter() - t0) * 1000, 2)
        answer = dict(state.get("answer") or {})
        answer.update(run_id=run_id, thread_id=thread_id, timings=timings, input=question)
        if self.traces is not None:
            self.traces.finish_run(run_id, answer=answer, timings=timings, status="ok")
        return answer

"""One object per session: the loaded bundle, the store, the planner and judge, the compiled graph.

The CLI commands (ask, chat, batch, eval) and the benchmarks all go through `Assistant.ask`, so there is one
way a question is answered, traced and checkpointed. It is also the one trace writer: the nodes put what an
audit needs (the plan and its fallback, tool errors, verdicts, the fused table) into the state, and `ask`
records each node's update as the graph streams it, with the node's time measured here, once.
"""
from __future__ import annotations

import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Optional

from langchain_core.messages import HumanMessage
from langgraph.checkpoint.base import BaseCheckpointSaver

from agent.context import Context, Planner
from agent.graph import build_graph, serializer
from agent.judges.base import Judge
from agent.plan import OfflinePlanner
from agent.posfuse import FuseConfig
from agent.state import Answer
from retrieval.errors import InputError

if TYPE_CHECKING:
    from retrieval.search import Searcher
    from store.traces import TraceDB

LLMS = ("offline", "gemini")


def check_llm(llm: str) -> str:
    """The one check of an --llm / /llm value; the InputError names the choices."""
    if llm not in LLMS:
        raise InputError(f"--llm must be {' or '.join(LLMS)}, not {llm!r}")
    return llm


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

    if check_llm(llm) == "offline":
        return OfflinePlanner(), OfflineJudge()
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
    searcher: "Searcher"
    llm: str = "offline"
    k: int = 5
    pool: int = 20
    fuse: FuseConfig = field(default_factory=FuseConfig)
    traces: Optional["TraceDB"] = None
    checkpointer: Optional[BaseCheckpointSaver] = None
    planner: Optional[Planner] = None
    judge: Optional[Judge] = None
    store_name: str = "default"

    def __post_init__(self):
        if self.planner is None or self.judge is None:
            planner, judge = make_planner_and_judge(self.llm)
            self.planner = self.planner or planner
            self.judge = self.judge or judge
        if self.checkpointer is None:
            from langgraph.checkpoint.memory import InMemorySaver

            self.checkpointer = InMemorySaver(serde=serializer())
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
        if persist:  # damaged files are moved aside, a read-only home answers unrecorded (agent/persist.py)
            from agent.persist import open_records

            traces, checkpointer = open_records()
        return cls(searcher=searcher, llm=llm, k=k, pool=max(pool, k), traces=traces, checkpointer=checkpointer,
                   store_name=store, **kw)

    def models(self) -> dict:
        bundle = self.searcher.bundle
        judge_model = getattr(self.judge, "model", "offline-lexicon")
        return {"bundle": bundle.fingerprint, "bundle_path": bundle.path, "folds": bundle.folds,
                "planner": type(self.planner).__name__, "judge": getattr(self.judge, "name", "?"),
                "judge_model": judge_model, "fusion": self.fuse.strategy}

    def ask(self, question: str, thread_id: Optional[str] = None, kind: str = "ask") -> Answer:
        """Run one turn; returns the answer (rows with retrieval / judge / fused scores) with its run id."""
        thread_id = thread_id or uuid.uuid4().hex
        run_id = None
        if self.traces is not None:
            run_id = self.traces.start_run(input=question, kind=kind, llm=self.llm, store=self.store_name,
                                           bundle=self.searcher.bundle.fingerprint, models=self.models(),
                                           thread_id=thread_id)
        run_id = run_id or uuid.uuid4().hex
        ctx = Context(searcher=self.searcher, planner=self.planner, fallback_planner=self.fallback_planner,
                      judge=self.judge, run_id=run_id, k=self.k, pool=self.pool, fuse=self.fuse, llm=self.llm)
        config = {"configurable": {"thread_id": thread_id}}
        timings: dict[str, float] = {}
        seen: dict[str, Any] = {}  # the turn's state so far, from the updates
        t0 = last = time.perf_counter()
        try:
            for update in self.graph.stream({"messages": [HumanMessage(content=question)]}, config=config,
                                            context=ctx, stream_mode="updates"):
                now = time.perf_counter()
                for node, values in update.items():
                    timings[node] = round((now - last) * 1000, 2)
                    seen.update(values or {})
                    self._record(run_id, node, values or {}, seen, timings[node])
                last = now
            state = self.graph.get_state(config).values
        except BaseException as e:
            if self.traces is not None:
                self.traces.finish_run(run_id, answer=None, timings=timings, status="error",
                                       error=f"{type(e).__name__}: {e}")
            raise
        timings["total"] = round((time.perf_counter() - t0) * 1000, 2)
        answer = (state.get("answer") or Answer()).model_copy(
            update={"run_id": run_id, "thread_id": thread_id, "timings": timings, "input": question})
        if self.traces is not None:
            self.traces.finish_run(run_id, answer=answer.model_dump(), timings=timings, status="ok")
        return answer

    def _record(self, run_id: str, node: str, update: dict, seen: dict, ms: float) -> None:
        """One node's update as trace events (plan/tool_calls, retrieve/candidates, judge/verdicts, fuse/table)."""
        if self.traces is None:
            return
        if node == "plan":
            self.traces.add_event(run_id, "plan", "tool_calls", {
                "planner": update.get("planner"), "fallback": update.get("plan_fallback"),
                "tool_calls": [dict(c) for c in update["messages"][-1].tool_calls], "ms": ms})
        elif node == "judge":
            self.traces.add_event(run_id, "retrieve", "candidates", {
                "candidates": [c.model_dump() for c in update["candidates"]], "errors": update["tool_errors"]})
            self.traces.add_event(run_id, "judge", "verdicts", {
                "judge": getattr(self.judge, "name", type(self.judge).__name__), "question": seen.get("question"),
                "verdicts": [v.model_dump() for v in update["verdicts"]], "ms": ms})
        elif node == "fuse":
            self.traces.add_event(run_id, "fuse", "table", {
                "config": asdict(self.fuse), "constraints": seen.get("constraints") or {},
                "table": [asdict(r) for r in update["ranking"]], "ms": ms})

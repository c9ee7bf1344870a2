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
from typing import TYPE_CHECKING, Any, Callable, Optional

from langchain_core.messages import HumanMessage
from langgraph.checkpoint.base import BaseCheckpointSaver

from agent.context import Context, Planner
from agent.graph import build_graph, serializer
from agent.judges.base import Judge
from agent.plan import OfflinePlanner
from agent.posfuse import FuseConfig
from agent.state import Answer
from retrieval.errors import InputError, KgerError

if TYPE_CHECKING:
    from retrieval.search import Searcher
    from store.traces import TraceDB

LLMS = ("offline", "gemini")


def service_failure(e: BaseException) -> bool:
    """A failure of the store or a model during a turn (not bad input, not a bug): the turn's answer says so.

    kger's own errors other than bad input (StoreError: a lost Chroma server, a store that cannot be read),
    OS and network errors, and the Gemini client's errors once its fallbacks are spent."""
    from retrieval.errors import KgerError

    if isinstance(e, InputError):
        return False
    if isinstance(e, (KgerError, OSError, TimeoutError)):
        return True
    from agent.llm import GeminiCallError, GeminiUnavailable

    return isinstance(e, (GeminiCallError, GeminiUnavailable))


def check_llm(llm: str) -> str:
    """The one check of an --llm / /llm value; the InputError names the choices."""
    if llm not in LLMS:
        raise InputError(f"--llm must be {' or '.join(LLMS)}, not {llm!r}")
    return llm


class GeminiPlanner:
    """The Gemini chat model with kger's tools bound, called with kger's retry policy through the session
    (its rate limiter and circuit are the judge's too)."""

    def __init__(self, session):
        from agent.tools import TOOLS

        self.session = session
        self.settings = session.settings
        self.chat = session.chat().bind_tools(TOOLS)

    def invoke(self, messages):
        return self.session.invoke(self.chat, messages, kind="planner")


def make_planner_and_judge(llm: str, settings=None, judge_concurrency: int = 4):
    """(planner, judge) for 'offline' or 'gemini'. Gemini without a key still works: both fall back. The
    Gemini pair shares one `GeminiSession`: one rate limiter and one circuit for the run or batch."""
    from agent.judges.offline import OfflineJudge

    if check_llm(llm) == "offline":
        return OfflinePlanner(), OfflineJudge()
    from agent.judges.gemini import GeminiJudge
    from agent.llm import GeminiSession, GeminiUnavailable

    session = GeminiSession(settings)
    try:
        planner = GeminiPlanner(session)
    except GeminiUnavailable:
        planner = _UnavailablePlanner()
    return planner, GeminiJudge(session=session, max_concurrency=judge_concurrency)


class _UnavailablePlanner:
    def invoke(self, messages):
        from agent.llm import NO_KEY, GeminiUnavailable

        raise GeminiUnavailable(NO_KEY)


class FallbackError(KgerError):
    """--strict (KGER_STRICT=1): the offline planner or judge stood in for the LLM the user chose."""


def fallback_notes(plan_fallback: Optional[str], verdicts) -> list[str]:
    """What stood in for the chosen LLM in a turn, and why: one line for the planner, one per judge reason."""
    notes = [f"planner: offline ({plan_fallback})"] if plan_fallback else []
    reasons: dict[str, int] = {}
    for v in verdicts:
        if v.fallback:
            reasons[v.fallback] = reasons.get(v.fallback, 0) + 1
    notes += [f"judge: offline for {n} of {len(verdicts)} images ({why})" for why, n in reasons.items()]
    return notes


def require_no_fallback(answer: Answer) -> Answer:
    """The answer, or FallbackError (one line) when anything fell back: what --strict promises scripts."""
    if answer.fallbacks:
        raise FallbackError("--strict: " + "; ".join(answer.fallbacks))
    return answer


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
        # one-shot turns (no thread given) never touch the persistent checkpointer: see `ask`
        from langgraph.checkpoint.memory import InMemorySaver

        self._one_shot = build_graph().compile(checkpointer=InMemorySaver(serde=serializer()))
        self.fallback_planner = OfflinePlanner()

    @classmethod
    def open(cls, store: str = "default", *, url: Optional[str] = None, llm: str = "offline", k: int = 5,
             pool: int = 20, persist: bool = True, **kw) -> "Assistant":
        """Open a store, load the bundle that indexed it, and keep traces + checkpoints under KGER_HOME."""
        from agent.opening import open_searcher

        searcher = open_searcher(store, url)
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

    def ask(self, question: str, thread_id: Optional[str] = None, kind: str = "ask",
            on_event: Optional[Callable[[str, dict], None]] = None) -> Answer:
        """Run one turn; returns the answer (rows with retrieval / judge / fused scores) with its run id.

        `on_event(kind, payload)` sees the turn as it runs: ("node", {node, ms}) as each node finishes and
        ("progress", {...}) from the judge ("judged 7/20"), through `Context.progress`. Not LangGraph's "custom"
        stream mode: that runs the nodes in a worker thread, and then Ctrl-C cannot end a turn whose remote call
        hangs (the stream waits for the thread).

        With a `thread_id` the turn continues (and is kept in) that conversation thread, as the chat does.
        Without one it is a one-shot (ask, batch, eval): it runs on an in-memory checkpointer and its thread
        is dropped after the turn, so the checkpoint database does not grow by a query's state per query.

        A store or model failure during the turn (a `KgerError` other than bad input, an OS or network
        error) does not raise: the answer carries status 'error' and the reason, the trace says the same.
        Bad input and anything else (a bug) raise."""
        keep = thread_id is not None
        thread_id = thread_id or uuid.uuid4().hex
        graph = self.graph if keep else self._one_shot
        run_id = None
        if self.traces is not None:
            run_id = self.traces.start_run(input=question, kind=kind, llm=self.llm, store=self.store_name,
                                           bundle=self.searcher.bundle.fingerprint, models=self.models(),
                                           thread_id=thread_id if keep else None)
        run_id = run_id or uuid.uuid4().hex
        ctx = Context(searcher=self.searcher, planner=self.planner, fallback_planner=self.fallback_planner,
                      judge=self.judge, run_id=run_id, k=self.k, pool=self.pool, fuse=self.fuse, llm=self.llm,
                      progress=(lambda payload: on_event("progress", payload)) if on_event is not None else None)
        config = {"configurable": {"thread_id": thread_id}}
        timings: dict[str, float] = {}
        seen: dict[str, Any] = {}  # the turn's state so far, from the updates
        t0 = last = time.perf_counter()
        try:
            for update in graph.stream({"messages": [HumanMessage(content=question)]}, config=config,
                                       context=ctx, stream_mode="updates"):
                now = time.perf_counter()
                for node, values in update.items():
                    timings[node] = round((now - last) * 1000, 2)
                    seen.update(values or {})
                    self._record(run_id, node, values or {}, seen, timings[node])
                    if on_event is not None:
                        on_event("node", {"node": node, "ms": timings[node]})
                last = now
            state = graph.get_state(config).values
        except Exception as e:
            error = f"{type(e).__name__}: {e}"
            if self.traces is not None:
                self.traces.finish_run(run_id, answer=None, timings=timings, status="error", error=error)
            if not service_failure(e):
                raise
            timings["total"] = round((time.perf_counter() - t0) * 1000, 2)
            return Answer(question=seen.get("question") or question, constraints=seen.get("constraints") or {},
                          run_id=run_id, llm=self.llm, thread_id=thread_id if keep else None, timings=timings,
                          input=question, status="error", error=" ".join(error.split()))
        except BaseException as e:  # Ctrl-C: the run is marked, the interrupt goes on
            if self.traces is not None:
                self.traces.finish_run(run_id, answer=None, timings=timings, status="error",
                                       error=f"{type(e).__name__}: {e}")
            raise
        finally:
            if not keep:
                self._one_shot.checkpointer.delete_thread(thread_id)
        timings["total"] = round((time.perf_counter() - t0) * 1000, 2)
        answer = (state.get("answer") or Answer()).model_copy(
            update={"run_id": run_id, "thread_id": thread_id if keep else None, "timings": timings,
                    "input": question,
                    "fallbacks": fallback_notes(seen.get("plan_fallback"), seen.get("verdicts") or [])})
        if not answer.rows and seen.get("tool_errors"):  # every search was refused: say so, not "no image"
            answer = answer.model_copy(update={
                "status": "error", "error": " ".join(f"no search could run: {seen['tool_errors'][0]}".split())})
        if self.traces is not None:
            self.traces.finish_run(run_id, answer=answer.model_dump(), timings=timings, status=answer.status,
                                   error=answer.error)
        return answer

    def _record(self, run_id: str, node: str, update: dict, seen: dict, ms: float) -> None:
        """One node's update as trace events (plan/tool_calls, retrieve/candidates, judge/verdicts, fuse/table)."""
        if self.traces is None:
            return
        if node == "plan":
            self.traces.add_event(run_id, "plan", "tool_calls", {
                "planner": update.get("planner"), "fallback": update.get("plan_fallback"),
                "tool_calls": [dict(c) for c in update["messages"][-1].tool_calls],
                "constraints": update.get("constraints") or {},
                "conflicts": update.get("constraint_conflicts") or [],
                "corrections": update.get("corrections") or [], "ms": ms})
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

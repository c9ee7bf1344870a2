"""One object per session: the loaded bundle, the store, the planner and judge, the compiled graph.

The CLI commands (ask, chat, batch, eval) and the benchmarks all go through `Assistant.ask`, so there is one
way a question is answered, traced and checkpointed. It is also the one trace writer: the nodes put what an
audit needs (the plan and its fallback, tool errors, verdicts, the fused table) into the state, and `ask`
records each node's update as the graph streams it, with the node's time measured here, once.
"""
from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Optional

from langchain_core.messages import HumanMessage, RemoveMessage
from langgraph.graph.message import REMOVE_ALL_MESSAGES
from langgraph.checkpoint.base import BaseCheckpointSaver

from agent.cancel import check as check_cancelled
from agent.cancel import current as current_token
from agent.cancel import guard_writes
from agent.context import Context, Planner
from agent.core.limits import DEFAULT_POOL, MAX_TOOL_CALLS, pool_for
from agent.core.events import REFLECT_SHOWN, ReflectEvent, events_for_update
from agent.core.events import write as write_event
from agent.core.turn import TurnRequest, check_llm
from agent.graph import build_graph, serializer
from agent.judges.base import Judge
from agent.plan import OfflinePlanner
from agent.posfuse import FuseConfig
from agent.prompts import is_blank
from agent.state import Answer
from retrieval.errors import InputError, KgerError
from store.checkpoints import keep_latest, restore

if TYPE_CHECKING:
    from retrieval.search import Searcher
    from store.traces import TraceDB

log = logging.getLogger("kger.agent")


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


def make_planner_and_judge(llm: str, settings=None, judge_concurrency: int = 4, judge_mode: str = "image"):
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
    if judge_mode == "list":
        from agent.judges.listwise import make_listwise

        return planner, make_listwise(session, max_concurrency=judge_concurrency)
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
    k: int = 5  # the session's defaults for a turn that names none (`turn`)
    pool: int = DEFAULT_POOL
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
        guard_writes(self.checkpointer)  # a cancelled turn left behind writes nothing (agent/cancel.py)
        self.graph = build_graph().compile(checkpointer=self.checkpointer)
        # one-shot turns (no thread given) never touch the persistent checkpointer: see `ask`
        from langgraph.checkpoint.memory import InMemorySaver

        self._one_shot = build_graph().compile(checkpointer=InMemorySaver(serde=serializer()))
        self.fallback_planner = OfflinePlanner()
        self._models: dict[str, tuple] = {}  # a turn may ask for another LLM (TurnRequest.llm): made once, kept

    @classmethod
    def open(cls, store: str = "default", *, url: Optional[str] = None, llm: str = "offline", k: int = 5,
             pool: Optional[int] = None, persist: bool = True, **kw) -> "Assistant":
        """Open a store, load the bundle that indexed it, and keep traces + checkpoints under KGER_HOME."""
        from agent.opening import open_searcher

        searcher = open_searcher(store, url)
        traces = checkpointer = None
        if persist:  # damaged files are moved aside, a read-only home answers unrecorded (agent/persist.py)
            from agent.persist import open_records

            traces, checkpointer = open_records()
        return cls(searcher=searcher, llm=llm, k=k, pool=pool_for(k, pool), traces=traces, checkpointer=checkpointer,
                   store_name=store, **kw)

    def models(self, planner=None, judge=None) -> dict:
        """What answered a turn (the session's planner and judge unless given), for its trace record."""
        bundle = self.searcher.bundle
        planner, judge = planner or self.planner, judge or self.judge
        judge_model = getattr(judge, "model", "offline-lexicon")
        return {"bundle": bundle.fingerprint, "bundle_path": bundle.path, "folds": bundle.folds,
                "planner": type(planner).__name__, "judge": getattr(judge, "name", "?"),
                "judge_model": judge_model, "fusion": self.fuse.strategy}

    def turn(self, **fields: Any) -> TurnRequest:
        """A TurnRequest with this session's defaults (k, pool, llm) for what `fields` leaves out."""
        fields.setdefault("k", self.k)
        fields.setdefault("pool", self.pool)  # TurnRequest raises it to k (agent.core.limits.pool_for)
        return TurnRequest(**fields)

    def models_for(self, llm: Optional[str]):
        """(planner, judge) for a turn's LLM: the session's own, or another pair made once and kept."""
        llm = llm or self.llm
        if llm == self.llm:
            return self.planner, self.judge
        if llm not in self._models:
            self._models[llm] = make_planner_and_judge(llm)
        return self._models[llm]

    def cancel_turn(self, token) -> None:
        """Undo a cancelled turn (agent/cancel.py calls it once the worker stopped or was left behind): the
        run is 'cancelled', and its thread is as the last finished turn left it."""
        if token.run_id and self.traces is not None:
            self.traces.finish_run(token.run_id, answer=None, timings={}, status="cancelled")
        if token.thread_id:
            restore(self.checkpointer, token.thread_id, token.before)
        if token.abandoned and token.llm not in (None, "offline"):
            # its remote call still holds that model session (the circuit's first-call lock): start a fresh one
            fresh = make_planner_and_judge(token.llm)
            if token.llm == self.llm:
                self.planner, self.judge = fresh
            else:
                self._models[token.llm] = fresh

    def ask(self, question: str, request: Optional[TurnRequest] = None, *,
            on_event: Optional[Callable[[str, dict], None]] = None, thread_id: Optional[str] = None,
            kind: Optional[str] = None) -> Answer:
        """Run one turn as `request` asks (a TurnRequest; None: the session's defaults); returns the answer
        (rows with retrieval / judge / fused scores) with its run id. `thread_id` and `kind` are shorthands for
        a request with the session's defaults and that thread / kind.

        `on_event(kind, payload)` sees the turn as it runs: ("node", {node, ms}) as each node finishes,
        ("progress", {...}) from the judge ("judged 7/20"), through `Context.progress`, and ("reflect", {round,
        decision, triggers, reason, ...}) for each decision of the corrective loop. Not LangGraph's "custom"
        stream mode: that runs the nodes in a worker thread, and then Ctrl-C cannot end a turn whose remote call
        hangs (the stream waits for the thread).

        With a `thread_id` the turn continues (and is kept in) that conversation thread, as the chat does.
        Without one it is a one-shot (ask, batch, eval): it runs on an in-memory checkpointer and its thread
        is dropped after the turn, so the checkpoint database does not grow by a query's state per query.

        A store or model failure during the turn (a `KgerError` other than bad input, an OS or network
        error) does not raise: the answer carries status 'error' and the reason, the trace says the same.
        Bad input and anything else (a bug) raise."""
        if is_blank(question):  # refused before a run is stored for it (a bare control character included)
            raise InputError("the description is empty")
        if request is None:
            request = self.turn(thread=thread_id, kind=kind or "ask")
        elif thread_id is not None or kind is not None:
            raise TypeError("give the thread and kind in the TurnRequest, not beside it")
        kind, llm = request.kind, request.llm or self.llm
        planner, judge = self.models_for(llm)
        keep = request.thread is not None
        thread_id = request.thread or uuid.uuid4().hex
        graph = self.graph if keep else self._one_shot
        run_id = None
        if self.traces is not None:
            run_id = self.traces.start_run(input=question, kind=kind, llm=llm, store=self.store_name,
                                           bundle=self.searcher.bundle.fingerprint, models=self.models(planner, judge),
                                           thread_id=thread_id if keep else None)
        run_id = run_id or uuid.uuid4().hex
        ctx = Context(searcher=self.searcher, planner=planner, fallback_planner=self.fallback_planner,
                      judge=judge, run_id=run_id, k=request.k, pool=request.pool, fuse=self.fuse, llm=llm,
                      rounds=request.rounds, max_tool_calls=MAX_TOOL_CALLS, threaded=keep, local_files=request.local_files,
                      progress=(lambda payload: on_event("progress", payload)) if on_event is not None else None)
        config = {"configurable": {"thread_id": thread_id}}
        token = current_token()
        if token is not None:  # a cancellable turn (the chat): what undoing it needs
            token.run_id, token.thread_id, token.llm = run_id, thread_id if keep else None, llm
            token.before = self.checkpointer.get_tuple(config) if keep else None
        timings: dict[str, float] = {}
        seen: dict[str, Any] = {}  # the turn's state so far, from the updates
        judge_name = getattr(judge, "name", type(judge).__name__)
        usage = gemini_usage(planner, judge)
        t0 = last = time.perf_counter()
        state: Optional[dict] = None
        failure: Optional[str] = None
        try:
            for update in graph.stream(turn_input(question), config=config,
                                       context=ctx, stream_mode="updates"):
                check_cancelled()  # Ctrl-C in the chat: stop between steps (agent/cancel.py)
                now = time.perf_counter()
                for node, values in update.items():
                    timings[node] = round((now - last) * 1000, 2)
                    seen.update(values or {})
                    events = events_for_update(node, values or {}, seen, timings[node], judge=judge_name,
                                               fuse_config=self.fuse)
                    if self.traces is not None:
                        for event in events:
                            write_event(self.traces, run_id, event)
                    if on_event is not None:
                        on_event("node", {"node": node, "ms": timings[node]})
                        for event in events:  # the corrective loop's rounds, as they are decided
                            if isinstance(event, ReflectEvent):
                                on_event("reflect", event.model_dump(include=REFLECT_SHOWN))
                last = now
            state = graph.get_state(config).values
            check_cancelled()
        except KeyboardInterrupt:  # Ctrl-C (TurnCancelled in the chat's worker): the run is cancelled, not failed
            if self.traces is not None:
                self.traces.finish_run(run_id, answer=None, timings=timings, status="cancelled")
            raise
        except Exception as e:
            failure = f"{type(e).__name__}: {e}"
            if self.traces is not None:
                self.traces.finish_run(run_id, answer=None, timings=timings, status="error", error=failure)
            if not service_failure(e):
                raise
        except BaseException as e:  # SystemExit and the like: the run is marked, the exit goes on
            if self.traces is not None:
                self.traces.finish_run(run_id, answer=None, timings=timings, status="error",
                                       error=f"{type(e).__name__}: {e}")
            raise
        finally:
            if not keep:
                self._one_shot.checkpointer.delete_thread(thread_id)
        if keep:  # the thread keeps the checkpoint the next turn starts from, not every step of every turn
            try:
                keep_latest(self.checkpointer, thread_id)
            except Exception as e:  # a busy or full disk: the thread is only longer; the answer stands
                log.warning("could not compact conversation thread %s: %s", thread_id, e)
        timings["total"] = round((time.perf_counter() - t0) * 1000, 2)
        answer = final_answer(question, state, seen, failure, run_id=run_id, llm=llm,
                              thread_id=thread_id if keep else None, timings=timings)
        answer = answer.model_copy(update={"cost": turn_cost(seen, usage)})
        if self.traces is not None and failure is None:
            self.traces.finish_run(run_id, answer=answer.model_dump(), timings=timings, status=answer.status,
                                   error=answer.error)
        return answer


def gemini_usage(planner, judge):
    """(the Gemini session's usage counter, its counts before the turn), or None offline."""
    for model in (planner, judge):
        session = getattr(model, "_session", None)
        if session is None and not isinstance(getattr(type(model), "session", None), property):
            session = getattr(model, "session", None)  # a plain attribute (GeminiPlanner), never a lazy build
        usage = getattr(session, "usage", None)
        if usage is not None:
            return usage, usage.snapshot()
    return None


def turn_cost(seen: dict, usage) -> dict[str, int]:
    """What the turn cost: tool calls and rounds, judge calls (new, uncached verdicts), Gemini requests and
    estimated input tokens (the session's counter, after minus before)."""
    verdicts = seen.get("verdicts") or []
    cost = {"tool_calls": int(seen.get("tool_calls") or 0), "rounds": int(seen.get("round") or 0),
            "judge_calls": sum(1 for v in verdicts if not v.cached)}
    if usage is not None:
        counter, (req0, tok0) = usage
        req, tok = counter.snapshot()
        cost.update(gemini_requests=req - req0, gemini_input_tokens=tok - tok0)
    return cost


def turn_input(question: str) -> dict:
    """A turn's input: the conversation's messages start afresh with the description. Why: every checkpoint
    holds the whole message list, so keeping every turn's tool calls and results (each with its candidates)
    made a thread's bytes per turn grow with its length (issue 20 §1). What a follow-up needs of earlier turns
    is the previous `answer` (its question, constraints and rows; agent/state.py), which the state keeps; the
    full record of every turn is in traces.db."""
    return {"messages": [RemoveMessage(id=REMOVE_ALL_MESSAGES), HumanMessage(content=question)]}


def final_answer(question: str, state: Optional[dict], seen: dict, failure: Optional[str], *, run_id: str, llm: str,
                 thread_id: Optional[str], timings: dict) -> Answer:
    """The turn's `Answer`, built here only: the graph's answer (or, after a store or model failure, an
    empty one with status 'error') with the run's id, thread, timings, input and what fell back."""
    if failure is not None:
        return Answer(question=seen.get("question") or question, constraints=seen.get("constraints") or {},
                      run_id=run_id, llm=llm, thread_id=thread_id, timings=timings, input=question, status="error",
                      error=" ".join(failure.split()))
    update: dict[str, Any] = {"run_id": run_id, "thread_id": thread_id, "timings": timings, "input": question,
                              "fallbacks": fallback_notes(seen.get("plan_fallback"), seen.get("verdicts") or [])}
    base = (state or {}).get("answer") or Answer()
    if not base.rows and seen.get("tool_errors"):  # every search was refused: say so, not "no image"
        update.update(status="error", error=" ".join(f"no search could run: {seen['tool_errors'][0]}".split()))
    return base.model_copy(update=update)

"""The trace events of one turn, typed: written and read through this module only.

A turn leaves these events in traces.db (store/traces.py keeps them as (node, kind, JSON payload) rows):
the plan (`PlanEvent`), the candidates the tools returned (`CandidatesEvent`), the judge's verdicts
(`VerdictsEvent`), one decision of the corrective loop per round (`ReflectEvent`) and the Pos-Fuse table
(`FuseEvent`). A turn of several rounds writes candidates and verdicts once per round, each the union so far
(the last is the turn's), and one ReflectEvent per round (`RunEvents.rounds` keeps them all).
`events_for_update` makes them from a node's state
update (the Assistant, the one trace writer, calls it), `write` stores one, `read_events` parses a stored run
back into `RunEvents`. Nothing else names an event by its "node/kind" key.

The payload is stored exactly as it always was, and reading is lenient on purpose: a field a model does not
know is kept (extra="allow"), a field an older kger did not write takes its default, so every trace in an
existing traces.db still shows. Candidates, verdicts and table rows stay dicts (the JSON of
`retrieval.candidate.Candidate`, `agent.state.Verdict`, `agent.posfuse` rows), because a view must show what
was stored even when those models have changed since.
"""
from __future__ import annotations

from dataclasses import asdict
from typing import Any, ClassVar, Optional, Union

from pydantic import BaseModel, ConfigDict, Field


class _Event(BaseModel):
    model_config = ConfigDict(extra="allow")
    node: ClassVar[str]
    kind: ClassVar[str]

    @property
    def key(self) -> tuple[str, str]:
        return self.node, self.kind


class PlanEvent(_Event):
    """What the planner asked for: its tool calls after the description's constraints were enforced."""

    node: ClassVar[str] = "plan"
    kind: ClassVar[str] = "tool_calls"
    planner: Optional[str] = None
    fallback: Optional[str] = None
    tool_calls: list[dict] = Field(default_factory=list)
    constraints: dict = Field(default_factory=dict)
    conflicts: list[dict] = Field(default_factory=list)
    corrections: list[str] = Field(default_factory=list)  # words read as others ("read 'rigth' as 'right'")
    ms: Optional[float] = None


class CandidatesEvent(_Event):
    """Every candidate the tools returned (with per-fold scores), and the tool errors."""

    node: ClassVar[str] = "retrieve"
    kind: ClassVar[str] = "candidates"
    candidates: list[dict] = Field(default_factory=list)
    errors: list[str] = Field(default_factory=list)


class VerdictsEvent(_Event):
    """The judge's verdicts, with the raw text each LLM answer held."""

    node: ClassVar[str] = "judge"
    kind: ClassVar[str] = "verdicts"
    judge: Optional[str] = None
    question: Optional[str] = None
    verdicts: list[dict] = Field(default_factory=list)
    ms: Optional[float] = None


class ReflectEvent(_Event):
    """One decision of the reflect node (agent/reflect.py): answer, search_again or ask_back, the triggers,
    the signals behind them, the next round's tool calls after enforce, and any conflicts it put right."""

    node: ClassVar[str] = "reflect"
    kind: ClassVar[str] = "decision"
    round: int = 0
    decision: str = "answer"
    triggers: list[str] = Field(default_factory=list)
    reason: str = ""
    signals: dict = Field(default_factory=dict)
    calls: list[dict] = Field(default_factory=list)
    conflicts: list[dict] = Field(default_factory=list)
    clarify: Optional[str] = None
    notice: Optional[str] = None
    candidates: Optional[int] = None  # the turn's candidates after this decision (the union so far)
    kept: list[str] = Field(default_factory=list)  # the last round's new images that entered the union
    dropped: list[str] = Field(default_factory=list)  # judged, but not above the turn's best: left out
    ms: Optional[float] = None


# What a live stream (serve's SSE `reflect` event) shows of a decision; the trace keeps the whole event.
REFLECT_SHOWN = {"round", "decision", "triggers", "reason", "clarify", "notice"}


class FuseEvent(_Event):
    """The Pos-Fuse arithmetic: its settings, the constraints and one row per fused image."""

    node: ClassVar[str] = "fuse"
    kind: ClassVar[str] = "table"
    config: dict = Field(default_factory=dict)
    constraints: dict = Field(default_factory=dict)
    table: list[dict] = Field(default_factory=list)
    ms: Optional[float] = None


Event = Union[PlanEvent, CandidatesEvent, VerdictsEvent, ReflectEvent, FuseEvent]
_BY_KEY = {(m.node, m.kind): m for m in (PlanEvent, CandidatesEvent, VerdictsEvent, ReflectEvent, FuseEvent)}


class RunEvents(BaseModel):
    """A stored run's events by what they are (None where the run stopped before that step)."""

    plan: Optional[PlanEvent] = None
    candidates: Optional[CandidatesEvent] = None
    verdicts: Optional[VerdictsEvent] = None
    fuse: Optional[FuseEvent] = None
    rounds: list[ReflectEvent] = Field(default_factory=list)

    def candidates_by_id(self) -> dict[str, dict]:
        return {c["id"]: c for c in (self.candidates.candidates if self.candidates else [])}


_FIELD = {PlanEvent: "plan", CandidatesEvent: "candidates", VerdictsEvent: "verdicts", FuseEvent: "fuse"}


def parse(node: Any, kind: Any, payload: Any) -> Optional[Event]:
    """One stored event as its model, or None for an event kger does not know (kept in the raw record)."""
    model = _BY_KEY.get((node, kind))
    return None if model is None else model.model_validate(payload or {})


def read_events(run: dict) -> RunEvents:
    """A stored run's (store.traces.TraceDB.get_run) events as models; the last one where a node wrote twice."""
    found: dict[str, Any] = {"rounds": []}
    for ev in run.get("events") or []:
        event = parse(ev.get("node"), ev.get("kind"), ev.get("payload"))
        if isinstance(event, ReflectEvent):
            found["rounds"].append(event)
        elif event is not None:
            found[_FIELD[type(event)]] = event
    return RunEvents(**found)


def write(traces, run_id: str, event: Event) -> None:
    """Store one event as a (node, kind, payload) row of traces.db."""
    traces.add_event(run_id, event.node, event.kind, event.model_dump(mode="json"))


def events_for_update(node: str, update: dict, seen: dict, ms: float, *, judge: str, fuse_config) -> list[Event]:
    """The events one node's state update makes: plan -> PlanEvent; judge -> the candidates it judged and its
    verdicts (the union so far); reflect -> its decision; fuse -> the fused table. `seen` is the turn's state so far (the question, the constraints)."""
    if node == "plan":
        return [PlanEvent(planner=update.get("planner"), fallback=update.get("plan_fallback"),
                          tool_calls=[dict(c) for c in update["messages"][-1].tool_calls],
                          constraints=update.get("constraints") or {},
                          conflicts=update.get("constraint_conflicts") or [],
                          corrections=update.get("corrections") or [], ms=ms)]
    if node == "judge":
        r = int(seen.get("round") or 0)
        return [CandidatesEvent(candidates=[c.model_dump() for c in update["candidates"]],
                                errors=update["tool_errors"], round=r),
                VerdictsEvent(judge=judge, question=seen.get("question"),
                              verdicts=[v.model_dump() for v in update["verdicts"]], ms=ms, round=r)]
    if node == "reflect" and update.get("rounds"):
        return [ReflectEvent(**update["rounds"][-1], ms=ms)]
    if node == "fuse":
        return [FuseEvent(config=asdict(fuse_config), constraints=seen.get("constraints") or {},
                          table=[asdict(r) for r in update["ranking"]], ms=ms)]
    return []

"""Graph state: a narrow input (the conversation), the turn's working data, and the typed answer.

Every step's output is a type here or in retrieval/candidate.py (`Candidate`), agent/judges/base.py
(`Verdict`) and agent/posfuse.py (`FusedRow`): the CLI, batch lines, eval, traces and the HTML report read
the `Answer`, and its `model_dump()` is the JSON they write.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Literal, Optional

from langchain_core.messages import AnyMessage
from langgraph.graph import add_messages
from pydantic import BaseModel, Field, computed_field

from agent.judges.base import Verdict, match_score
from agent.posfuse import FusedRow
from retrieval.candidate import Candidate


class AnswerRow(BaseModel):
    """One image of the answer, with all three scores and the reasons behind its place."""

    rank: int = Field(description="1-based place in the answer")
    id: str
    path: str
    name: Optional[str] = None
    label: Optional[str] = None
    predicted: Optional[str] = None
    predicted_prob: Optional[float] = None
    trusted: Optional[bool] = Field(default=None, description="whether `predicted` is trusted as a label")
    familiarity: Optional[float] = Field(default=None, description="closeness to the bundle's training images")
    retrieval_rank: Optional[int] = Field(default=None, description="place in the merged retrieval list")
    retrieval: float = Field(description="ensemble cosine")
    fold_scores: list[float] = Field(default_factory=list)
    judge: Optional[float] = Field(default=None, description="judge score in [0, 1]; None when not judged")
    judge_kind: Optional[str] = Field(default=None, description="'gemini' or 'offline'")
    fallback: Optional[str] = Field(default=None, description="why the offline judge stood in, if it did")
    cached: bool = False
    justification: str = ""
    fused: float = Field(description="the fused score the answer is ordered by")
    formula: str = Field(description="the Pos-Fuse arithmetic that gives `fused`")
    demoted: Optional[str] = Field(default=None, description="why it is ranked after the rest, if it is")

    @computed_field(description="the judge's score as a 0-100 match: the answer's first score column, readable "
                                "on its own (`fused` only orders one answer); None when not judged")
    @property
    def match(self) -> Optional[int]:
        return match_score(self.judge)

    @classmethod
    def of(cls, rank: int, cand: Candidate, verdict: Optional[Verdict], fused: FusedRow) -> "AnswerRow":
        return cls(
            rank=rank, id=cand.id, path=cand.path, name=cand.name, label=cand.label, predicted=cand.predicted,
            predicted_prob=cand.predicted_prob, trusted=cand.trusted, familiarity=cand.familiarity,
            retrieval_rank=fused.retrieval_rank, retrieval=cand.score,
            fold_scores=cand.fold_scores, judge=verdict.score if verdict else None,
            judge_kind=verdict.judge if verdict else None, fallback=verdict.fallback if verdict else None,
            cached=verdict.cached if verdict else False, justification=verdict.justification if verdict else "",
            fused=fused.final, formula=fused.formula, demoted=fused.demoted,
        )


class Answer(BaseModel):
    """A turn's answer; `Assistant.ask` adds the thread, the timings and the input as typed."""

    question: str = Field(default="", description="the description the judge checked (follow-ups resolved)")
    rows: list[AnswerRow] = Field(default_factory=list)
    constraints: dict[str, str] = Field(default_factory=dict)
    run_id: Optional[str] = None
    llm: Optional[str] = None
    thread_id: Optional[str] = None
    timings: dict[str, float] = Field(default_factory=dict)
    input: Optional[str] = None
    corrections: list[str] = Field(default_factory=list, description="words of the description read as others "
                                   "(\"read 'rigth' as 'right'\"): typos and lay words, shown once")
    rounds: list[dict] = Field(default_factory=list, description="the reflect node's decisions, one per round: "
                               "decision, triggers, the signals behind them, the new tool calls (agent/reflect.py)")
    clarify: Optional[str] = Field(default=None, description="what the description leaves open (no region while "
                                   "the images split across regions): asked back in a thread, a note one-shot")
    asked_back: bool = Field(default=False, description="the answer is a question; the next message resolves it")
    notice: Optional[str] = Field(default=None, description="one line when the evidence is weak: the best scores "
                                  "far below what this store usually gives (agent/evidence.py)")
    cost: dict[str, int] = Field(default_factory=dict, description="tool calls, judge calls, Gemini requests and "
                                 "input tokens of this turn")
    fallbacks: list[str] = Field(default_factory=list, description="what stood in for the chosen LLM, and why "
                                 "(the offline planner, the offline judge); --strict fails on any")
    # -- failures are never silent (issue 10): a turn whose store or model failed says so, with the reason
    status: Literal["ok", "error"] = Field(default="ok", description="'error' when the turn could not be answered")
    error: Optional[str] = Field(default=None, description="why the turn failed, one line")


@dataclass
class InputState:
    messages: Annotated[list[AnyMessage], add_messages] = field(default_factory=list)
    """This turn's conversation: the description, the planner's tool calls, the tools' results, the reply. It
    starts afresh each turn (agent/assistant.py `turn_input`): what follow-ups need of the previous turn is
    `answer`, so a thread's checkpoint stays the size of one turn, however long the thread."""


@dataclass
class State(InputState):
    question: str = ""
    """The description this turn answers (a follow-up is resolved against `answer` of the previous turn)."""

    constraints: dict[str, str] = field(default_factory=dict)
    """Region / side / state the description pins down; the answer never contradicts them (see fuse.py)."""

    constraint_conflicts: list[dict] = field(default_factory=list)
    """Filters the planner dropped or contradicted, with both values (agent/constraints.py put them back)."""

    planner: str = ""
    """Who planned this turn: 'offline', or the --llm whose planner answered."""

    plan_fallback: Optional[str] = None
    """Why the offline planner stood in, if it did."""

    corrections: list[str] = field(default_factory=list)
    """Words of this turn's text read as others (typos, lay words; retrieval/reading.py), for the answer."""

    tool_errors: list[str] = field(default_factory=list)
    """Tool calls of this turn refused for bad arguments, as the tool node reported them (any other tool
    failure stops the turn: `Assistant.ask` answers it with an error status)."""

    candidates: list[Candidate] = field(default_factory=list)
    """Retrieved images of this turn: the union over its rounds, in the union's retrieval order (round 1's
    merged order, then each later round's new images that the loop kept, in theirs; agent/posfuse.py)."""

    verdicts: list[Verdict] = field(default_factory=list)
    """One judge verdict per image judged this turn (once, in the round that found it): the candidates', and
    those of images a corrective round judged but did not keep (agent/reflect.keep_improving)."""

    round: int = 0
    """Extra search rounds made so far in this turn (0: the planner's round only)."""

    tool_calls: int = 0
    """Tool calls made in this turn, all rounds together (bounded by Context.max_tool_calls)."""

    rounds: list[dict] = field(default_factory=list)
    """The reflect node's decisions of this turn, small dicts (agent/reflect.py `Decision.record`)."""

    ranking: list[FusedRow] = field(default_factory=list)
    """Every candidate in the answer's order, with its Pos-Fuse arithmetic (the answer keeps the top k)."""

    answer: Optional[Answer] = None
    """The last answer; kept across turns so follow-ups can refer to it (its question, constraints and at most
    k rows: the bounded memory of a thread)."""

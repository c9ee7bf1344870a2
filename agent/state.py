"""Graph state: a narrow input (the conversation) and the turn's working data."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any, Optional

from langchain_core.messages import AnyMessage
from langgraph.graph import add_messages


@dataclass
class InputState:
    messages: Annotated[list[AnyMessage], add_messages] = field(default_factory=list)
    """The conversation: the user's descriptions, the planner's tool calls, the tools' results, the answers."""


@dataclass
class State(InputState):
    question: str = ""
    """The description this turn answers (a follow-up is resolved against `answer` of the previous turn)."""

    constraints: dict[str, Any] = field(default_factory=dict)
    """Region / side / state the description pins down; the answer never contradicts them (see answer.py)."""

    candidates: list[dict] = field(default_factory=list)
    """Retrieved images of this turn, merged over the planner's queries, in retrieval order."""

    verdicts: list[dict] = field(default_factory=list)
    """One judge verdict per candidate."""

    answer: Optional[dict] = None
    """The last answer: ranked rows with all three scores; kept across turns so follow-ups can refer to it."""

"""The answer node: the ranked reply as the conversation's next message."""
from __future__ import annotations

from langchain_core.messages import AIMessage
from langgraph.runtime import Runtime

from agent.context import Context
from agent.state import State


def answer(state: State, runtime: Runtime[Context]) -> dict:
    rows = state.answer.rows if state.answer else []
    if rows and state.answer.asked_back:
        text = f"{state.answer.clarify} Best guesses below."
    elif rows:
        top = rows[0]
        text = f"{len(rows)} images. #1 {top.name} ({top.label or top.predicted or 'unlabelled'}): {top.justification}"
    else:
        text = "No image found. Index a gallery first (kger index IMAGES --bundle DIR)."
    return {"messages": [AIMessage(content=text)]}


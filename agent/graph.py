"""The graph: plan -> tools -> judge -> fuse -> answer, checkpointed per conversation thread."""
from __future__ import annotations

from langgraph.graph import END, START, StateGraph
from langgraph.prebuilt import ToolNode

from agent.answer import answer, fuse
from agent.context import Context
from agent.judge import judge
from agent.plan import plan
from agent.state import InputState, State
from agent.tools import TOOLS


def build_graph() -> StateGraph:
    """The uncompiled graph; compile it with a checkpointer (SqliteSaver in the CLI, in-memory in tests)."""
    builder = StateGraph(State, input_schema=InputState, context_schema=Context)
    builder.add_node(plan)
    builder.add_node("tools", ToolNode(TOOLS, handle_tool_errors=True))
    builder.add_node(judge)
    builder.add_node(fuse)
    builder.add_node(answer)
    builder.add_edge(START, "plan")
    builder.add_edge("plan", "tools")
    builder.add_edge("tools", "judge")
    builder.add_edge("judge", "fuse")
    builder.add_edge("fuse", "answer")
    builder.add_edge("answer", END)
    return builder

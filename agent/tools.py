"""The tools the planner calls: text -> images and image -> images, over the retrieval core."""
from __future__ import annotations

import json
from typing import Annotated, Optional

from langchain_core.tools import tool
from langgraph.prebuilt import InjectedState
from langgraph.runtime import get_runtime

from agent.context import Context, Searcher
from agent.core.filters import Filters, Region, Side, State, filtered_search
from agent.core.limits import check_k
from agent.state import Answer
from retrieval.candidate import Candidate
from retrieval.errors import InputError


def _summary(cands: list[Candidate]) -> str:
    """What a chat model reads back: short, ids and labels only (the artifact holds the full candidates)."""
    return json.dumps([{"rank": c.rank, "id": c.id[:12], "label": c.label or c.predicted,
                        "score": round(c.score, 4)} for c in cands])


def _searcher() -> Searcher:
    return get_runtime(Context).context.searcher


@tool(response_format="content_and_artifact")
def retrieve(
    query: str,
    region: Optional[Region] = None,
    side: Optional[Side] = None,
    state: Optional[State] = None,
    k: int = 20,
):
    """Search the endoscopy image library with a short clinical phrase.

    Optional filters: region (ear, nose, throat, larynx), side (left/right, ear and nose only), state
    (open/closed, vocal folds only). Images known to satisfy the filters come first, then those whose class
    is uncertain, then those known not to (agent/core/filters.py says why).
    """
    searcher = _searcher()
    vec = searcher.encode_text(query)
    cands = filtered_search(lambda n, classes: searcher.by_vector(vec, n, classes), check_k(int(k)), query,
                            Filters(region=region, side=side, state=state))
    return _summary(cands), cands


@tool(response_format="content_and_artifact")
def similar(
    image: str,
    answer: Annotated[Optional[Answer], InjectedState("answer")] = None,
    region: Optional[Region] = None,
    side: Optional[Side] = None,
    state: Optional[State] = None,
    k: int = 20,
):
    """Find images that look like one image: '#N' (rank N of the previous answer), an image id, or a file path.

    Optional filters as for `retrieve` (a follow-up keeps the conversation's region, side and state)."""
    ctx = get_runtime(Context).context
    searcher, files = ctx.searcher, ctx.local_files
    ref = image.strip()
    if ref.startswith("#") and ref[1:].isdigit():
        rows = answer.rows if answer else []
        n = int(ref[1:])
        if not 1 <= n <= len(rows):
            raise InputError(f"there is no image #{n} in the previous answer")
        ref = rows[n - 1].id
    cands = filtered_search(lambda n, classes: searcher.similar(ref, n, classes, files=files), check_k(int(k)),
                            f"like {image}", Filters(region=region, side=side, state=state))
    return _summary(cands), cands


TOOLS = [retrieve, similar]
